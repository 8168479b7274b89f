"""Faults that are nobody's job's fault: the database away, a disk full. They stop the runner, never fail a job.

A job that meets one is given back (interrupted, resumable from its last good checkpoint) and the runner stops with
its own exit code (runner/exit_codes.py), so a plain rerun continues once the cause is gone.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DatabaseAway(Exception):
    """The database could not be reached for longer than the retry bound; the message names the server."""


class DiskFull(OSError):
    """A write failed for lack of space; the message names the folder and the space it needed."""


# ---- naming a full disk (checkpoints, data caches) -------------------------------------------------------------

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
