"""The live workers of this host, so that runners started separately divide its cores as `--workers N` does.

Each worker process (in-process, a `--workers` pool's, a Slurm task's) writes one file into a folder that every
runner of this user on this host shares, `<temp>/equivariant-runner-<uid>/<host>/` (RUNNER_REGISTRY_DIR moves it),
named and holding its pid and start time; at each job's start a worker counts the entries whose process still runs
(runner/executors/liveness.py: pid + start time, so a reused pid is not a live runner) and whose CPUs overlap its
own (Slurm tasks and taskset give separate cores: those do not share), removing dead ones as it goes. The folder is
keyed by hostname because /tmp may be shared by containers whose pids are not this host's.

Everything here is best effort: a registry that cannot be written or read (a read-only or full temp folder) only
loses the division of cores, and must never fail a job, so every error falls back to "this worker alone".
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

from runner.executors import liveness
from runner.training.device import share_cores

REGISTRY_ENV = "RUNNER_REGISTRY_DIR"


class CoreShare:
    """One worker's share of the host's cores, taken at each job's start and kept for the whole job: changing a
    running job's thread count would change its arithmetic in the last bits, and a CPU run's metrics are meant to be
    reproducible. `fewest` is what the worker reports: its share while most shared."""

    def __init__(self, cap: int) -> None:
        self.cap = cap  # the --workers share, or torch's default: never above it
        self.fewest: int | None = None

    def take(self) -> int:
        threads = share_cores(live_workers(), self.cap)
        self.fewest = threads if self.fewest is None else min(self.fewest, threads)
        return threads


def folder() -> Path:
    override = os.environ.get(REGISTRY_ENV)
    if override:
        return Path(override)
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"equivariant-runner-{user}" / socket.gethostname()


def _cpus() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity, every worker shares every core
        return None


def _me() -> tuple[int, int | None]:
    pid = os.getpid()
    return pid, liveness.process_start(pid)


def _name(pid: int, start: int | None) -> str:
    return f"{pid}-{'' if start is None else start}.json"


def register(index: int = 0) -> Path | None:
    """Enter this process; returns its entry (None when the registry could not be written)."""
    pid, start = _me()
    entry = {"pid": pid, "start": start, "worker_index": index, "cpus": _cpus()}
    try:
        where = folder()
        where.mkdir(parents=True, exist_ok=True)
        path = where / _name(pid, start)
        # Temp file + rename: a reader sees a whole entry or none, never half of one.
        fd, temp = tempfile.mkstemp(dir=where, prefix=f".{pid}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(entry, out)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return path
    except OSError:  # best effort (module docstring): this worker then counts as alone
        return None


def unregister(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # best effort: the next count removes it, its process being gone
            pass


def live_workers() -> int:
    """How many workers of this host share this process's cores, itself included (at least 1)."""
    try:
        return _count()
    except Exception:  # noqa: BLE001 - best effort (module docstring): never fail a job over the division of cores
        return 1


def _count() -> int:
    me = _me()
    mine = set(_cpus() or ())
    live = {me}
    try:
        paths = list(folder().iterdir())
    except OSError:
        return 1
    for path in paths:
        try:
            if path.name.startswith("."):  # a writer's temp file: removed when its writer is dead
                pid = int(path.name[1:].split("-", 1)[0])
                if pid != me[0] and not liveness.is_alive(pid, None):
                    path.unlink(missing_ok=True)
                continue
            entry = json.loads(path.read_text())
            pid, start, cpus = int(entry["pid"]), entry.get("start"), entry.get("cpus")
        except (OSError, ValueError, KeyError, TypeError):  # vanished meanwhile, or not an entry of ours
            continue
        if not liveness.is_alive(pid, start):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            continue
        if cpus is None or not mine or mine & set(cpus):
            live.add((pid, start))
    return len(live)
