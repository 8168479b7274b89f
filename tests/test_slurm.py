"""Slurm for real: a one-node cluster on localhost (tests/slurm_cluster.py), a PostgreSQL server
(tests/pg_server.py), job arrays submitted through `python -m runner --executor slurm`, preemption by Slurm's
warning signal, and whole studies followed with --wait. `nox -s slurm` runs these (it installs slurm-wlm and
munge); they are skipped elsewhere.
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
# A whole study, small: 3 random trials of one model, then its best configuration with a second seed (seed 0 is
# the search job itself): 4 jobs of a few seconds, each long enough (many batches, a checkpoint after each) to be
# warned mid-trial.
STUDY = """
[experiment]
name = "slurm_study"
seeds = [0]
[data]
train_size = 192
valid_size = 32
test_size = 32
[train]
epochs = 4
batch_size = 8
checkpoint_minutes = 0.0001
[eval]
rotation_angles = [0, 90]
rotation_samples = 16
[search]
sampler = "random"
trials = 3
seed = 0
prune = "none"
[search.space]
"train.lr" = { log = [1e-3, 3e-2] }
[final]
seeds = [0, 1]
[[model]]
family = "cnn"
width = 4
depth = 2
"""
STUDY_JOBS, STUDY_EPOCHS = 4, 4
TIMESTAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "  # how a task's log lines start


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


def study_state(url: str) -> list[tuple]:
    """(label, status, attempts, slurm job, array task, epochs recorded) per job of the study, in job order."""
    try:
        return rows(url, "select label, status, attempts, slurm_job_id, slurm_array_task_id, (select count(distinct "
                         "epoch) from epoch_metrics e where e.job_id = j.job_id) from jobs j order by job_id")
    except ProgrammingError:  # the submitter has not created the tables yet
        return []


def followed(out: str) -> str:
    """What --wait printed while it followed the array: progress lines and one line per job as it ended."""
    return "\n".join(line for line in out.splitlines()
                     if re.match(r"array \d+:|squeue could not|  [^:]+: (done|pruned|failed|interrupted)", line))


def mid_trial(url: str) -> tuple | None:
    """The running job once it has an epoch recorded and another job is done: then the jobs known so far are
    one done and one running, none queued, and the study still has trials and its final job to add."""
    jobs = study_state(url)
    if not any(status == "done" for _, status, *_ in jobs):
        return None
    return next((job for job in jobs if job[1] == "running" and job[5] >= 1), None)


def assert_study_finished_once_each(url: str, out: str, warned: str = "") -> list[tuple]:
    """Every trial and the final job done, each run once (the `warned` job may have been given back and resumed
    once), every epoch recorded, and the run shown job by job as it went."""
    jobs = study_state(url)
    assert [status for _, status, *_ in jobs] == ["done"] * STUDY_JOBS, (jobs, out)
    assert all(attempts == 1 or (label == warned and attempts == 2) for label, _, attempts, *_ in jobs), jobs
    assert [epochs for *_, epochs in jobs] == [STUDY_EPOCHS] * STUDY_JOBS, jobs
    trials = rows(url, "select role, count(*) from trials group by role order by role")
    assert trials == [("final", 1), ("search", 3)]
    assert "study: trials are sampled as it runs" in out and "0 of 0 jobs" not in out
    for label, *_ in jobs:
        assert f"  {label}: done" in out, (label, out)  # each job shown as it ended, not only in the table
    assert re.search(r"array \d+: tasks [^;]+; jobs \d+ done", out), out
    assert out.rstrip().endswith("All jobs done. Next: python -m runner report"), out
    return jobs


def test_a_study_warned_mid_trial_requeues_its_task_and_finishes_under_wait(cluster, db_url, tmp_path):  # noqa: F811
    spec, root = write(tmp_path, STUDY), tmp_path / "runs"
    t0 = time.monotonic()
    timeline = []

    def mark(event: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f} s  {event}")

    waiting = runner(str(spec), "--root", str(root), "--db", db_url, *SLURM, "--workers", "1", "--wait",
                     env=cluster, wait=False)
    mark("submitted (--wait, one task)")
    running = wait_until("a trial mid-training after a finished one", lambda: mid_trial(db_url))
    target = running[3] if running[4] is None else f"{running[3]}_{running[4]}"  # one task is a plain job
    mark(f"{running[0]} running, {running[5]} epochs recorded: scancel --signal=USR2 {target}")
    subprocess.run(["scancel", "--signal=USR2", target], env={**os.environ, **cluster}, check=True, timeout=30)
    wait_until("the task requeued (or --wait gave up)", lambda: restarts(target, cluster) >= 1
               or waiting.poll() is not None)
    mark(f"task requeued (Restarts={restarts(target, cluster)})")
    out, _ = waiting.communicate(timeout=600)
    mark(f"--wait exited {waiting.returncode}")
    print("\n[slurm] study timeline:\n" + "\n".join(timeline) + "\n[slurm] --wait showed:\n" + followed(out))
    assert restarts(target, cluster) == 1, out
    assert waiting.returncode == 0, out
    jobs = assert_study_finished_once_each(db_url, out, warned=running[0])
    print(f"[slurm] study: {len(jobs)} jobs done, 1 requeue, {time.monotonic() - t0:.1f} s from submit to finished")
    log = (root / "slurm" / f"{running[3]}_0_log.out").read_text()
    assert re.search(TIMESTAMP + r"requeueing Slurm task", log, flags=re.M), log[-3000:]
    assert re.search(TIMESTAMP + r"\[1\] cnn #0 s0: started", log, flags=re.M), log[-3000:]


def test_a_study_on_two_tasks_is_followed_until_its_final_job_is_done(cluster, db_url, tmp_path):  # noqa: F811
    spec = write(tmp_path, STUDY)
    started = time.monotonic()
    done = runner(str(spec), "--root", str(tmp_path / "runs"), "--db", db_url, *SLURM, "--workers", "2", "--wait",
                  env=cluster)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Submitted Slurm job array \d+ \(2 tasks\)", done.stdout), done.stdout
    jobs = assert_study_finished_once_each(db_url, done.stdout)
    tasks = {task for *_, task, _ in jobs}
    print("\n[slurm] --wait showed:\n" + followed(done.stdout))
    print(f"[slurm] study on 2 tasks: {len(jobs)} jobs done once each by tasks {sorted(tasks)}, "
          f"{took:.1f} s from submit to finished")
