"""Checkpoints: one dict per job, written atomically and loaded safely.

Writing goes to a temporary file in the same folder, is fsynced, then renamed over the old checkpoint: a crash at
any point leaves either the old or the new checkpoint whole, never half of one. Loading uses
`torch.load(weights_only=True)`, which cannot run code hidden in a file.

A write that fails for lack of space raises `DiskFull` naming the folder and the bytes it needed: the runner then
gives its job back instead of failing it (runner/faults.py, whose space_for names the fault). The state is
serialised in memory first, so the only thing that can meet a full disk is a plain file write, whose errno says so
(torch.save straight into a file reports ENOSPC as an opaque "unexpected pos" RuntimeError).

Each experiment keeps its own checkpoints, `checkpoints/<experiment folder>/<job key>/state.pt`: the job key leaves
the experiment out, so a shared folder let the same configuration in two experiments resume from, export, or (under
--force) delete the other's weights. Roots written before kept `checkpoints/<job key>/state.pt`; `adopt_legacy`
copies those into place and export falls back to them.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from runner.faults import human_bytes, space_for  # noqa: F401  human_bytes: callers read it here too

FILENAME = "state.pt"
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_JOB_KEY = re.compile(r"[0-9a-f]{16}")  # an experiment folder must never look like a legacy job folder


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message says which file and what to do."""


# ---- where -------------------------------------------------------------------------------------------------------

def experiment_folder(name: str) -> str:
    """A folder name for experiment `name`: the name itself when it is a safe lower-case slug, else a slug plus a
    hash of the exact name, so two names never share a folder (not even on a case-insensitive disk)."""
    slug = _UNSAFE.sub("-", name.lower()).strip("-.")[:60] or "experiment"
    if slug == name and not _JOB_KEY.fullmatch(name):
        return slug
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def checkpoint_path(root: Path, experiment: str, key: str) -> Path:
    return root / "checkpoints" / experiment_folder(experiment) / key / FILENAME


def legacy_path(root: Path, key: str) -> Path:
    """Where runners before per-experiment folders kept a job's checkpoint, shared by every experiment."""
    return root / "checkpoints" / key / FILENAME


def existing_path(root: Path, experiment: str, key: str) -> Path:
    """The experiment's checkpoint; the legacy one when only that exists (a root no run has synced since)."""
    path, legacy = checkpoint_path(root, experiment, key), legacy_path(root, key)
    return legacy if not path.is_file() and legacy.is_file() else path


def adopt_legacy(root: Path, experiment: str, keys: list[str]) -> int:
    """Copy each job's legacy checkpoint into the experiment's own folder where it has none; returns how many.

    A copy, not a move: another experiment with the same configuration may own the same legacy file. An existing
    but empty folder (emptied by --force) counts as having one, so a forced restart never picks up old weights."""
    adopted = 0
    for key in keys:
        legacy, path = legacy_path(root, key), checkpoint_path(root, experiment, key)
        if legacy.is_file() and not path.parent.exists():
            try:
                _copy_atomic(legacy, path)
            except BaseException:  # the folder is new: leaving it empty would mean "forced", and lose the resume
                shutil.rmtree(path.parent, ignore_errors=True)
                raise
            adopted += 1
    return adopted


# ---- writing -----------------------------------------------------------------------------------------------------

def save(path: Path, state: dict[str, Any]) -> None:
    """Atomically replace `path` with `state`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    with space_for(path.parent, len(data)):
        _write_atomic(path, lambda handle: handle.write(data))


def _copy_atomic(src: Path, path: Path) -> None:
    with space_for(path.parent, src.stat().st_size), open(src, "rb") as source:
        _write_atomic(path, lambda handle: shutil.copyfileobj(source, handle))


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
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
