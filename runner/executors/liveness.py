"""Who is alive: a worker's name says where it runs, so a dead runner on this host is recognised at once.

A worker is named `host:pid:start:index`, where `start` is the process start time in clock ticks since boot
(field 22 of /proc/<pid>/stat). A pid alone is not enough: the kernel reuses pids, and a new process under an old
pid must not keep a dead runner's job. Runners on other hosts cannot be inspected; their jobs go by heartbeat age.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

STALE_AFTER_SECONDS = 300.0  # without a heartbeat, a runner on another host is presumed dead after this long


@dataclass(frozen=True)
class WorkerId:
    host: str
    pid: int
    start: int | None  # None: started where /proc does not exist, or named by an older runner
    index: int

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{'' if self.start is None else self.start}:{self.index}"


def process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot; None when it does not exist (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: count fields after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its parent has not collected it yet
        return None
    return int(fields[19])


def is_alive(pid: int, start: int | None) -> bool:
    """Whether process `pid`, started at `start` (clock ticks since boot), still runs on this host. Without a start
    time (no /proc) the pid alone decides: a reused pid then counts as alive."""
    if start is not None and Path("/proc").is_dir():
        return process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def this_worker(index: int) -> WorkerId:
    return WorkerId(socket.gethostname(), os.getpid(), process_start(os.getpid()), index)


def parse_worker(name: str | None) -> WorkerId | None:
    """The WorkerId behind a stored worker name; None for names this runner cannot read."""
    parts = (name or "").split(":")
    try:
        if len(parts) == 4:
            host, pid, start, index = parts
            return WorkerId(host, int(pid), int(start) if start else None, int(index))
        if len(parts) == 3:  # host:pid:index, written before start times were recorded
            return WorkerId(parts[0], int(parts[1]), None, int(parts[2]))
    except ValueError:
        return None
    return None


def alive_here(name: str | None) -> bool | None:
    """True/False when the worker ran on this host and its liveness can be known; None when it cannot."""
    worker = parse_worker(name)
    if worker is None or worker.host != socket.gethostname() or worker.start is None:
        return None
    if not Path("/proc").is_dir():
        return None
    return process_start(worker.pid) == worker.start


def describe(name: str | None, heartbeat_age: float | None, stale_after: float) -> str:
    """What is known of a running job's worker, for people: alive, gone, or how long since its heartbeat."""
    here = alive_here(name)
    if here is True:
        return "alive (its process runs on this host)"
    if here is False:
        return "dead (its process on this host is gone; the next run takes the job over)"
    if heartbeat_age is None:
        return "unknown (no heartbeat yet)"
    if heartbeat_age > stale_after:
        return f"presumed dead (no heartbeat for {heartbeat_age:.0f} s; the next run takes the job over)"
    return f"presumed alive (heartbeat {heartbeat_age:.0f} s ago, from another host)"
