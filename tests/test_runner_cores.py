"""Runners on one host divide its cores: each worker process enters a host-wide registry of live workers and takes
max(1, cores // live) torch threads at each job's start (runner/executors/registry.py)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runner.executors import liveness, registry
from runner.store import Database
from runner.training.device import threads_per_worker, usable_cores

ROOT = Path(__file__).resolve().parents[1]

# Registers itself, says so, then on a line from stdin prints what it counts and the threads it would take.
CHILD = """
import sys, torch
from runner.executors import registry
from runner.training.device import share_cores
entry = registry.register(1)
print("registered", entry is not None, flush=True)
sys.stdin.readline()
live = registry.live_workers()
print("live", live, "threads", share_cores(live, torch.get_num_threads()), flush=True)
sys.stdin.readline()
registry.unregister(entry)
"""


@pytest.fixture
def shared(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "registry"
    monkeypatch.setenv(registry.REGISTRY_ENV, str(folder))
    return folder


def child(folder: Path) -> subprocess.Popen:
    env = {**os.environ, registry.REGISTRY_ENV: str(folder)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().split() == ["registered", "True"]
    return proc


def test_two_workers_in_separate_processes_see_each_other_and_take_half_the_cores(shared):
    other = child(shared)
    try:
        mine = registry.register(0)
        assert mine is not None and len(list(shared.glob("*.json"))) == 2
        assert registry.live_workers() == 2
        other.stdin.write("\n")
        other.stdin.flush()
        _, live, _, threads = other.stdout.readline().split()
        assert int(live) == 2 and int(threads) == threads_per_worker(2) == max(1, usable_cores() // 2)
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(timeout=60) == 0
        assert registry.live_workers() == 1  # the other one left its entry behind it
        registry.unregister(mine)
        assert list(shared.iterdir()) == []
    finally:
        other.kill()


def test_dead_workers_and_reused_pids_are_not_counted_and_their_entries_go(shared):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    start = liveness.process_start(dead.pid)
    dead.wait()
    shared.mkdir()
    me = os.getpid()
    (shared / f"{dead.pid}-{start}.json").write_text(json.dumps({"pid": dead.pid, "start": start, "cpus": None}))
    # Our own pid with another start time: a process that had this pid before us.
    reused = liveness.process_start(me) - 1
    (shared / f"{me}-{reused}.json").write_text(json.dumps({"pid": me, "start": reused, "cpus": None}))
    (shared / f".{dead.pid}-x.tmp").write_text("{")  # a dead writer's half-written temp file
    assert registry.live_workers() == 1
    assert list(shared.iterdir()) == []


def test_a_live_worker_on_other_cpus_does_not_share_ours(shared):
    other = child(shared)
    try:
        entry = shared / next(p.name for p in shared.glob("*.json"))
        record = json.loads(entry.read_text())
        entry.write_text(json.dumps({**record, "cpus": [max(os.sched_getaffinity(0)) + 1]}))  # its own cpuset
        assert registry.live_workers() == 1
    finally:
        other.kill()
        other.wait()


def test_a_registry_that_cannot_be_written_leaves_the_worker_alone_never_failing(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(registry.REGISTRY_ENV, str(blocker / "registry"))
    assert registry.register(0) is None
    assert registry.live_workers() == 1
    registry.unregister(None)


FOUR_JOBS = """
[experiment]
name = "cores"
seeds = [0, 1, 2, 3]
[data]
train_size = 512
valid_size = 32
test_size = 32
[train]
epochs = 1
batch_size = 16
[eval]
rotation_angles = [0, 90]
rotation_samples = 16
[[model]]
family = "cnn"
width = 8
depth = 2
"""


def test_a_runner_started_beside_a_live_one_takes_half_the_cores(tmp_path):
    # A job keeps the share it started with (its arithmetic must not change mid-job), so the runner that starts
    # while another is registered is the one whose every job runs on half the cores.
    spec, root = tmp_path / "spec.toml", tmp_path / "runs"
    spec.write_text(FOUR_JOBS)
    root.mkdir()
    # The database first, so neither runner's start spends time creating it (tests/test_db.py covers runners
    # creating one at the same instant).
    Database(f"sqlite:///{root / 'results.db'}").engine.dispose()
    folder = tmp_path / "registry"
    env = {**os.environ, "CI": "true", "PYTHONWARNINGS": "ignore", registry.REGISTRY_ENV: str(folder)}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "runner", str(spec), "--root", str(root)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start()
    deadline = time.monotonic() + 120
    while not (folder.is_dir() and any(folder.iterdir())):
        assert first.poll() is None and time.monotonic() < deadline, "the first runner never registered"
        time.sleep(0.05)
    second = start()
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert sorted(p.returncode for p in (first, second)) in ([0, 0], [0, 3]), outputs
    threads = [re.findall(r"worker 0 on cpu \((\d+) CPU threads\)", out) for out in outputs]
    assert all(len(t) <= 1 for t in threads), outputs
    if threads[1]:  # the second runner ran at least one job: all of them on its half
        assert int(threads[1][0]) == threads_per_worker(2), outputs
    assert threads[0] and int(threads[0][0]) <= torch.get_num_threads(), outputs
    assert list(folder.iterdir()) == []  # each runner took its entry away
