"""Slurm: one job array through submitit; every array task runs the same worker loop as a local worker.

Submitting writes the sbatch script, pickled calls and logs under ROOT/slurm/ and returns at once (or follows the
array with --wait). On Slurm's warning signal (USR2, `signal_delay_s` before the time limit or on preemption) a task
checkpoints at the next batch, gives its job back and, while the experiment has work left (runner.executors.work: for a
study, also the trials and final jobs its planner will still add), requeues itself with `scontrol requeue`. Task
output goes through `logging`, so every line of a task's log has its time. The requeue decision is ours, not
submitit's: submitit counts a job that ran under 10 minutes as timed out, not preempted (its issue 1656), and would
refuse to requeue it.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from sqlalchemy.engine import make_url

from runner.executors.cluster import ClusterError, ClusterProfile
from runner.executors.display import PlainDisplay, worker_log
from runner.executors.work import ENDED, Work, work
from runner.executors.worker import StopFlag, WorkerOptions, run_worker
from runner.store import Database

COMMANDS = ("sbatch", "srun", "squeue", "scontrol", "scancel")


class SubmitError(Exception):
    """Slurm refused the array (sbatch's own message follows)."""


@dataclass(frozen=True)
class Submission:
    job_id: str
    folder: Path
    tasks: int

    def log(self, task: int | str = 0) -> Path:
        # submitit's names: <array>_<task>_<rank>_log.out; one task is submitted as a plain job: <job>_<rank>
        return self.folder / (f"{self.job_id}_{task}_0_log.out" if self.tasks > 1 else f"{self.job_id}_0_log.out")


# ---- checks before anything is written -------------------------------------------------------------------------

def check_ready(profile: ClusterProfile, db_url: str, source: str) -> None:
    """Slurm's commands on PATH, and a database every task can share; ClusterError (exit 2) otherwise."""
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        raise ClusterError(source, [("--executor slurm", f"{', '.join(missing)} not found on PATH: submit from a "
                                     "machine with Slurm's client commands (a login node), or drop --executor")])
    if db_url.startswith("sqlite") and not (profile.local or _only_this_host(slurm_nodes())):
        raise ClusterError(source, [("--db", f"{db_url} is SQLite, which corrupts when tasks on other nodes write "
                                     "it over a network file system; use a PostgreSQL server shared by the nodes "
                                     "(--db postgresql://USER@HOST/DB), or set local = true in the [slurm] profile "
                                     "if every task runs on this host")])


def slurm_nodes() -> set[str]:
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in done.stdout.splitlines() if line.strip()} if done.returncode == 0 else set()


def _only_this_host(nodes: set[str]) -> bool:
    here = {socket.gethostname(), socket.gethostname().split(".")[0], "localhost"}
    return bool(nodes) and nodes <= here


# ---- submitting ------------------------------------------------------------------------------------------------

def submit(options: WorkerOptions, profile: ClusterProfile, name: str) -> Submission:
    """Submit `profile.workers` array tasks, each running `task_main(options)`; returns at once."""
    import submitit

    folder = options.root / "slurm"
    executor = submitit.SlurmExecutor(folder=folder, python=shlex.quote(profile.python))
    executor.update_parameters(**sbatch_parameters(profile, name))
    try:
        jobs = executor.map_array(task_main, [options] * profile.workers)
    except Exception as exc:  # noqa: BLE001 - submitit raises sbatch's failure under several types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise SubmitError(f"sbatch refused the array: {reason}") from None
    return Submission(job_id=jobs[0].job_id.split("_")[0], folder=folder, tasks=profile.workers)


def sbatch_parameters(profile: ClusterProfile, name: str) -> dict:
    """submitit's SlurmExecutor parameters for the profile; `requeue` lets a task put itself back in the queue."""
    params = dict(job_name=f"runner-{name}", time=profile.time_min, cpus_per_task=profile.cpus_per_task,
                  mem=f"{round(profile.mem_gb * 1024)}M", signal_delay_s=profile.signal_delay_s,
                  setup=list(profile.setup), array_parallelism=profile.workers, stderr_to_stdout=True,
                  additional_parameters={"requeue": True, **profile.sbatch_parameters()})
    if profile.partition:
        params["partition"] = profile.partition
    if profile.gpus_per_task:
        params["gpus_per_task"] = profile.gpus_per_task
    return params


def how_to_follow(submission: Submission, db_url: str) -> str:
    db_url = make_url(db_url).render_as_string(hide_password=True)  # logs and terminals keep no password
    return "\n".join([
        f"Submitted Slurm job array {submission.job_id} ({submission.tasks} tasks).",
        f"  logs:    {submission.log('<task>')} (task 0: {submission.log(0)})" if submission.tasks > 1 else
        f"  log:     {submission.log()}",
        f"  follow:  squeue -j {submission.job_id}    python -m runner status --db {db_url}",
        f"           tail -f {submission.log(0)}",
        f"  cancel:  scancel {submission.job_id}   (running jobs checkpoint; rerun the spec to resume)",
    ])


# ---- following -------------------------------------------------------------------------------------------------

def array_states(job_id: str) -> list[str] | None:
    """The states of the array's tasks still known to Slurm (empty once all have ended); None when squeue could not
    tell (a busy or restarting controller times out), so the caller asks again instead of taking it for the end."""
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return [] if "invalid job id" in done.stderr.lower() else None  # invalid: ended and purged
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def still_known(job_id: str, every: float, console: Console, patience: int = 120) -> list[str]:
    """The array's task states; [] only once Slurm has said twice, a poll apart, that none is left, or squeue has
    failed `patience` polls in a row. A failed or empty answer while a task is requeued must not end --wait."""
    failures = empties = 0
    while True:
        states = array_states(job_id)
        if states:
            return states
        failures, empties = (failures + 1, 0) if states is None else (0, empties + 1)
        if empties == 2 or failures == patience:
            return []
        if failures == 1:
            console.print(f"squeue could not say how array {job_id} stands; asking again every {every:g} s")
        time.sleep(every)


def follow(submission: Submission, current: Callable[[], Work], console: Console, every: float = 5.0) -> Work:
    """Print progress while any task of the array is pending or running; return the work left once all have ended.

    `current` is re-read on every poll: a study's jobs appear as its tasks ask the planner for them.
    """
    last = ""
    seen = {job.key: job.status for job in current().jobs}  # a rerun's finished jobs are not news
    while states := still_known(submission.job_id, every, console):
        now = current()
        _print_ended(now, seen, console)
        line = f"array {submission.job_id}: tasks {_tally(states)}; " + _jobs_line(now)
        if line != last:
            console.print(line)
            last = line
        time.sleep(every)
    now = current()
    _print_ended(now, seen, console)
    return now


def _jobs_line(work: Work) -> str:
    jobs = f"jobs {_tally([j.status for j in work.jobs])}" if work.jobs else "no jobs yet"
    return jobs + (f"; {work.to_add} still to add (trials, final evaluations)" if work.to_add else "")


def _print_ended(work: Work, seen: dict[str, str], console: Console) -> None:
    """One line per job that reached an end (done, pruned, failed, given back) since the last poll."""
    for job in work.jobs:
        if job.status in (*ENDED, "failed", "interrupted") and seen.get(job.key) != job.status:
            console.print(f"  {job.label}: {job.status}" + (f" ({job.error[:80]})" if job.error else ""))
        seen[job.key] = job.status


def _tally(items: list[str]) -> str:
    return ", ".join(f"{items.count(x)} {x.lower()}" for x in sorted(set(items)))


# ---- inside an array task --------------------------------------------------------------------------------------

def task_main(options: WorkerOptions) -> dict[str, int]:
    """One array task: the worker loop; on Slurm's warning signal, give the job back and requeue this task if the
    experiment has work left (for a study: what its planner will still add, not only the jobs known at submit)."""
    stop = StopFlag()
    # Installed after submitit's own handlers, so these win: submitit would requeue without checkpointing.
    stop.install((signal.SIGINT, signal.SIGTERM, signal.SIGUSR2))
    log = worker_log()
    log.info(f"Slurm task {_this_task()} on {socket.gethostname()}: worker starts")
    counts = run_worker(options, stop, PlainDisplay(0 if options.spec else len(options.keys)))
    if stop.signum == signal.SIGUSR2 and _work_left(options):
        requeue_this_task()
        counts["requeued"] = 1
    elif stop.signum == signal.SIGUSR2:
        log.info("warned by Slurm; the experiment has no work left, so this task ends without requeueing")
    log.info(f"Slurm task {_this_task()} ends: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return counts


def _work_left(options: WorkerOptions) -> bool:
    return work(Database(options.db_url), options.experiment_id, options.spec, options.keys).left


def _this_task() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "?")


def requeue_this_task() -> None:
    target = _this_task()
    worker_log().info(f"requeueing Slurm task {target} after the warning signal: the experiment has work left")
    subprocess.run(["scontrol", "requeue", target], check=True, timeout=60)


def absolute(options: WorkerOptions) -> WorkerOptions:
    """Tasks may start in another directory: give them absolute paths."""
    url = options.db_url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = f"sqlite:///{Path(url[len('sqlite:///'):]).resolve()}"
    return replace(options, root=options.root.resolve(), db_url=url)
