"""How far a model is from its symmetry: relative output changes under group elements.

Errors are per sample, ||a - b|| / ||b||, and the maximum over the batch is reported. Measuring never changes the
model: batch-norm statistics updated by train-mode passes are restored, and every pass starts from the same RNG
state, so train-mode dropout draws the same mask for an input and its transformed copy.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from equiv.groups import Group, GridElement, grid_elements, rotate, rotation_angles

_TINY = 1e-30


def invariance_errors(model: nn.Module, x: torch.Tensor, group: Group | None = None) -> dict[str, float]:
    """||f(gx) - f(x)|| / ||f(x)|| for every exact grid element g of the group (default: `model.group`)."""
    elements = grid_elements(_group_of(model, group))
    outputs = _outputs(model, [x] + [g.apply(x) for g in elements])
    return {g.name: relative_error(y, outputs[0]) for g, y in zip(elements, outputs[1:])}


def equivariance_errors(model: nn.Module, x: torch.Tensor, group: Group | None = None) -> dict[str, float]:
    """||f(gx) - g f(x)|| / ||f(x)|| for every exact grid element g; g acts on the last two axes of dense outputs.

    Outputs without spatial axes (logits) are invariant targets: g acts on them as the identity.
    """
    elements = grid_elements(_group_of(model, group))
    outputs = _outputs(model, [x] + [g.apply(x) for g in elements])
    reference = outputs[0]
    act = (lambda g, y: g.apply(y)) if reference.dim() == 4 else (lambda g, y: y)
    return {g.name: relative_error(y, act(g, reference)) for g, y in zip(elements, outputs[1:])}


def offgrid_errors(model: nn.Module, x: torch.Tensor, group: Group | None = None,
                   angles: Sequence[float] | None = None) -> dict[str, float]:
    """Invariance error under rotations off the pixel grid (default: the group's own, e.g. 45 deg for C8).

    The input is faded to zero outside a centred disk, so a rotation moves no content out of the frame and
    brings none in. Rotating needs interpolation, which blurs; to measure the model rather than the blur, the
    two compared copies are rotated by -angle/2 and +angle/2, so each is interpolated once by the same amount.
    Groups with reflections are also checked with a mirror flip before the rotation ("rot45+flip").
    """
    group = _group_of(model, group)
    angles = rotation_angles(group) if angles is None else list(angles)
    disk = x * centred_disk(x.shape[-2], x.shape[-1]).to(x)
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for angle in angles:
        transforms[f"rot{angle:g}"] = _rotation_pair(angle, flip=False)
        if group.has_reflections:
            transforms[f"rot{angle:g}+flip"] = _rotation_pair(angle, flip=True)
    errors = {}
    for name, pair in transforms.items():
        before, after = pair(disk)
        reference, moved = _outputs(model, [before, after])
        errors[name] = relative_error(moved, reference)
    return errors


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over the batch of ||a_i - b_i|| / ||b_i||."""
    difference = (a - b).flatten(1).norm(dim=1)
    scale = b.flatten(1).norm(dim=1).clamp_min(_TINY)
    return float((difference / scale).max())


def centred_disk(height: int, width: int, fade: float = 2.0) -> torch.Tensor:
    """A (H, W) mask: 1 inside the inscribed disk, fading to 0 over `fade` pixels (a hard edge would alias)."""
    rows = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    radius = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)
    edge = min(height, width) / 2 - 1
    ramp = ((edge - radius) / fade).clamp(0.0, 1.0)
    return (0.5 - 0.5 * torch.cos(math.pi * ramp)).float()


def _rotation_pair(angle: float, flip: bool) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Two copies related by g = rotate(angle) after an optional flip F, each interpolated by angle/2.

    Rotation: R(-a/2) x and R(a/2) x. Reflection: R(a/2) x and R(a/2) F x, related by R(a/2) F R(-a/2) = R(a) F.
    """
    def pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if flip:
            mirrored = GridElement(0, True).apply(x)
            return rotate(x, angle / 2, padding_mode="zeros"), rotate(mirrored, angle / 2, padding_mode="zeros")
        return rotate(x, -angle / 2, padding_mode="zeros"), rotate(x, angle / 2, padding_mode="zeros")

    return pair


def _group_of(model: nn.Module, group: Group | None) -> Group:
    if group is not None:
        return group
    if not isinstance(getattr(model, "group", None), Group):
        raise ValueError(f"{type(model).__name__} has no `group` attribute; pass group=equiv.groups.parse_group(...)")
    return model.group


def _outputs(model: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The model's outputs for each input, each pass from the same RNG state, with buffers restored afterwards."""
    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    seed = int(torch.randint(0, 2**62, (1,)))
    # Dropout on CUDA draws from that device's generator: fork it too, so the caller's RNG streams are untouched.
    devices = [inputs[0].device] if inputs[0].is_cuda else []
    outputs = []
    try:
        with torch.no_grad():
            for x in inputs:
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    outputs.append(model(x))
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])
    return outputs


def smooth_images(batch: int, size: int = 96, seed: int = 0) -> torch.Tensor:
    """Random images with tissue-like spatial correlation (noise blurred over ~2 pixels), unit variance."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch * 3, 1, size, size, generator=generator)
    taps = torch.exp(-torch.arange(-6, 7.0) ** 2 / 8)
    taps = taps / taps.sum()
    x = F.conv2d(F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, 6)), taps.view(1, 1, -1, 1), padding=(6, 0))
    return (x / x.std()).view(batch, 3, size, size)
