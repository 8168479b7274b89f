"""A throwaway one-node Slurm cluster for tests: munged, slurmctld and slurmd on localhost, all state in a temporary
folder, no cgroups and no accounting (so `sacct` knows nothing: use squeue and scontrol).

    with running_cluster() as env:   # {"SLURM_CONF": ...}: pass it to every Slurm command and submitter
        ...

Needs Debian's slurm-wlm and munge (`nox -s slurm` installs them) and root (slurmd runs jobs as their owner).
Every wait is bounded; a daemon that does not come up raises with the end of its log.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NODE = "localhost"
DAEMONS = ("munged", "slurmctld", "slurmd")

CONF = """\
ClusterName=runnertest
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it may start again (120 s by default).
AuthInfo=socket={folder}/munge.sock,cred_expire=5
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ReturnToService=2
KillWait=10
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class ClusterDown(RuntimeError):
    """A daemon did not start; the message holds the end of its log."""


def missing_binaries() -> list[str]:
    return [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol")
            if shutil.which(b) is None]


@contextmanager
def running_cluster(timeout: float = 60) -> Iterator[dict[str, str]]:
    folder = Path(tempfile.mkdtemp(prefix="runner-slurm-"))
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    try:
        write_config(folder)
        start(folder, env, timeout)
        yield {"SLURM_CONF": env["SLURM_CONF"]}
    finally:
        stop(folder, env)
        shutil.rmtree(folder, ignore_errors=True)


def write_config(folder: Path) -> None:
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    (folder / "slurm.conf").write_text(CONF.format(
        node=NODE, folder=folder, ctld_port=_free_port(), d_port=_free_port(), cpus=os.cpu_count() or 1,
        memory_mb=_memory_mb()))


def start(folder: Path, env: dict[str, str], timeout: float) -> None:
    _daemon(["munged", "--force", f"--socket={folder}/munge.sock", f"--key-file={folder}/munge.key",
             f"--log-file={folder}/munged.log", f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/seed"],
            folder, env, "munged.log")
    _daemon(["slurmctld"], folder, env, "slurmctld.log")
    _daemon(["slurmd", "-N", NODE], folder, env, "slurmd.log")
    deadline = time.monotonic() + timeout
    while "idle" not in _run(["sinfo", "-h", "-N", "-o", "%T"], env):
        if time.monotonic() > deadline:
            raise ClusterDown(f"node {NODE} not idle after {timeout:.0f} s:\n" + _tails(folder))
        time.sleep(0.3)


def stop(folder: Path, env: dict[str, str]) -> None:
    """Cancel every job, then stop the daemons by their pid files (only the processes this cluster started)."""
    if (folder / "slurmctld.pid").exists():
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True, timeout=30)
        time.sleep(1)
    for name in reversed(DAEMONS):
        pid_file = folder / f"{name}.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        _kill_and_wait(pid)


def _kill_and_wait(pid: int, grace: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def _daemon(command: list[str], folder: Path, env: dict[str, str], log: str) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise ClusterDown(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}\n"
                          + _tails(folder, (log,)))


def _run(command: list[str], env: dict[str, str]) -> str:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30).stdout


def _tails(folder: Path, logs: tuple[str, ...] = ("munged.log", "slurmctld.log", "slurmd.log")) -> str:
    parts = []
    for log in logs:
        path = folder / log
        text = path.read_text(errors="replace")[-1500:] if path.exists() else "(no log)"
        parts.append(f"--- {log}\n{text}")
    return "\n".join(parts)


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.8)
    return 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
