"""Checkpoints: one dict per job, written atomically and loaded safely.

Writing goes to a temporary file in the same folder, is fsynced, then renamed over the old checkpoint: a crash at
any point leaves either the old or the new checkpoint whole, never half of one. Loading uses
`torch.load(weights_only=True)`, which cannot run code hidden in a file.

A write that fails for lack of space raises `DiskFull` naming the folder and the bytes it needed: the runner then
gives its job back instead of failing it (runner/faults.py). The state is serialised in memory first, so the only
thing that can meet a full disk is a plain file write, whose errno says so (torch.save straight into a file reports
ENOSPC as an opaque "unexpected pos" RuntimeError).
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from runner.faults import DiskFull

FILENAME = "state.pt"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message says which file and what to do."""


def checkpoint_path(root: Path, key: str) -> Path:
    return root / "checkpoints" / key / FILENAME


# ---- writing -----------------------------------------------------------------------------------------------------

def save(path: Path, state: dict[str, Any]) -> None:
    """Atomically replace `path` with `state`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    with space_for(path.parent, len(data)):
        _write_atomic(path, lambda handle: handle.write(data))


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # make the rename itself durable
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def space_for(folder: Path, needed: int | Callable[[], int], at_least: bool = False) -> Iterator[None]:
    """Turn a write under `folder` that runs out of space into DiskFull, saying it needed `needed` bytes (a callable
    when only known at the failure, as for a stream; `at_least`: the figure is a lower bound).

    The caller removes its partial file; this only names the fault, so that the runner can tell a full disk (give
    the job back, rerun later) from a broken job."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE or isinstance(exc, DiskFull):
            raise
        raise no_space(folder, needed() if callable(needed) else needed, at_least) from exc


def no_space(folder: Path, needed: int, at_least: bool = False) -> DiskFull:
    free = _free_bytes(folder)
    shown = f"{'more than ' if at_least else ''}{human_bytes(needed)}"
    fault = DiskFull(f"no space left in {folder} (needed {shown}, {human_bytes(free)} free); free space, then rerun")
    fault.errno = errno.ENOSPC  # still an ENOSPC to code that checks errno; the message stays one plain line
    return fault


def _free_bytes(folder: Path) -> int:
    for candidate in (folder, *folder.parents):  # the folder itself may not exist yet
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return 0


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.0f} {unit}" if n >= 10 * size else f"{n / size:.1f} {unit}"
    return f"{n} B"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- reading -----------------------------------------------------------------------------------------------------

def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none. Stray temporary files from a crash are removed."""
    for stray in path.parent.glob(".state-*.tmp") if path.parent.exists() else ():
        stray.unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        # torch's own message is long and suggests weights_only=False, which would run code from the file.
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {reason}). Delete it to restart this job "
            "from scratch, or run with --force."
        ) from exc
