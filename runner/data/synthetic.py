"""The embedded default data set: seeded PCam-like patches (and nuclei tiles with instance masks) in HDF5.

Classification follows PatchCamelyon's rule: label 1 iff a tumour-like nucleus overlaps the centre 32x32 (a third
of the side for other sizes). Negatives may hold tumour cells away from the centre, normal epithelium may crowd
the centre, and small tumour foci exist, so the task needs localisation and morphology, not just colour.

Generation runs in chunks of CHUNK patches (bounded memory), each seeded by (seed, split, chunk): the same seed
gives identical bytes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from runner.data import nuclei as nu
from runner.data.pcam import SPLITS, file_name, write_h5_atomic, write_pcam_pair

VERSION = 1  # bump when the generator's output changes: it is part of the cache key
CHUNK = 256
TASK_IDS = {"classification": 0, "segmentation": 1}


def centre_box(size: int) -> tuple[float, float]:
    """Continuous bounds (lo, hi) of the centre square (PCam: pixels 32..63 of 96)."""
    side = max(1, size // 3)
    start = (size - side) // 2
    return start - 0.5, start + side - 0.5


def hex_cluster(rng: np.random.Generator, centre: np.ndarray, spacing: float, reach: float) -> np.ndarray:
    """Crowded points: a jittered hexagonal lattice at a random angle, cut to a random ellipse around `centre`."""
    steps = int(math.ceil(reach / spacing)) + 1
    i, j = np.meshgrid(np.arange(-steps, steps + 1), np.arange(-steps, steps + 1))
    pts = np.stack([(i + 0.5 * (j % 2)) * spacing, j * spacing * 0.866], axis=-1).reshape(-1, 2)
    pts += rng.normal(0, 0.12 * spacing, pts.shape) - np.array([0.5 * spacing * (steps % 2), 0])
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T
    axes = reach * np.array([1.0, rng.uniform(0.5, 1.0)])
    inside = ((pts @ rot) ** 2 / axes ** 2).sum(axis=1) <= 1
    keep = inside & (rng.random(len(pts)) < rng.uniform(0.75, 1.0))
    return pts[keep] + centre


def far_point(rng: np.random.Generator, size: int, distance: float) -> np.ndarray:
    """A point at least `distance` (Chebyshev) from the image centre, within the padded canvas."""
    while True:
        p = rng.uniform(-8, size + 8, 2)
        if np.abs(p - size / 2).max() >= distance:
            return p


def patch_layout(rng: np.random.Generator, size: int, tumour_centre: bool, tumour_elsewhere: bool,
                 density: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Kinds (k,) and centres (k, 2) of one patch's nuclei."""
    kinds, points = [], []

    def add(kind: int, pts: np.ndarray) -> None:
        pts = pts.reshape(-1, 2)
        kinds.append(np.full(len(pts), kind))
        points.append(pts)

    area = (size / 96) ** 2 * density
    for kind, rate in ((nu.LYMPHOCYTE, rng.uniform(1, 22)), (nu.FIBROBLAST, rng.uniform(1, 10))):
        add(kind, rng.uniform(-6, size + 6, (rng.poisson(rate * area), 2)))
    if rng.random() < 0.4:  # normal epithelium (a duct or gland), anywhere, possibly over the centre
        add(nu.EPITHELIAL, hex_cluster(rng, rng.uniform(0, size, 2), rng.uniform(10, 13), rng.uniform(10, 30)))
    else:
        add(nu.EPITHELIAL, rng.uniform(-6, size + 6, (rng.poisson(3 * area), 2)))
    lo, hi = centre_box(size)
    if tumour_centre:
        seed_point = rng.uniform(lo + 0.5, hi - 0.5, 2)
        add(nu.TUMOUR, seed_point)
        if rng.random() < 0.85:  # else a lone tumour cell: a hard positive
            cluster = hex_cluster(rng, seed_point + rng.normal(0, 6, 2), rng.uniform(13, 18), rng.uniform(12, 40))
            add(nu.TUMOUR, cluster[np.linalg.norm(cluster - seed_point, axis=1) > 9])
    if tumour_elsewhere:
        add(nu.TUMOUR, hex_cluster(rng, far_point(rng, size, size * 0.45), rng.uniform(13, 18), rng.uniform(10, 35)))
    return np.concatenate(kinds), np.concatenate(points)


def touches_centre(nuclei: nu.Nuclei, size: int) -> np.ndarray:
    """Whether each nucleus's extent may reach the centre square."""
    lo, hi = centre_box(size)
    dx = np.maximum(np.maximum(lo - nuclei.x, nuclei.x - hi), 0)
    dy = np.maximum(np.maximum(lo - nuclei.y, nuclei.y - hi), 0)
    return np.hypot(dx, dy) < nu.extent(nuclei) + 0.5


def build_nuclei(rng: np.random.Generator, layouts: list[tuple[np.ndarray, np.ndarray]], size: int) -> nu.Nuclei:
    """One flat Nuclei for a batch of layouts; centres clipped so every nucleus window stays on the canvas."""
    patch = np.concatenate([np.full(len(k), i) for i, (k, _) in enumerate(layouts)]).astype(np.int64)
    kind = np.concatenate([k for k, _ in layouts]).astype(np.int64)
    xy = np.concatenate([p for _, p in layouts]).reshape(-1, 2)
    half = np.array([nu.HALF[k] for k in range(4)])[kind]
    lo, hi = half - nu.PAD, size + nu.PAD - half - 1
    return nu.make_nuclei(rng, patch, kind, np.clip(xy[:, 0], lo, hi), np.clip(xy[:, 1], lo, hi))


def balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """0/1 labels in random order, one of each per consecutive pair: exactly balanced for any even prefix."""
    first = rng.integers(0, 2, (n + 1) // 2)
    return np.stack([first, 1 - first], axis=1).reshape(-1)[:n]


def classification_chunk(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n PCam-like patches (n, S, S, 3) uint8 and labels (n,)."""
    rendered, labels = classification_rendered(rng, n, size)
    return rendered.images, labels


def classification_rendered(rng: np.random.Generator, n: int, size: int) -> tuple[nu.Rendered, np.ndarray]:
    """As classification_chunk, with the rendered tumour pixels (tests check the label rule on them)."""
    labels = balanced_labels(rng, n)
    layouts = [patch_layout(rng, size, bool(lab), rng.random() < (0.35 if lab == 0 else 0.2)) for lab in labels]
    nuclei = build_nuclei(rng, layouts, size)
    # The label rule is exact: in negatives no tumour nucleus may reach the centre square.
    drop = (nuclei.kind == nu.TUMOUR) & (labels[nuclei.patch] == 0) & touches_centre(nuclei, size)
    return nu.render(rng, nu.subset(nuclei, ~drop), n, size), labels


def segmentation_chunk(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n nuclei tiles (n, S, S, 3) uint8 with instance masks (n, S, S) int32 (0 = background)."""
    layouts = [patch_layout(rng, size, rng.random() < 0.4, rng.random() < 0.3, density=1.5) for _ in range(n)]
    rendered = nu.render(rng, build_nuclei(rng, layouts, size), n, size)
    return rendered.images, rendered.instances


def generate(task: str, seed: int, split: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n samples of one split, generated in chunks seeded by (seed, split, task, chunk, VERSION)."""
    make = classification_chunk if task == "classification" else segmentation_chunk
    parts = []
    for c in range(math.ceil(n / CHUNK)):
        rng = np.random.default_rng([seed, SPLITS.index(split), TASK_IDS[task], c, VERSION])
        parts.append(make(rng, min(CHUNK, n - c * CHUNK), size))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def cache_folder(cache_dir: Path, task: str, seed: int, size: int, counts: dict[str, int]) -> Path:
    """The cache folder is keyed on every generation parameter (and the generator version)."""
    kind = "pcam" if task == "classification" else "nuclei"
    sizes = "-".join(str(counts[s]) for s in SPLITS)
    return cache_dir / f"synthetic-{kind}-v{VERSION}-seed{seed}-px{size}-n{sizes}"


def ensure_pcam(cache_dir: Path, seed: int, size: int, counts: dict[str, int]) -> Path:
    """Generate the PCam-format files once (reused when present); returns the folder to load them from."""
    folder = cache_folder(cache_dir, "classification", seed, size, counts)
    for split in SPLITS:
        x_path, y_path = folder / file_name(split, "x"), folder / file_name(split, "y")
        if not (x_path.is_file() and y_path.is_file()):
            images, labels = generate("classification", seed, split, counts[split], size)
            write_pcam_pair(x_path, y_path, images, labels)
    return folder


def nuclei_file(folder: Path, split: str) -> Path:
    return folder / f"nuclei_{split}.h5"


def ensure_nuclei(cache_dir: Path, seed: int, size: int, counts: dict[str, int]) -> Path:
    """Generate nuclei_{split}.h5 (keys `image`, `mask`) once; returns the folder."""
    folder = cache_folder(cache_dir, "segmentation", seed, size, counts)
    for split in SPLITS:
        path = nuclei_file(folder, split)
        if not path.is_file():
            images, masks = generate("segmentation", seed, split, counts[split], size)
            write_h5_atomic(path, {"image": images, "mask": masks})
    return folder
