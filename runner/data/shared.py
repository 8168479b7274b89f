"""One copy of a large split per node: an HDF5 dataset converted once into a raw .npy in the data cache and
memory-mapped read-only, so that every worker on the node reads the same page-cache pages.

Why: PCam's train x is 7.2 GB. Read into each worker's own memory (the old `in_memory` path) it cost 14.1 GiB peak
for one worker (the read made a second copy) and 4x that for `--workers 4`; streamed from HDF5 it gave 642 img/s,
because a random row reads its whole 64-row chunk. A raw .npy mapped with `np.load(mmap_mode="r")` costs each
extra worker only the pages it has touched, which the kernel shares (and may drop and re-read: they are clean).

The conversion runs once per source file and is safe against its neighbours: free space is checked first, the bytes
go to a hidden temporary file that is renamed into place only when complete, and an exclusive lock beside it makes
a second worker wait for the first one's file instead of converting again.
"""
from __future__ import annotations

import contextlib
import io
import fcntl
import hashlib
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from runner.data.errors import DataError
from runner.faults import no_space, space_for

# A subset up to this size is gathered into the worker's own memory (no conversion of the whole file needed); a
# larger one is mapped. 64 MiB is ~2,400 PCam patches, so a worker holds at most 3 x 64 MiB of its own data.
PRIVATE_MAX_BYTES = 64 << 20
BLOCK_ROWS = 2048  # rows per read while converting: 56 MB of PCam, a multiple of its 64-row chunks
Progress = Callable[[str, int], Callable[[int | None], None]]


def worth_mapping(nbytes: int) -> bool:
    """Whether a selection of `nbytes` image bytes is mapped (shared) rather than copied into the worker."""
    return nbytes > PRIVATE_MAX_BYTES


def mapped_array(src: Path, key: str, cache: Path, progress: Progress | None = None) -> np.ndarray:
    """`src[key]` as a read-only array mapped from its .npy copy in `cache` (made on first use)."""
    path = ensure_npy(src, key, cache, progress)
    return open_npy(path, _dataset_layout(src, key))


def npy_path(src: Path, key: str, cache: Path) -> Path:
    """The copy's name: keyed on the source's path, size and mtime, so a replaced source gets a fresh copy."""
    stat = src.stat()
    ident = hashlib.sha256(f"{src.resolve()}|{key}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = src.name.removesuffix(".h5")
    return cache / f"{stem if stem.endswith('_' + key) else stem + '_' + key}-{ident}.npy"


def ensure_npy(src: Path, key: str, cache: Path, progress: Progress | None = None) -> Path:
    """The .npy copy of `src[key]`, converted now unless it exists; concurrent callers convert it once."""
    dest = npy_path(src, key, cache)
    if dest.is_file():
        return dest
    with space_for(cache, 1, at_least=True):  # the folder itself may not fit
        cache.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.with_name(f".{dest.name}.lock")):
        if not dest.is_file():  # else another worker converted it while this one waited for the lock
            _remove_stale_temps(dest)
            _convert(src, key, dest, progress)
    return dest


def open_npy(path: Path, layout: tuple[tuple[int, ...], np.dtype]) -> np.ndarray:
    """Map `path` read-only; DataError when its shape or dtype is not the source's."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot map the cached copy ({err}); delete it and it is made again") from err
    if (array.shape, array.dtype) != layout:
        raise DataError(f"{path}: cached copy has shape {array.shape} {array.dtype}, the source {layout[0]} "
                        f"{layout[1]}; delete it and it is made again")
    return array.view(np.ndarray)  # a plain array view: numpy's memmap subclass slows indexing and pickles whole


def _dataset_layout(src: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    with h5py.File(src, "r") as f:
        return tuple(f[key].shape), f[key].dtype


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock` (blocking): one converter at a time, the others wait for its file."""
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            # Safe to remove while others wait on it: each re-checks the final file after taking the lock.
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _temp_name(dest: Path, host: str, pid: int) -> Path:
    return dest.with_name(f".{dest.name}.{host}.{pid}.tmp")


def _remove_stale_temps(dest: Path) -> None:
    """Delete temporaries that killed converters on this host left behind (7 GB each for PCam's train x)."""
    host = socket.gethostname()
    for temp in dest.parent.glob(f".{dest.name}.{host}.*.tmp"):
        pid = temp.name.removesuffix(".tmp").rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            temp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _convert(src: Path, key: str, dest: Path, progress: Progress | None) -> None:
    """Write `src[key]` as .npy to a temporary file, then rename it to `dest`; nothing is left at `dest` on failure."""
    temp = _temp_name(dest, socket.gethostname(), os.getpid())
    try:
        with h5py.File(src, "r") as f:
            dataset = f[key]
            header = _npy_header(dataset.shape, dataset.dtype)
            needed = len(header) + dataset.size * dataset.dtype.itemsize
            if shutil.disk_usage(dest.parent).free < needed:
                raise no_space(dest.parent, needed)
            with space_for(dest.parent, needed), open(temp, "wb") as out:
                out.write(header)
                _copy_rows(dataset, out, progress(f"copying {src.name} once for shared memory mapping", len(dataset)) if progress else None)
                out.flush()
                os.fsync(out.fileno())  # the copy is reused for months: make it durable before it gets its name
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def _copy_rows(dataset: h5py.Dataset, out, report: Callable[[int | None], None] | None) -> None:
    """Stream the dataset in blocks through one reused buffer: memory stays at one block (56 MB for PCam)."""
    rows = len(dataset)
    buffer = np.empty((min(BLOCK_ROWS, max(rows, 1)),) + dataset.shape[1:], dtype=dataset.dtype)
    try:
        for lo in range(0, rows, BLOCK_ROWS):
            hi = min(lo + BLOCK_ROWS, rows)
            block = buffer[:hi - lo]
            dataset.read_direct(block, np.s_[lo:hi], np.s_[0:hi - lo])
            out.write(memoryview(block).cast("B"))
            if report:
                report(hi)
    finally:
        if report:
            report(None)
