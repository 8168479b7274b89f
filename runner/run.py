"""One `python -m runner SPEC`: check inputs, sync the jobs into the database, run what is left, summarise.

Nothing touches the database or the disk until the spec and every data source it names have been checked.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runner import execute
from runner.cluster import ClusterProfile
from runner.data import check_source
from runner.db import Database
from runner.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STILL_RUNNING
from runner.grid import Job
from runner.running_view import running_lines, running_rows
from runner.spec import Spec

@dataclass(frozen=True)
class RunRequest:
    spec: Spec
    jobs: tuple[Job, ...]
    root: Path
    db_url: str
    workers: int = 1
    retry_failed: bool = False
    force: bool = False
    stale_after: float = 300.0
    dry_run: bool = False
    device: str = "auto"
    cluster: ClusterProfile | None = None  # set: submit a Slurm job array instead of running here
    wait: bool = False  # with `cluster`: follow the array until it ends


def run_spec(request: RunRequest, console: Console) -> int:
    check_sources(request)
    if request.dry_run:
        console.print(job_table(request.jobs, title=f"{request.spec.name}: {len(request.jobs)} jobs (dry run)"))
        return EXIT_OK
    db = Database(request.db_url)
    experiment_id, added = db.sync_experiment(
        request.spec.name, request.spec.task, request.spec.path, request.spec.text,
        [(job.key, job.label, job.config.to_dict()) for job in request.jobs],
    )
    keys = [job.key for job in request.jobs]
    requeue(db, experiment_id, keys, request)
    before = {row.key: row.status for row in db.jobs(experiment_id, keys)}
    todo = [k for k in keys if before[k] != "done"]
    console.print(f"{request.spec.name}: {len(keys) - len(todo)} of {len(keys)} jobs already done"
                  + (f", {added} new" if added else "") + f"; results in {db.url}")
    if not todo:
        return EXIT_OK
    options = execute.WorkerOptions(db_url=request.db_url, root=request.root, experiment_id=experiment_id,
                                    keys=tuple(keys), stale_after=request.stale_after, device=request.device)
    if request.cluster is not None:
        return on_slurm(request, options, db, keys, len(todo), console)
    counts = execute.run_jobs(options, request.workers, total=len(todo))
    return summarise(db, experiment_id, keys, counts, console)


def on_slurm(request: RunRequest, options: execute.WorkerOptions, db: Database, keys: list[str], todo: int,
             console: Console) -> int:
    from runner.executors import slurm

    profile = replace(request.cluster, workers=min(request.cluster.workers, todo))  # no task without a job
    submission = slurm.submit(slurm.absolute(options), profile, request.spec.name)
    console.print(slurm.how_to_follow(submission, request.db_url))
    if not request.wait:
        return EXIT_OK
    try:
        slurm.follow(submission, db, options.experiment_id, keys, console)
    except KeyboardInterrupt:
        console.print(f"Stopped following; the array goes on (scancel {submission.job_id} cancels it).")
        return EXIT_INTERRUPTED
    return summarise(db, options.experiment_id, keys, {}, console)


def check_sources(request: RunRequest) -> None:
    """Every distinct data source of the spec, checked before anything is written (DataError on a problem)."""
    seen = set()
    for job in request.jobs:
        data = job.config.data
        if data not in seen:
            seen.add(data)
            check_source(request.spec.task, data)


def requeue(db: Database, experiment_id: int, keys: list[str], request: RunRequest) -> None:
    if request.force:
        db.requeue(experiment_id, keys, ("done", "failed", "interrupted"))
        execute.forget_checkpoints(request.root, keys)
    elif request.retry_failed:
        db.requeue(experiment_id, keys, ("failed",))


def summarise(db: Database, experiment_id: int, keys: list[str], counts: dict[str, int], console: Console) -> int:
    rows = db.jobs(experiment_id, keys)
    table = Table(title="jobs", show_lines=False)
    for column in ("job", "label", "status", "note"):
        table.add_column(column)
    for row in rows:
        note = (row.error or "")[:80] if row.status != "done" else ""
        table.add_row(str(row.job_id), row.label, row.status, note)
    console.print(table)
    statuses = [row.status for row in rows]
    if counts.get("interrupted") or counts.get("stopped"):
        console.print("Interrupted: rerun the same command to resume from the last checkpoints.")
        return EXIT_INTERRUPTED
    if "failed" in statuses:
        console.print("Some jobs failed: `python -m runner show JOB` prints the traceback; "
                      "rerun with --retry-failed after fixing the cause.")
        return EXIT_FAILED
    held = running_rows(db, experiment_id)
    if held:
        console.print(f"{len(held)} jobs are still running with other runners, so this experiment is not "
                      "finished:\n" + running_lines(held) + "\n`python -m runner status` follows them; rerunning "
                      "this spec takes over a job whose runner has died.")
        return EXIT_STILL_RUNNING
    left = statuses.count("queued") + statuses.count("interrupted")
    if left:
        console.print(f"{left} jobs were given back while this run ended; rerun the same command to run them.")
        return EXIT_INTERRUPTED
    console.print("All jobs done. Next: python -m runner report")
    return EXIT_OK


def job_table(jobs, title: str) -> Table:
    table = Table(title=title)
    for column in ("key", "label", "family", "group", "seed", "config"):
        table.add_column(column)
    for job in jobs:
        c = job.config
        compact = json.dumps({"lr": c.train.lr, "epochs": c.train.epochs, "width": c.model.width,
                              "augment": c.augment.geometric, "fraction": c.data.fraction})
        table.add_row(job.key, job.label, c.model.family, c.model.group, str(c.seed), compact)
    return table
