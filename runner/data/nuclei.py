"""A vectorised H&E renderer: stroma with fibres, nuclei of four kinds, Beer-Lambert colour, blur and noise.

Images are built as stain concentration maps (hematoxylin for nuclei, eosin for stroma) and turned into RGB with
the stain vectors of `skimage.color.rgb_from_hed`, each jittered per image. Every nucleus is an ellipse with a
harmonic (irregular) boundary at a random orientation, drawn into a small window around its centre; all windows
of a batch are evaluated at once with numpy and scattered into the canvas.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from skimage.color import rgb_from_hed

LYMPHOCYTE, FIBROBLAST, EPITHELIAL, TUMOUR = range(4)

# Per kind: mean radius range (px), aspect range, boundary irregularity, hematoxylin density range,
# chromatin texture, chance of nucleoli, rim (vesicular membrane) darkening. Ranges overlap on purpose.
_KINDS = {
    LYMPHOCYTE: dict(radius=(2.8, 4.2), aspect=(1.0, 1.25), irregular=0.04, density=(0.9, 1.3), chroma=0.15,
                     nucleoli=0.0, rim=0.0),
    FIBROBLAST: dict(radius=(2.4, 3.6), aspect=(2.0, 3.8), irregular=0.05, density=(0.55, 0.95), chroma=0.2,
                     nucleoli=0.0, rim=0.0),
    EPITHELIAL: dict(radius=(4.0, 6.6), aspect=(1.0, 1.5), irregular=0.06, density=(0.45, 0.85), chroma=0.25,
                     nucleoli=0.15, rim=0.2),
    TUMOUR: dict(radius=(5.4, 9.5), aspect=(1.0, 1.7), irregular=0.17, density=(0.6, 1.25), chroma=0.45,
                 nucleoli=0.8, rim=0.6),
}
HALF = {LYMPHOCYTE: 8, FIBROBLAST: 10, EPITHELIAL: 11, TUMOUR: 17}  # per kind: largest window half side needed
WINDOWS = (5, 7, 9, 11, 13, 15, 17)  # window half sides; a nucleus uses the smallest that holds its extent
PAD = 24  # canvas margin so nuclei can straddle the patch border
BLUR_MARGIN = 16  # 96 + 2 * 16 = 128: a fast FFT size
STAIN_H, STAIN_E = rgb_from_hed[0].astype(np.float32), rgb_from_hed[1].astype(np.float32)


@dataclass(frozen=True)
class Nuclei:
    """Flat arrays over all nuclei of a batch; `patch` says which image each belongs to."""

    patch: np.ndarray  # (M,) int
    kind: np.ndarray  # (M,) int
    x: np.ndarray  # (M,) centre column (float, image coordinates)
    y: np.ndarray  # (M,) centre row
    semi: np.ndarray  # (M, 2) semi-axes a >= b (px)
    angle: np.ndarray  # (M,) orientation (rad)
    harmonics: np.ndarray  # (M, 3, 2) boundary cos/sin coefficients for k = 2, 3, 4
    density: np.ndarray  # (M,) hematoxylin concentration
    chroma: np.ndarray  # (M,) chromatin texture strength
    rim: np.ndarray  # (M,) membrane darkening
    nucleoli: np.ndarray  # (M, 2, 3) two nucleoli: offset u, offset v (fraction of b), strength (0 = none)

    def __len__(self) -> int:
        return len(self.patch)


def sample_shapes(rng: np.random.Generator, kind: np.ndarray) -> dict[str, np.ndarray]:
    """Random shape and stain parameters per nucleus, drawn from each kind's ranges (vectorised over kinds)."""
    m = len(kind)
    table = {key: np.array([_KINDS[k][key] for k in range(4)]) for key in _KINDS[0]}
    lo_hi = lambda key: table[key][kind]  # noqa: E731 -- (m, 2) bounds per nucleus
    uniform = lambda key: rng.uniform(lo_hi(key)[:, 0], lo_hi(key)[:, 1])  # noqa: E731
    radius, aspect = uniform("radius"), uniform("aspect")
    semi = np.stack([radius * np.sqrt(aspect), radius / np.sqrt(aspect)], axis=1)
    irregular = table["irregular"][kind] * rng.uniform(0.4, 1.0, m)
    harmonics = rng.uniform(-1, 1, (m, 3, 2)) * (irregular[:, None, None] * np.array([1.0, 0.6, 0.4])[:, None])
    has = rng.random((m, 2)) < table["nucleoli"][kind][:, None]
    has[:, 1] &= rng.random(m) < 0.4
    offsets = rng.uniform(-0.45, 0.45, (m, 2, 2))
    nucleoli = np.concatenate([offsets, (has * rng.uniform(0.5, 1.0, (m, 2)))[..., None]], axis=2)
    return dict(semi=semi, angle=rng.uniform(0, np.pi, m), harmonics=harmonics, density=uniform("density"),
                chroma=table["chroma"][kind] * rng.uniform(0.5, 1.0, m),
                rim=table["rim"][kind] * rng.uniform(0.0, 1.0, m), nucleoli=nucleoli)


def make_nuclei(rng: np.random.Generator, patch: np.ndarray, kind: np.ndarray, x: np.ndarray,
                y: np.ndarray) -> Nuclei:
    return Nuclei(patch=patch.astype(np.int64), kind=kind.astype(np.int64), x=x, y=y, **sample_shapes(rng, kind))


def subset(nuclei: Nuclei, keep: np.ndarray) -> Nuclei:
    return Nuclei(**{name: value[keep] for name, value in vars(nuclei).items()})


def extent(nuclei: Nuclei) -> np.ndarray:
    """An upper bound of each nucleus's radius (px) including its soft edge."""
    return nuclei.semi[:, 0] * (1 + np.abs(nuclei.harmonics).sum(axis=(1, 2))) + 1.0


def render_nuclei(nuclei: Nuclei, n: int, size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hematoxylin map (n, S+2P, S+2P) float32, instance ids (int32, 1.. per image) and tumour pixels (bool)."""
    side = size + 2 * PAD
    conc = np.zeros(n * side * side, np.float32)
    ids = np.zeros(n * side * side, np.int32)
    tumour = np.zeros(n * side * side, bool)
    local_id = _local_ids(nuclei.patch, n)
    # Each nucleus goes to the smallest window that holds it: fewer pixels to evaluate than one size for all.
    fits = np.searchsorted(WINDOWS, np.ceil(extent(nuclei)))
    for w, half in enumerate(WINDOWS):
        sel = np.flatnonzero(np.minimum(fits, len(WINDOWS) - 1) == w)
        if len(sel):
            flat, value, inside = _draw(nuclei, sel, half, side, rng)
            np.maximum.at(conc, flat.ravel(), value.ravel())
            np.maximum.at(ids, flat[inside], np.broadcast_to(local_id[sel, None, None], flat.shape)[inside])
            is_tumour = nuclei.kind[sel] == TUMOUR
            tumour[flat[is_tumour][inside[is_tumour]]] = True
    shape = (n, side, side)
    return conc.reshape(shape), ids.reshape(shape), tumour.reshape(shape)


def _local_ids(patch: np.ndarray, n: int) -> np.ndarray:
    """1-based index of each nucleus within its image (nuclei are grouped by `patch` in any order)."""
    order = np.argsort(patch, kind="stable")
    starts = np.searchsorted(patch[order], np.arange(n))
    ids = np.empty(len(patch), np.int32)
    ids[order] = np.arange(len(patch)) - starts[patch[order]] + 1
    return ids


def _draw(nuclei: Nuclei, sel: np.ndarray, half: int, side: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of the selected nuclei: flat canvas indices, hematoxylin values, and `inside` (mask > 0.5)."""
    f32 = np.float32
    lo, hi = half - PAD, side - PAD - half - 1  # keep each window on the canvas
    cx = np.clip(nuclei.x[sel], lo, hi) + PAD
    cy = np.clip(nuclei.y[sel], lo, hi) + PAD
    ix, iy = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
    grid = np.arange(-half, half + 1, dtype=f32)
    dx = grid[None, None, :] - (cx - ix).astype(f32)[:, None, None]
    dy = grid[None, :, None] - (cy - iy).astype(f32)[:, None, None]
    cos, sin = np.cos(nuclei.angle[sel]).astype(f32)[:, None, None], np.sin(nuclei.angle[sel]).astype(f32)[:, None, None]
    a, b = (nuclei.semi[sel].T.astype(f32)[..., None, None])
    u, v = (dx * cos + dy * sin) / a, (dy * cos - dx * sin) / b
    rho = np.sqrt(u * u + v * v) + f32(1e-6)
    c1, s1 = u / rho, v / rho
    c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1  # cos/sin of 2, 3, 4 theta by angle addition (no trig per pixel)
    c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
    c4, s4 = c2 * c2 - s2 * s2, 2 * c2 * s2
    h = nuclei.harmonics[sel].astype(f32)[..., None, None]
    edge = 1 + h[:, 0, 0] * c2 + h[:, 0, 1] * s2 + h[:, 1, 0] * c3 + h[:, 1, 1] * s3 + h[:, 2, 0] * c4 + h[:, 2, 1] * s4
    mask = np.clip(f32(0.5) + (edge - rho) * b, 0, 1)  # about one pixel of soft edge
    value = _stain(nuclei, sel, mask, rho / edge, u * a / b, v, rng)
    flat = (nuclei.patch[sel][:, None, None] * side + iy[:, None, None] + grid.astype(np.int64)[None, :, None]) * side \
        + ix[:, None, None] + grid.astype(np.int64)[None, None, :]
    return flat, value, mask > 0.5


def _stain(nuclei: Nuclei, sel: np.ndarray, mask: np.ndarray, r: np.ndarray, u: np.ndarray, v: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Hematoxylin inside one nucleus: base density, chromatin grain, darker rim, nucleoli (u, v in units of b)."""
    f32 = np.float32
    col = lambda arr: arr[sel].astype(f32)[:, None, None]  # noqa: E731
    grain = rng.random(mask.shape, dtype=f32)
    value = col(nuclei.density) * (1 - col(nuclei.chroma) * (grain - f32(0.5)))
    value *= 1 + col(nuclei.rim) * (np.minimum(r, 1) ** 4 - f32(0.3))
    for j in range(2):
        du = u - nuclei.nucleoli[sel, j, 0].astype(f32)[:, None, None]
        dv = v - nuclei.nucleoli[sel, j, 1].astype(f32)[:, None, None]
        bump = np.clip(1 - (du * du + dv * dv) * f32(16), 0, 1)  # radius b / 4
        value += nuclei.nucleoli[sel, j, 2].astype(f32)[:, None, None] * bump
    return value * mask


def stroma(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    """Eosin concentration (n, side, side): wavy fibres in two random directions, with open gaps.

    One white noise field is shaped twice in the Fourier domain: by two oriented band-pass filters (fibres: long
    along one direction, narrow across it) and by a low-pass filter (where stroma thins out into open space).
    """
    full, side = side, (side + 1) // 2  # fibres are smooth: synthesise at half resolution, then upsample
    ky = torch.fft.fftfreq(side)[:, None]
    kx = torch.fft.rfftfreq(side)[None, :]
    fibres = torch.zeros(n, *ky.shape[:1], kx.shape[1])
    for weight in (1.0, 0.7):
        theta = torch.from_numpy(rng.uniform(0, np.pi, n).astype(np.float32))[:, None, None]
        along = kx * torch.cos(theta) + ky * torch.sin(theta)
        across = -kx * torch.sin(theta) + ky * torch.cos(theta)
        fibres += weight * torch.exp(-(along / 0.05) ** 2 - ((across.abs() - 0.12) / 0.1) ** 2)
    gaps = torch.exp(-(kx ** 2 + ky ** 2) / 0.04 ** 2).expand_as(fibres)
    noise = torch.fft.rfft2(torch.randn(n, side, side, generator=torch_generator(rng)))
    total, open_noise = (_upsample(_normalised(torch.fft.irfft2(noise * f, s=(side, side))), full).numpy()
                         for f in (fibres, gaps))
    base = rng.uniform(0.2, 0.45, (n, 1, 1)).astype(np.float32)
    fibre = rng.uniform(0.08, 0.16, (n, 1, 1)).astype(np.float32)
    gap_level = rng.uniform(0.6, 1.8, (n, 1, 1)).astype(np.float32)  # higher: fewer open spaces
    open_space = np.clip(open_noise + gap_level, 0, 1)
    return np.clip(base + fibre * total, 0.02, None) * (0.15 + 0.85 * open_space)


def _upsample(field: torch.Tensor, side: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(field[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]


def _normalised(field: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per image."""
    std, mean = torch.std_mean(field, dim=(1, 2), keepdim=True)
    return (field - mean) / (std + 1e-6)


def blur(maps: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur per image (sigma px, shape (n,)) in the Fourier domain (wraps around: crop a margin after)."""
    side = maps.shape[-1]
    k2 = torch.fft.fftfreq(side)[:, None] ** 2 + torch.fft.rfftfreq(side)[None, :] ** 2
    gain = torch.exp(-2 * np.pi ** 2 * torch.from_numpy(sigma.astype(np.float32))[:, None, None] ** 2 * k2)
    return torch.fft.irfft2(torch.fft.rfft2(torch.from_numpy(maps)) * gain, s=(side, side)).numpy()


def compose(rng: np.random.Generator, hema: np.ndarray, eosin: np.ndarray) -> np.ndarray:
    """Stain maps (n, S, S) -> RGB uint8 (n, S, S, 3) by Beer-Lambert with per-image stain jitter and noise."""
    n = len(hema)
    vectors = []
    for base, spread in ((STAIN_H, 0.06), (STAIN_E, 0.06)):
        vec = np.abs(base[None, :] + rng.normal(0, spread, (n, 3)).astype(np.float32))
        vectors.append(vec / np.linalg.norm(vec, axis=1, keepdims=True))
    scale_h = rng.lognormal(0, 0.15, (n, 1, 1, 1)).astype(np.float32)
    scale_e = rng.lognormal(0, 0.2, (n, 1, 1, 1)).astype(np.float32)
    # (n, 2, 3): per image, each stain's colour vector times its concentration scale, in -ln units.
    mix = torch.from_numpy(np.stack([vectors[0] * scale_h[:, 0, 0], vectors[1] * scale_e[:, 0, 0]], axis=1))
    maps = torch.from_numpy(np.stack([hema, eosin], axis=-1))  # (n, S, S, 2)
    light = torch.from_numpy(rng.uniform(232, 252, (n, 1, 1, 3)).astype(np.float32))
    noise_std = torch.from_numpy(rng.uniform(1, 4, (n, 1, 1, 1)).astype(np.float32))
    rgb = light * torch.exp(torch.einsum("nhws,nsc->nhwc", maps, mix * -float(np.log(10))))
    rgb += noise_std * torch.randn(rgb.shape, generator=torch_generator(rng))
    return rgb.round_().clamp_(0, 255).to(torch.uint8).numpy()


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from `rng`: torch draws Gaussian noise faster, and stays deterministic."""
    return torch.Generator().manual_seed(int(rng.integers(2 ** 62)))


@dataclass(frozen=True)
class Rendered:
    images: np.ndarray  # (n, S, S, 3) uint8
    instances: np.ndarray  # (n, S, S) int32, 0 = background
    tumour: np.ndarray  # (n, S, S) bool: pixels inside tumour-like nuclei (defines PCam's label)


def render(rng: np.random.Generator, nuclei: Nuclei, n: int, size: int) -> Rendered:
    """Full H&E images, instance masks and tumour pixels for the given nuclei."""
    hema, ids, tumour = render_nuclei(nuclei, n, size, rng)
    # Blur and stroma work on the patch plus a margin only: the blur wraps around, the margin absorbs it.
    cut = PAD - BLUR_MARGIN
    hema = hema[:, cut:-cut, cut:-cut] + rng.uniform(0.03, 0.08, (n, 1, 1)).astype(np.float32)
    hema = blur(np.ascontiguousarray(hema), rng.uniform(0.5, 1.1, n))
    eosin = stroma(rng, n, hema.shape[-1]) * (1 - 0.7 * np.clip(hema, 0, 1))  # nuclei displace stroma
    crop = (slice(None), slice(BLUR_MARGIN, BLUR_MARGIN + size), slice(BLUR_MARGIN, BLUR_MARGIN + size))
    inner = (slice(None), slice(PAD, PAD + size), slice(PAD, PAD + size))
    return Rendered(compose(rng, hema[crop], eosin[crop]), ids[inner], tumour[inner])
