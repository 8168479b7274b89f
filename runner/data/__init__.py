"""The data layer: PatchCamelyon (real HDF5 files or the embedded synthetic generator), users' own classification
patches (folder, manifest, arrays: runner.data.patches) and segmentation tiles.

`check_source` validates cheaply before a run writes anything; `load_splits` returns train/valid/test splits
whose `get_batch(indices)` gives uint8 images and int64 targets; `iterate_batches` gives a seeded, resumable order.
"""
from __future__ import annotations

from pathlib import Path

from runner.data import arrays, pcam, synthetic
from runner.data.batches import Split, Splits, iterate_batches
from runner.data.errors import DataError
from runner.data.figure import sample_figure
from runner.data.patches import PATCH_SOURCES, check_patches, load_patches, split_counts
from runner.spec.config import SOURCES, TASKS, DataSpec

__all__ = ["DataError", "Split", "Splits", "check_source", "iterate_batches", "load_splits", "own_split_counts", "sample_figure"]

_TASK_SOURCES = {"classification": ("synthetic", "pcam", *PATCH_SOURCES),
                 "segmentation": ("synthetic", "folder", "arrays")}


def check_source(task: str, data: DataSpec) -> None:
    """Cheap validation of the data source (files, keys, shapes, dtypes, counts); DataError says what to fix."""
    _check_combination(task, data)
    if data.source == "synthetic":
        _check_synthetic_sizes(data, {"train": data.train_size, "valid": data.valid_size, "test": data.test_size})
    elif data.source == "pcam":
        pcam.check_pcam(_pcam_root(data))
    elif task == "classification":
        check_patches(data)
    elif data.source == "folder":
        arrays.check_folder(_location(data.root, "data.root", "a folder with images/ and masks/"))
    elif data.source == "arrays":
        arrays.check_arrays(_location(data.path, "data.path", "an .npz or .h5 file with `image` and `mask`"))


def load_splits(task: str, data: DataSpec, cache_dir: Path) -> Splits:
    """Train/valid/test splits for `task`; generated or decompressed files go to `cache_dir` (reused)."""
    cache_dir = Path(cache_dir)
    if task == "classification" and data.source in PATCH_SOURCES:
        _check_combination(task, data)
        return load_patches(data, cache_dir)  # checks what the decoded cache does not already vouch for
    check_source(task, data)
    caps = {"train": data.train_size, "valid": data.valid_size, "test": data.test_size}
    if data.source == "synthetic":
        if task == "classification":
            folder = synthetic.ensure_pcam(cache_dir, data.seed, data.image_size, caps)
            return pcam.load_pcam(folder, cache_dir, caps, data.fraction, data.seed, data.in_memory,
                                  name="synthetic PCam-like")
        folder = synthetic.ensure_nuclei(cache_dir, data.seed, data.image_size, caps)
        return arrays.load_nuclei_files(folder, data.seed, caps, data.fraction, data.in_memory)
    if data.source == "pcam":
        return pcam.load_pcam(_pcam_root(data), cache_dir / "pcam", caps, data.fraction, data.seed, data.in_memory)
    location = Path(data.root if data.source == "folder" else data.path)
    return arrays.load_user_segmentation(data.source, location, data.image_size, data.seed, caps, data.fraction)


def own_split_counts(task: str, data: DataSpec) -> dict[str, int] | None:
    """Patches per split of a user's own classification source, from its listing (nothing decoded or written);
    None for the other sources, whose sizes the spec states."""
    if task == "classification" and data.source in PATCH_SOURCES:
        return split_counts(data)
    return None


def _check_combination(task: str, data: DataSpec) -> None:
    if task not in TASKS:
        raise DataError(f"task = {task!r}; allowed: {', '.join(TASKS)}")
    if data.source not in SOURCES:
        raise DataError(f"data.source = {data.source!r}; allowed: {', '.join(SOURCES)}")
    if data.source not in _TASK_SOURCES[task]:
        raise DataError(f"data.source = {data.source!r} cannot feed task {task!r}; "
                        f"allowed for {task}: {', '.join(_TASK_SOURCES[task])}")
    if not 0 < data.fraction <= 1:
        raise DataError(f"data.fraction = {data.fraction}; must be in (0, 1]")


def _check_synthetic_sizes(data: DataSpec, caps: dict[str, int]) -> None:
    small = {k: v for k, v in caps.items() if v < 2}
    if small:
        raise DataError(f"synthetic data needs at least 2 samples per split; got {small} "
                        f"(set data.train_size / valid_size / test_size)")
    if data.image_size < 16:
        raise DataError(f"data.image_size = {data.image_size}; synthetic patches need at least 16 px")


def _pcam_root(data: DataSpec) -> Path:
    """data.root, or the default folder that `python -m runner data pcam` fills (data.root is not in a job's key)."""
    if data.root:
        return Path(data.root).expanduser()
    root = pcam.default_root()
    if not root.is_dir():
        raise DataError(f"data.root is not set and the default PatchCamelyon folder {root} does not exist; run "
                        f"`python -m runner data pcam` to download it there, or set data.root (or "
                        f"{pcam.DATA_DIR_ENV}) to a folder with the published files")
    return root


def _location(value: str, key: str, what: str) -> Path:
    if not value:
        raise DataError(f"{key} is empty; set it to {what}")
    return Path(value).expanduser()
