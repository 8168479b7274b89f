"""What `predict` reads: image files, folders of them, PCam `_x.h5` / `.h5.gz` files and `.npz` arrays.

Each input becomes a stream of (source, index, image) items; an input that cannot be read becomes a Problem with
the reason, and the other inputs are still read.
"""
from __future__ import annotations

import gzip
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner.inference.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, BadImage, as_rgb, check_pixels, read

ARRAY_SUFFIXES = (".h5", ".h5.gz", ".npz")
ARRAY_KEYS = ("x", "images", "image")  # PCam's `_x.h5` files hold `x`; .npz files may use any of these
CHUNK = 256  # HDF5 rows read at once


@dataclass(frozen=True)
class Item:
    source: str
    index: int
    image: np.ndarray


@dataclass(frozen=True)
class Problem:
    source: str
    reason: str


def kind_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in (*ARRAY_SUFFIXES, *IMAGE_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return None


def expand(paths: list[Path]) -> tuple[list[Path], list[Problem]]:
    """Files to read (folders expanded, sorted) and the paths that are missing or of an unknown type."""
    files, problems = [], []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and kind_of(p))
            files += found
            if not found:
                problems.append(Problem(str(path), "folder holds no PNG, JPEG, TIFF, .h5, .h5.gz or .npz files"))
        elif not path.exists():
            problems.append(Problem(str(path), "no such file or folder"))
        elif kind_of(path) is None:
            problems.append(Problem(str(path), "unknown file type; expected PNG, JPEG, TIFF, .h5, .h5.gz or .npz"))
        else:
            files.append(path)
    return files, problems


def count(path: Path) -> int:
    """Images in one input (for progress); 1 when the file cannot be inspected cheaply."""
    kind = kind_of(path)
    try:
        if kind == ".h5":
            import h5py

            with h5py.File(path, "r") as handle:
                return len(handle[_array_key(list(handle.keys()), path)])
        if kind == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return len(archive[_array_key(archive.files, path)])
    except Exception:  # noqa: BLE001 - the problem is reported when the file is read
        return 1
    return 1


def items(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Item | Problem]:
    """The images of one input, or one Problem saying why it cannot be read (after any images already given).

    No image may declare more than `max_pixels` pixels (a stack's images are counted one by one).
    """
    kind = kind_of(path)
    try:
        if kind in IMAGE_SUFFIXES:
            yield Item(str(path), 0, read(path, max_pixels))
        elif kind == ".npz":
            yield from _npz_items(path, max_pixels)
        else:
            with _plain_h5(path) as plain:
                yield from _h5_items(path, plain, max_pixels)
    except BadImage as exc:
        yield Problem(str(path), str(exc))
    except (OSError, ValueError, KeyError) as exc:
        yield Problem(str(path), f"cannot be read ({type(exc).__name__}: {exc})")


def _array_key(keys: list[str], path: Path) -> str:
    for key in ARRAY_KEYS:
        if key in keys:
            return key
    raise BadImage(f"holds {sorted(keys)}; expected an image array named one of {', '.join(ARRAY_KEYS)}")


def _check_stack(shape: tuple[int, ...], dtype: np.dtype, max_pixels: int) -> None:
    """An (N, H, W, 3) uint8 stack, as PCam stores it, of images within the pixel limit; otherwise the reason."""
    if len(shape) == 3:
        raise BadImage(f"images of shape {shape[1:]}: 1 channel; the model takes 3 (RGB)")
    if len(shape) != 4:
        raise BadImage(f"array of shape {shape}; expected (N, H, W, 3) RGB images")
    as_rgb(np.zeros((1, 1, shape[-1]), dtype=dtype))
    check_pixels(tuple(shape[1:]), max_pixels)


def _npz_header(archive, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the member's .npy header, read before its (possibly huge) data is inflated."""
    with archive.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(member)
    return shape, dtype


def _npz_items(path: Path, max_pixels: int) -> Iterator[Item]:
    with np.load(path, allow_pickle=False) as archive:
        key = _array_key(archive.files, path)
        _check_stack(*_npz_header(archive, key), max_pixels)
        array = archive[key]
    for index, image in enumerate(array):
        yield Item(str(path), index, as_rgb(image))


@contextmanager
def _plain_h5(path: Path) -> Iterator[Path]:
    """The HDF5 file itself, or a decompressed temporary copy of a `.h5.gz` download."""
    if kind_of(path) != ".h5.gz":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="predict-") as folder:
        plain = Path(folder) / path.name[:-3]
        with gzip.open(path, "rb") as source, open(plain, "wb") as target:
            shutil.copyfileobj(source, target, length=1 << 22)
        yield plain


def _h5_items(path: Path, plain: Path, max_pixels: int) -> Iterator[Item]:
    import h5py

    with h5py.File(plain, "r") as handle:
        data = handle[_array_key(list(handle.keys()), path)]
        _check_stack(data.shape, data.dtype, max_pixels)
        for start in range(0, len(data), CHUNK):
            for offset, image in enumerate(data[start:start + CHUNK]):
                yield Item(str(path), start + offset, as_rgb(image))
