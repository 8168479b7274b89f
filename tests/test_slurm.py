"""Slurm for real: a one-node cluster on localhost (tests/slurm_cluster.py), a PostgreSQL server
(tests/pg_server.py), job arrays submitted through `python -m runner --executor slurm`, and preemption by Slurm's
warning signal. `nox -s slurm` runs these (it installs slurm-wlm and munge); they are skipped elsewhere.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from tests import slurm_cluster
from tests.test_db_postgres import db_url, server_url  # noqa: F401  fixtures: a fresh database per test
from tests.test_e2e import RESUMABLE, ROOT, TINY, write

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(bool(slurm_cluster.missing_binaries()) or os.geteuid() != 0,
                       reason="needs root and slurm-wlm + munge (nox -s slurm installs them)"),
]
# One job, long enough to be signalled twice mid-epoch; a checkpoint after every batch.
PREEMPTED = (RESUMABLE.replace('name = "resume"', 'name = "preempted"').replace("train_size = 96", "train_size = 192")
             .replace("epochs = 3", "epochs = 5"))
SLURM = ("--executor", "slurm", "--cpus-per-task", "1", "--mem-gb", "1", "--time-min", "20")


@pytest.fixture(scope="module")
def cluster():
    started = time.monotonic()
    with slurm_cluster.running_cluster() as env:
        print(f"\n[slurm] cluster up in {time.monotonic() - started:.1f} s")
        yield env


def runner(*args: str, env: dict[str, str], wait: bool = True):
    # One thread everywhere: the reference run and the Slurm tasks then add floats in the same order.
    full_env = {**os.environ, **env, "CI": "true", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "runner", *args]
    if wait:
        return subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def rows(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql))]
    finally:
        engine.dispose()


def final_metrics(url: str) -> dict[str, float]:
    return dict(rows(url, "select name, value from final_metrics where name like 'test_%' or name like 'valid_%'"))


def test_a_two_task_array_runs_every_job_once(cluster, db_url, tmp_path):  # noqa: F811
    spec, root = write(tmp_path, TINY), tmp_path / "runs"
    started = time.monotonic()
    done = runner(str(spec), "--root", str(root), "--db", db_url, *SLURM, "--workers", "2", "--wait",
                  "train.epochs=1", env=cluster)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    array = re.search(r"Submitted Slurm job array (\d+) \(2 tasks\)", done.stdout).group(1)
    assert f"scancel {array}" in done.stdout and "All jobs done" in done.stdout
    jobs = rows(db_url, "select status, attempts, worker, slurm_job_id, slurm_array_task_id, slurm_node from jobs")
    assert [(s, a) for s, a, *_ in jobs] == [("done", 1)] * 4  # every job once: no duplicates, none lost
    assert {(j, n) for *_, j, _, n in jobs} == {(array, "localhost")}
    assert {t for *_, t, _ in jobs} <= {0, 1}
    workers = {w for _, _, w, *_ in jobs}
    print(f"[slurm] array {array}: 4 jobs, {len(workers)} workers, "
          f"{sum(a for _, a, *_ in jobs) - 4} duplicate runs, {took:.1f} s from submit to all done")
    assert (root / "slurm" / f"{array}_0_0_log.out").exists()
    shown = runner("show", "1", "--db", db_url, env=cluster)
    assert f"slurm: job {array}, array task" in shown.stdout and "node localhost" in shown.stdout


def wait_until(what: str, predicate, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.2)
    return value


def job_state(url: str) -> tuple:
    try:
        found = rows(url, "select status, attempts, slurm_job_id, slurm_array_task_id, "
                          "(select count(distinct epoch) from epoch_metrics) from jobs")
    except ProgrammingError:  # the submitter has not created the tables yet
        found = []
    return found[0] if found else ("none", 0, None, None, 0)


def restarts(array_task: str, env: dict[str, str]) -> int:
    shown = subprocess.run(["scontrol", "show", "job", array_task], env={**os.environ, **env},
                           capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"Restarts=(\d+)", shown)
    return int(found.group(1)) if found else 0


def test_preempted_twice_requeues_resumes_and_matches_an_uninterrupted_run(cluster, db_url, tmp_path):  # noqa: F811
    spec = write(tmp_path, PREEMPTED)
    reference = runner(str(spec), "--root", str(tmp_path / "reference"), env={})
    assert reference.returncode == 0, reference.stdout + reference.stderr
    expected = final_metrics(f"sqlite:///{tmp_path / 'reference' / 'results.db'}")

    t0 = time.monotonic()
    timeline = []

    def mark(event: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f} s  {event}")

    waiting = runner(str(spec), "--root", str(tmp_path / "runs"), "--db", db_url, *SLURM, "--wait", env=cluster,
                     wait=False)
    mark("submitted (--wait)")
    for attempt in (1, 2):
        status, attempts, array, task, epochs = wait_until(
            f"attempt {attempt} mid-training", lambda: (s := job_state(db_url))[0] == "running"
            and s[1] == attempt and s[4] >= attempt and s)
        target = array if task is None else f"{array}_{task}"  # one task goes as a plain job, not an array
        mark(f"attempt {attempt} running, {epochs} epochs recorded: scancel --signal=USR2 {target}")
        subprocess.run(["scancel", "--signal=USR2", target], env={**os.environ, **cluster}, check=True, timeout=30)
        wait_until("job given back", lambda: job_state(db_url)[0] == "interrupted")
        mark("job checkpointed and given back (interrupted)")
        wait_until("task requeued", lambda: restarts(target, cluster) == attempt)
        mark(f"task requeued (Restarts={attempt})")
    wait_until("resumed", lambda: job_state(db_url)[:2] == ("running", 3))
    mark("resumed by the requeued task (attempt 3)")
    out, _ = waiting.communicate(timeout=600)
    mark(f"array ended; the --wait submitter exited {waiting.returncode}")
    print("\n[slurm] preemption timeline:\n" + "\n".join(timeline))
    assert waiting.returncode == 0, out
    assert job_state(db_url)[:2] == ("done", 3)
    assert final_metrics(db_url) == expected
    assert "requeueing Slurm task" in (tmp_path / "runs" / "slurm" / f"{array}_0_log.out").read_text()


def test_a_submission_slurm_refuses_is_bad_input_with_its_reason(cluster, db_url, tmp_path):  # noqa: F811
    done = runner(str(write(tmp_path, TINY)), "--root", str(tmp_path / "runs"), "--db", db_url, *SLURM,
                  "--partition", "nosuch", env=cluster)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "sbatch refused the array" in done.stderr and "partition" in done.stderr.lower()
