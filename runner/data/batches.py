"""Splits (indexable datasets that return whole batches) and the seeded, resumable batch iterator.

A split returns a batch as tensors straight from its storage: uint8 images (B, 3, H, W) and int64 targets
(class labels (B,) or instance masks (B, H, W)). Scaling to float and augmentation happen on the training device.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import torch

from runner.data.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


class Split:
    """Base class: `len(split)`, `split.labels` (classification labels or None) and `split.get_batch(indices)`."""

    labels: np.ndarray | None
    # The slide or patient of each row, where the data names one (a manifest's or array file's `group`): the test
    # metrics' bootstrap resamples whole groups then, as patches of one slide are not independent.
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def get_batch(self, indices: np.ndarray) -> Batch:
        raise NotImplementedError


@dataclass(frozen=True)
class Splits:
    train: Split
    valid: Split
    test: Split
    description: str  # one line for logs and reports
    # Classification: class names in label order (label k is classes[k]); the model gets len(classes) outputs.
    # Segmentation: empty.
    classes: tuple[str, ...] = ()
    # How the splits were made, for the report (e.g. "predefined" or "stratified by label, grouped by slide, seed
    # 0, assignment sha256 ab12..."); empty for the fixed synthetic and PCam splits.
    split_note: str = ""


def to_batch(images: np.ndarray, targets: np.ndarray) -> Batch:
    """(B, H, W, 3) uint8 and targets -> channels-first uint8 images and int64 targets."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.asarray(targets, dtype=np.int64))


class ArraySplit(Split):
    """A split held in RAM: images (N, H, W, 3) uint8; targets (N,) labels or (N, H, W) instance ids."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, labels: np.ndarray | None) -> None:
        if len(images) != len(targets):
            raise ValueError(f"images ({len(images)}) and targets ({len(targets)}) differ in length")
        self.images, self.targets, self.labels = images, targets, labels

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: np.ndarray) -> Batch:
        indices = np.asarray(indices, dtype=np.int64)
        return to_batch(self.images[indices], self.targets[indices])


class MappedSplit(Split):
    """A split read from arrays mapped from disk (see runner.data.shared): `rows` selects the subset.

    `images` (N, H, W, 3) and `targets` (N,) or (N, H, W) index the whole file, so every worker maps the same
    pages; a batch gathers only its own rows. Pickles as the file's path, not its contents.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, rows: np.ndarray, labels: np.ndarray | None) -> None:
        if len(images) != len(targets):
            raise ValueError(f"images ({len(images)}) and targets ({len(targets)}) differ in length")
        self.images, self.targets, self.labels = images, targets, labels
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "images": _mapped_name(self.images), "targets": _mapped_name(self.targets)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in ("images", "targets"):
            if isinstance(state[name], Path):
                setattr(self, name, np.load(state[name], mmap_mode="r").view(np.ndarray))

    def get_batch(self, indices: np.ndarray) -> Batch:
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        return to_batch(self.images[rows], self.targets[rows])


def _mapped_name(array: np.ndarray) -> np.ndarray | Path:
    """The file behind a mapped array (so pickling sends a path, not gigabytes), else the array itself."""
    base = array.base if isinstance(array.base, np.memmap) else None
    return Path(base.filename) if base is not None and base.filename else array


class H5Split(Split):
    """A split streamed from HDF5: `rows` (sorted file rows) selects the subset; one handle per process.

    Handles open lazily and reopen after fork (a handle inherited from the parent process is not safe to use).
    """

    def __init__(self, x_src: tuple[Path, str], y_src: tuple[Path, str], rows: np.ndarray,
                 labels: np.ndarray | None, target_shape: tuple[int, ...] = ()) -> None:
        self.x_src, self.y_src = x_src, y_src
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = labels
        self.target_shape = target_shape  # classification: () (PCam's (1, 1, 1) is flattened)
        self._pid = -1
        self._handles: dict[Path, h5py.File] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pid"], state["_handles"] = -1, {}
        return state

    def _dataset(self, path: Path, key: str) -> h5py.Dataset:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if path not in self._handles:
            try:
                self._handles[path] = h5py.File(path, "r")
            except OSError as err:
                raise DataError(f"{path}: cannot open as HDF5 ({err}); re-create or re-download the file") from err
        return self._handles[path][key]

    def get_batch(self, indices: np.ndarray) -> Batch:
        # HDF5 fancy indexing wants strictly increasing rows: read sorted unique rows, then restore the order.
        unique, inverse = np.unique(self.rows[np.asarray(indices, dtype=np.int64)], return_inverse=True)
        x = read_rows(self._dataset(*self.x_src), unique)[inverse]
        y = read_rows(self._dataset(*self.y_src), unique)[inverse]
        return to_batch(x, y.reshape((len(y),) + self.target_shape))


def read_rows(dataset: h5py.Dataset, rows: np.ndarray, block: int = 512) -> np.ndarray:
    """dataset[rows] for sorted unique rows; dense stretches are read as slices (much faster than point selection)."""
    if len(rows) == 0:
        return np.zeros((0,) + dataset.shape[1:], dtype=dataset.dtype)
    parts = []
    for start in range(0, len(rows), block):
        chunk = rows[start:start + block]
        lo, hi = int(chunk[0]), int(chunk[-1]) + 1
        if len(chunk) * 4 >= hi - lo:
            parts.append(dataset[lo:hi][chunk - lo])
        else:
            parts.append(dataset[chunk])
    return np.concatenate(parts)


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch; depends only on (seed, epoch) so resumed runs see the same batches."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def iterate_batches(split: Split, batch_size: int, shuffle: bool, seed: int, epoch: int, start_batch: int = 0,
                    prefetch: bool = False) -> Iterator[Batch]:
    """Batches of one epoch from `start_batch` on; the last partial batch is kept."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = epoch_order(len(split), shuffle, seed, epoch)
    chunks = [order[i:i + batch_size] for i in range(start_batch * batch_size, len(order), batch_size)]
    if not prefetch:
        return (split.get_batch(c) for c in chunks)
    return _prefetched(split, chunks)


_DONE = object()


def _prefetched(split: Split, chunks: list[np.ndarray]) -> Iterator[Batch]:
    """Read the next batch in a background thread while the caller trains on the current one."""
    out: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for chunk in chunks:
                if not put(split.get_batch(chunk)):
                    return
            put(_DONE)
        except BaseException as err:  # re-raised in the consumer's thread
            put(err)

    thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
