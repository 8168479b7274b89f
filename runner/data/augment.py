"""Batch augmentation on the training device, reproducible from a CPU torch.Generator the training loop owns.

Every random number is drawn on the CPU from `generator` (a fixed number per batch for a given spec), then moved to
the images' device, so a checkpointed generator state reproduces the same augmentations on any device.
Geometric transforms act on images and masks alike; photometric ones (stain, brightness, contrast) on images only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from skimage.color import rgb_from_hed

from runner.spec.config import GEOMETRIC_AUGMENTS, AugmentSpec

# Group elements as (quarter turns, mirror) for the discrete geometric options.
_ELEMENTS = {
    "flip": [(0, False), (0, True)],
    "rot90": [(k, False) for k in range(4)],
    "d4": [(k, m) for m in (False, True) for k in range(4)],
}
_RGB_FROM_HED = torch.tensor(rgb_from_hed, dtype=torch.float32)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_EPS = 1e-6


class Augmenter:
    """`augment(x, mask, generator) -> (x, mask)`; x float (B, 3, H, W) in [0, 1], mask (B, H, W) ints or None."""

    def __init__(self, spec: AugmentSpec) -> None:
        if spec.geometric not in GEOMETRIC_AUGMENTS:
            raise ValueError(f"augment.geometric = {spec.geometric!r}; allowed: {', '.join(GEOMETRIC_AUGMENTS)}")
        for name in ("stain", "brightness", "contrast"):
            if getattr(spec, name) < 0:
                raise ValueError(f"augment.{name} = {getattr(spec, name)}; must be >= 0")
        self.spec = spec

    @property
    def active(self) -> bool:
        s = self.spec
        return s.geometric != "none" or s.stain > 0 or s.brightness > 0 or s.contrast > 0

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.spec.geometric == "rotate":
            x, mask = rotate(x, mask, torch.rand(len(x), generator=generator) * (2 * math.pi))
        elif self.spec.geometric in _ELEMENTS:
            choice = torch.randint(len(_ELEMENTS[self.spec.geometric]), (len(x),), generator=generator)
            x, mask = apply_elements(x, mask, [_ELEMENTS[self.spec.geometric][int(c)] for c in choice])
        if self.spec.stain > 0:
            x = hed_jitter(x, torch.randn(len(x), 2, 3, generator=generator) * self.spec.stain)
        if self.spec.brightness > 0:
            x = x * (1 + self.spec.brightness * _symmetric(len(x), generator, x))
        if self.spec.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (1 + self.spec.contrast * _symmetric(len(x), generator, x)) + mean
        if self.spec.stain > 0 or self.spec.brightness > 0 or self.spec.contrast > 0:
            x = x.clamp(0, 1)
        return x, mask


def _symmetric(n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform in [-1, 1] per image, shaped (n, 1, 1, 1) on `like`'s device."""
    return (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1).to(like.device, like.dtype)


def transform(t: torch.Tensor, quarter_turns: int, mirror: bool) -> torch.Tensor:
    """Mirror (left-right) then rotate counter-clockwise by quarter turns, on the last two axes."""
    if mirror:
        t = t.flip(-1)
    return torch.rot90(t, quarter_turns, dims=(-2, -1)) if quarter_turns % 4 else t


def apply_elements(x: torch.Tensor, mask: torch.Tensor | None,
                   elements: list[tuple[int, bool]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply one discrete group element per sample (square images)."""
    x = torch.stack([transform(x[i], *e) for i, e in enumerate(elements)])
    if mask is not None:
        mask = torch.stack([transform(mask[i], *e) for i, e in enumerate(elements)])
    return x, mask


def rotate(x: torch.Tensor, mask: torch.Tensor | None,
           angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate each sample by its angle (rad, counter-clockwise) about the centre; corners are filled by reflection
    (no black corners). Images are interpolated bilinearly, masks by nearest neighbour (ids stay ids)."""
    angles = angles.to(x.device, torch.float32)
    cos, sin = torch.cos(angles), torch.sin(angles)
    # Maps output to input positions (x right, y down): counter-clockwise as displayed, like torch.rot90.
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False).to(x.dtype)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if mask is not None:
        m = F.grid_sample(mask[:, None].to(grid.dtype), grid, mode="nearest", padding_mode="reflection",
                          align_corners=False)
        mask = m[:, 0].round().to(mask.dtype)
    return x, mask


def hed_jitter(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """HED stain jitter: rgb -> hed (optical density / stain vectors), hed * (1 + a) + b per image and stain,
    hed -> rgb. `noise` (B, 2, 3): row 0 the scale offsets a, row 1 the shifts b (in optical density units)."""
    noise = noise.to(x.device, torch.float32)
    to_hed, to_rgb = _HED_FROM_RGB.to(x.device), _RGB_FROM_HED.to(x.device)
    od = -torch.log(x.float().clamp_min(_EPS))  # (B, 3, H, W)
    hed = torch.einsum("bchw,cd->bdhw", od, to_hed)
    hed = hed * (1 + noise[:, 0, :, None, None]) + noise[:, 1, :, None, None]
    rgb = torch.exp(-torch.einsum("bdhw,dc->bchw", hed, to_rgb))
    return rgb.clamp(0, 1).to(x.dtype)
