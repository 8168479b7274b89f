"""Decoding a classification source once into the cache, and the Splits built on it.

Decoding thousands of PNGs costs seconds to minutes per job, so the decoded patches are written once as one raw
.npy (N, S, S, 3) uint8 under the cache, keyed by a fingerprint of the file list (paths, sizes, mtimes) and the
crop; every later job of the experiment maps that file (read-only, shared through the page cache) instead.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runner.data import shared
from runner.data.arrays import to_rgb
from runner.data.batches import ArraySplit, MappedSplit, Split
from runner.data.errors import DataError
from runner.data.patches.check import raise_problems, unreadable_message
from runner.data.patches.layouts import Catalog, read_array
from runner.data.pcam import SPLITS, select_rows
from runner.faults import no_space, space_for
from runner.spec.config import DataSpec

CACHE_FORMAT = 1  # bump when the decoded bytes for the same files would change
GREY_OR_COLOUR = ("RGB", "RGBA", "L", "I;16", "I", "F")  # decoded as they are; other modes go through RGB


# ---- the cache ---------------------------------------------------------------------------------------------------

def cache_path(catalog: Catalog, crop: int, cache_dir: Path) -> Path:
    """The decoded copy's name: a replaced, added or touched file (or another crop) gives a new one."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, catalog.source, crop, list(catalog.image_keys)]).encode())
    files = [catalog.location] if catalog.source == "arrays" else [item.path for item in catalog.items]
    for file in files:
        stat = Path(str(file)).stat()
        digest.update(f"\0{Path(str(file)).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return cache_dir / "patches" / f"{catalog.source}-{catalog.location.stem}-{digest.hexdigest()[:12]}.npy"


def cached_images(catalog: Catalog, crop: int, path: Path) -> np.ndarray:
    """The decoded patches (N, S, S, 3) uint8, mapped read-only from `path`; decoded first unless present."""
    if not path.is_file():
        with space_for(path.parent, 1, at_least=True):  # the folder itself may not fit
            path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            if not path.is_file():  # else another job decoded it while this one waited
                _write_decoded(catalog, crop, path)
    side = _cached_side(path)
    return shared.open_npy(path, ((len(catalog.items), side, side, 3), np.dtype(np.uint8)))


def _cached_side(path: Path) -> int:
    try:
        return int(np.load(path, mmap_mode="r").shape[1])
    except (OSError, ValueError, IndexError) as err:
        raise DataError(f"{path}: cannot map the decoded copy ({err}); delete it and it is made again") from err


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One decoder per cache file at a time; the lock goes with the handle, even when the process dies."""
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _write_decoded(catalog: Catalog, crop: int, path: Path) -> None:
    """Decode into a temporary .npy, then rename it into place: a crash never leaves half a cache file."""
    host = socket.gethostname()
    for stale in path.parent.glob(f".{path.name}.{host}.*.tmp"):  # a killed decoder's: this one holds the lock
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{host}.{os.getpid()}.tmp")
    try:
        if catalog.source == "arrays":
            _write_npy(tmp, _array_patches(catalog, crop))
        else:
            _decode_files(catalog, crop, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _output(tmp: Path, n: int, side: int) -> np.ndarray:
    needed = n * side * side * 3
    if shutil.disk_usage(tmp.parent).free < needed:
        raise no_space(tmp.parent, needed)
    return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, side, side, 3))


def _write_npy(tmp: Path, patches: np.ndarray) -> None:
    with space_for(tmp.parent, patches.nbytes):
        out = _output(tmp, len(patches), patches.shape[1])
        out[:] = patches
        out.flush()
        del out


# ---- decoding ----------------------------------------------------------------------------------------------------

def _decode_files(catalog: Catalog, crop: int, tmp: Path) -> None:
    """Decode every file straight into the mapped output (memory stays at one patch); damaged files are collected
    and reported together (sets too large for the check's full decode are first decoded here)."""
    side = crop or _first_side(catalog)
    failures = []
    with space_for(tmp.parent, len(catalog.items) * side * side * 3):
        out = _output(tmp, len(catalog.items), side)
        for row, item in enumerate(catalog.items):
            try:
                out[row] = decode(Path(str(item.path)), crop)
            except (OSError, SyntaxError, ValueError, EOFError, DataError) as err:
                failures.append(f"{item.path} ({type(err).__name__}: {err})")
        out.flush()
        del out
    if failures:
        raise_problems(catalog, [unreadable_message(catalog, failures)])


def _first_side(catalog: Catalog) -> int:
    from PIL import Image
    with Image.open(Path(str(catalog.items[0].path))) as image:
        return image.size[0]


def decode(path: Path, crop: int) -> np.ndarray:
    """One image file -> (S, S, 3) uint8: grey becomes three channels, alpha is dropped, 16-bit is scaled."""
    from PIL import Image
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image if image.mode in GREY_OR_COLOUR else image.convert("RGB"))
    return centre_crop(to_rgb(pixels, str(path)), crop)


def centre_crop(image: np.ndarray, crop: int) -> np.ndarray:
    """The centred crop x crop square of (..., H, W, C) (the top-left one of the two middles when odd); 0 = as is."""
    if not crop:
        return image
    h, w = image.shape[-3:-1]
    top, left = (h - crop) // 2, (w - crop) // 2
    return image[..., top:top + crop, left:left + crop, :]


def _array_patches(catalog: Catalog, crop: int) -> np.ndarray:
    """All image arrays of the file, in item order, as (N, S, S, 3) uint8 (one scaling for the whole array)."""
    parts = []
    for key in catalog.image_keys:
        images = read_array(catalog.location, key)
        images = images[..., None] if images.ndim == 3 else images
        parts.append(centre_crop(to_rgb(images, f"{catalog.location}[{key}]"), crop))
    return np.ascontiguousarray(np.concatenate(parts))


# ---- splits ------------------------------------------------------------------------------------------------------

def build_split(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, in_memory: bool) -> Split:
    """A small selection copied into this worker; a large one (or in_memory = false) read from the mapped copy."""
    if in_memory and not shared.worth_mapping(len(rows) * int(np.prod(images.shape[1:]))):
        return ArraySplit(np.array(images[rows]), labels[rows], labels[rows])
    return MappedSplit(images, labels, rows, labels[rows])


def select(rows: np.ndarray, labels: np.ndarray, data: DataSpec, split: str) -> np.ndarray:
    """The capped (data.*_size, 0 = all) and, for train, thinned (data.fraction) stratified subset of `rows`."""
    caps = {"train": data.train_size, "valid": data.valid_size, "test": data.test_size}
    fraction = data.fraction if split == "train" else 1.0
    return rows[select_rows(labels[rows], data.seed, split, caps[split], fraction)]


def describe(catalog: Catalog, splits: dict[str, Split], side: int, data: DataSpec) -> str:
    parts = [f"{s} {len(splits[s]):,}" for s in SPLITS]
    crop = " (centre-cropped)" if data.crop else ""
    mode = "in memory" if isinstance(splits["train"], ArraySplit) else "mapped from the decoded cache"
    names = ", ".join(catalog.classes[:8]) + (", ..." if len(catalog.classes) > 8 else "")
    return (f"{catalog.source} ({catalog.location}): {len(catalog.items):,} patches, {len(catalog.classes)} classes "
            f"({names}); {', '.join(parts)}; fraction {data.fraction:g}; {side}x{side}{crop}; {mode}")
