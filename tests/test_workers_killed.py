"""`--workers N` survives a worker process killed mid-job (what the OOM killer does): its job is taken over and
resumed, a replacement worker starts (a bounded number of times), and the command ends with every job done."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import cli

ROOT = Path(__file__).resolve().parents[1]
# Two jobs for two workers, three short epochs: the killed job resumes from its epoch-1 checkpoint.
SPEC = """
[experiment]
name = "killed"
seeds = [3, 4]
[data]
train_size = 128
valid_size = 32
test_size = 32
image_size = 48
[train]
epochs = 3
batch_size = 8
[augment]
geometric = "d4"
[eval]
invariance = false
rotation_angles = [0, 90]
rotation_samples = 16
[[model]]
family = "cnn"
width = 4
depth = 2
"""
WAIT = 240  # seconds; generous for a loaded 2-core machine, and every wait says what it waited for


def query(root: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(root / "results.db", timeout=30) as con:
        return con.execute(sql).fetchall()


def metrics(root: Path) -> dict[tuple[str, str], float]:
    rows = query(root, "select j.key, f.name, f.value from final_metrics f join jobs j using (job_id) "
                       "where f.name like 'test_%' or f.name like 'valid_%'")
    return {(key, name): value for key, name, value in rows}


def write_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    return spec


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[tuple[str, str], float]:
    """The same two jobs with two workers, undisturbed (the same threads per worker as the runs below)."""
    tmp = tmp_path_factory.mktemp("reference")
    assert cli.main([str(write_spec(tmp)), "--root", str(tmp / "runs"), "--workers", "2"]) == 0
    return metrics(tmp / "runs")


def worker_mid_job(root: Path) -> int | None:
    """The pid of a worker whose running job has recorded an epoch (so it has a checkpoint to resume from)."""
    try:
        rows = query(root, "select worker from jobs j where status = 'running' and exists "
                           "(select 1 from epoch_metrics e where e.job_id = j.job_id)")
    except sqlite3.OperationalError:  # the database or its tables do not exist yet
        return None
    return int(rows[0][0].split(":")[1]) if rows else None


def wait_for_victim(root: Path, proc: subprocess.Popen, timeout: float = WAIT) -> int:
    deadline = time.monotonic() + timeout
    while (pid := worker_mid_job(root)) is None:
        assert proc.poll() is None, f"the runner ended before any job had recorded an epoch:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"no job recorded an epoch within {timeout:.0f} s"
        time.sleep(0.05)
    assert pid != proc.pid
    return pid


def run_killing_one_worker(command: list[str], root: Path) -> tuple[int, str, int]:
    """Start `command` (a `--workers 2` run), SIGKILL one worker mid-job; (exit code, output, killed pid)."""
    env = {**os.environ, "CI": "true", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the cleanup below reaches the workers
    try:
        victim = wait_for_victim(root, proc)
        os.kill(victim, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`--workers 2` did not end within {WAIT} s of a worker being killed (the parent waits for a "
                        "result the dead worker never sends)")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, victim


def test_a_killed_worker_is_replaced_and_its_job_resumed(tmp_path, reference):
    root = tmp_path / "runs"
    command = [sys.executable, "-m", "runner", str(write_spec(tmp_path)), "--root", str(root), "--workers", "2"]
    code, out, victim = run_killing_one_worker(command, root)
    assert code == 0, out
    assert f"(pid {victim}) died (killed by SIGKILL)" in out and "starting a replacement (1 of 2)" in out, out
    assert sorted(query(root, "select status, attempts from jobs")) == [("done", 1), ("done", 2)]
    assert metrics(root) == reference


# The runner with no restarts allowed: the first death already exhausts the slot.
NO_RESTARTS = ("import sys; from runner import cli; from runner.executors import local; local.RESTARTS_PER_SLOT = 0; "
               "sys.exit(cli.main(sys.argv[1:]))")


def test_a_slot_that_keeps_dying_is_not_restarted_and_the_others_finish(tmp_path, reference):
    root = tmp_path / "runs"
    command = [sys.executable, "-c", NO_RESTARTS, str(write_spec(tmp_path)), "--root", str(root), "--workers", "2"]
    code, out, victim = run_killing_one_worker(command, root)
    assert code == 0, out
    said = [line for line in out.splitlines() if f"(pid {victim}) died" in line]
    assert len(said) == 1 and "not restarting it again" in said[0] and "goes back to the queue" in said[0], out
    assert "starting a replacement" not in out
    # The surviving worker took the dead one's job over before its next claim and finished it.
    assert sorted(query(root, "select status, attempts from jobs")) == [("done", 1), ("done", 2)]
    assert metrics(root) == reference


def test_a_worker_that_meets_an_absent_database_between_jobs_stops_as_a_fault_not_a_death(tmp_path, capsys):
    # Nothing listens on this port: the worker waits out its (short) retry bound while connecting, then reports the
    # fault to the parent instead of dying with a traceback, so the parent neither restarts it nor loses the reason.
    import multiprocessing
    import socket

    from runner.executors.local import _process_main
    from runner.executors.worker import WorkerOptions

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = WorkerOptions(db_url=f"postgresql://nobody@127.0.0.1:{port}/none", root=tmp_path, experiment_id=1,
                            keys=("k",), db_retry_seconds=1.0)
    reader, writer = multiprocessing.Pipe(duplex=False)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _process_main(options, writer)  # in this process: it installs the worker's signal handlers, restored below
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert reader.recv() == {"database_away": 1}
    assert f"127.0.0.1:{port} stayed unreachable for 1 s" in capsys.readouterr().out
