"""Who is alive: worker names carry host, pid and process start time; dead local runners lose their jobs at once."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import cli
from runner.executors import liveness
from runner.executors.worker import take_over_dead_here, worker_name
from runner.exit_codes import EXIT_STILL_RUNNING
from runner.store import Database
from tests.test_e2e import TINY, write

CONFIG = {"model": {"family": "cnn", "group": "trivial"}, "seed": 0}
HERE = socket.gethostname()
linux_only = pytest.mark.skipif(not os.path.isdir("/proc"), reason="process start times come from /proc")


@linux_only
def test_an_exited_but_uncollected_process_is_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.05)
        assert liveness.process_start(proc.pid) is None
    finally:
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@linux_only
def test_worker_name_round_trips_and_the_current_process_is_alive():
    name = worker_name(2)
    worker = liveness.parse_worker(name)
    assert (worker.host, worker.pid, worker.index) == (HERE, os.getpid(), 2)
    assert worker.start == liveness.process_start(os.getpid()) and worker.start > 0
    assert liveness.alive_here(name) is True


@linux_only
def test_a_gone_process_and_a_reused_pid_are_dead_other_hosts_unknown():
    me = liveness.this_worker(0)
    gone = liveness.WorkerId(HERE, dead_pid(), 12345, 0)
    assert liveness.alive_here(str(gone)) is False
    reused = liveness.WorkerId(HERE, os.getpid(), me.start + 1, 0)  # same pid, another process's start time
    assert liveness.alive_here(str(reused)) is False
    assert liveness.alive_here(str(liveness.WorkerId("elsewhere", os.getpid(), me.start, 0))) is None
    assert liveness.alive_here(f"{HERE}:{os.getpid()}:0") is None  # an older name without a start time
    assert liveness.parse_worker("not a worker") is None


@linux_only
def test_only_jobs_of_dead_local_runners_are_taken_over(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    keys = ["dead", "alive", "remote"]
    experiment_id, _ = db.sync_experiment("e", "classification", "e.toml", "", [(k, k, CONFIG) for k in keys])
    owners = {"dead": str(liveness.WorkerId(HERE, dead_pid(), 1, 0)), "alive": worker_name(0),
              "remote": str(liveness.WorkerId("elsewhere", 1, 1, 0))}
    for key in keys:
        assert db.claim(experiment_id, [key], owners[key]).key == key
    assert take_over_dead_here(db, experiment_id) == ["dead"]
    assert {j.key: j.status for j in db.jobs(experiment_id)} == {
        "dead": "interrupted", "alive": "running", "remote": "running"}
    assert "no longer exists" in db.jobs(experiment_id, ["dead"])[0].error


@linux_only
def test_a_run_ending_with_jobs_held_by_a_live_runner_exits_3_naming_them(tmp_path, capsys):
    spec, root = write(tmp_path, TINY), tmp_path / "runs"
    assert cli.main([str(spec), "--root", str(root), "--dry-run"]) == 0
    from runner.spec.identity import expand
    from runner.spec import read_spec

    jobs = expand(read_spec(spec, []))
    db = Database(f"sqlite:///{root / 'results.db'}")
    experiment_id, _ = db.sync_experiment("tiny", "classification", str(spec), spec.read_text(),
                                          [(j.key, j.label, j.config.to_dict()) for j in jobs])
    held = jobs[0]
    db.claim(experiment_id, [held.key], worker_name(7))  # this very process: alive
    for job in jobs[1:]:  # the others are done already, so the run has nothing to do but wait for the held one
        db.claim(experiment_id, [job.key], "x:1::0")
        db.finish(db.jobs(experiment_id, [job.key])[0].job_id, "x:1::0", {}, [], {}, 1)
    capsys.readouterr()
    assert cli.main([str(spec), "--root", str(root)]) == EXIT_STILL_RUNNING == 3
    out = capsys.readouterr().out
    assert held.label in out and "still running" in out and "alive (its process runs on this host)" in out
    assert cli.main(["status", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert held.label in out and worker_name(7) in out and "alive" in out
