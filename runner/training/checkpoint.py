"""Checkpoints: one dict per job, written atomically and loaded safely.

Writing goes to a temporary file in the same folder, is fsynced, then renamed over the old checkpoint: a crash at
any point leaves either the old or the new checkpoint whole, never half of one. Loading uses
`torch.load(weights_only=True)`, which cannot run code hidden in a file.

A write that fails for lack of space raises `DiskFull` naming the folder and the bytes it needed: the runner then
gives its job back instead of failing it (runner/faults.py, whose space_for names the fault). The state is
serialised in memory first, so the only thing that can meet a full disk is a plain file write, whose errno says so
(torch.save straight into a file reports ENOSPC as an opaque "unexpected pos" RuntimeError).
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from runner.faults import human_bytes, space_for  # noqa: F401  human_bytes: callers read it here too

FILENAME = "state.pt"


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
