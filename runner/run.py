"""One `python -m runner SPEC`: check inputs, sync the jobs into the database, run what is left, summarise.

Nothing touches the database or the disk until the spec and every data source it names have been checked.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runner.data import check_source
from runner.executors import local, worker
from runner.executors.cluster import ClusterProfile
from runner.executors.liveness import STALE_AFTER_SECONDS
from runner.executors.running_view import running_lines, running_rows
from runner.executors.work import Work, work
from runner.exit_codes import (
    EXIT_DATABASE_AWAY,
    EXIT_DISK_FULL,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STILL_RUNNING,
)
from runner.spec import Spec
from runner.spec.identity import Job
from runner.store import FINISHED, Database


@dataclass(frozen=True)
class RunRequest:
    spec: Spec
    jobs: tuple[Job, ...]
    root: Path
    db_url: str
    workers: int = 1
    retry_failed: bool = False
    force: bool = False
    stale_after: float = STALE_AFTER_SECONDS
    db_retry_seconds: float = 600.0  # a database outage shorter than this is waited out; longer stops with exit 4
    dry_run: bool = False
    calibrate: bool = False  # with dry_run: measure this device's rates for the cost estimate (ROOT/calibration.json)
    device: str = "auto"
    cluster: ClusterProfile | None = None  # set: submit a Slurm job array instead of running here
    wait: bool = False  # with `cluster`: follow the array until it ends


def run_spec(request: RunRequest, console: Console) -> int:
    check_sources(request)
    if request.dry_run:
        if request.jobs or not request.spec.searched:
            console.print(job_table(request.jobs, title=f"{request.spec.name}: {len(request.jobs)} jobs (dry run)"))
        if request.spec.searched:
            console.print(study_table(request.spec))
        print_cost(request, console)
        return EXIT_OK
    db = Database(request.db_url, retry_seconds=request.db_retry_seconds)  # unreachable now: bad input, at once
    experiment_id, added = db.sync_experiment(
        request.spec.name, request.spec.task, request.spec.path, request.spec.text,
        [(job.key, job.label, job.config.to_dict()) for job in request.jobs],
    )
    keys = spec_keys(db, experiment_id, request)
    worker.adopt_legacy_checkpoints(request.root, request.spec.name, keys)
    requeue(db, experiment_id, keys, request)
    before = {row.key: row.status for row in db.jobs(experiment_id, keys)}
    ended = FINISHED if request.spec.searched else ("done",)  # a pruned trial is as final as a done one
    todo = [k for k in keys if before[k] not in ended]
    console.print(done_line(request, keys, todo, added, db.url))
    if not todo and not request.spec.searched:
        return EXIT_OK
    options = worker.WorkerOptions(db_url=request.db_url, root=request.root, experiment_id=experiment_id,
                                    keys=tuple(keys), stale_after=request.stale_after, device=request.device,
                                    db_retry_seconds=request.db_retry_seconds,
                                    spec=request.spec if request.spec.searched else None)
    total = max(len(todo), study_size(request.spec))  # a study adds its jobs as it goes
    if request.cluster is not None:
        return on_slurm(request, options, db, total, console)
    counts = local.run_jobs(options, request.workers, total=total)
    if (code := fault_exit(counts, console)) is not None:
        return code
    return summarise(db, experiment_id, request, counts, console)


def print_cost(request: RunRequest, console: Console) -> None:
    """Images per model and, where this device has measured rates, expected device-hours (runner.cost)."""
    from runner.cost import estimate
    from runner.training.device import pick_device

    rows, device = estimate.estimate(request.spec, request.root, pick_device(0, request.device), request.calibrate,
                                     console.print)
    console.print(estimate.table(rows, request.spec.name))
    console.print(estimate.summary(rows, device, request.spec.path, request.root))


def fault_exit(counts: dict[str, int], console: Console) -> int | None:
    """The exit code of a run that a full disk or an absent database stopped (the job was given back, never failed);
    None otherwise. The summary is skipped: it would need the database or the disk that just failed."""
    if counts.get("database_away"):
        console.print("Stopped: the database stayed away (see above). No job failed; once the server is back, rerun "
                      "the same command to continue from the last checkpoints.")
        return EXIT_DATABASE_AWAY
    if counts.get("disk_full"):
        console.print("Stopped: a disk is full (see above). The job was given back with its last good checkpoint; free "
                      "space, then rerun the same command to continue.")
        return EXIT_DISK_FULL
    return None


def spec_keys(db: Database, experiment_id: int, request: RunRequest) -> list[str]:
    """The grid's jobs, and for a study also every trial and final job it has added so far."""
    return list(spec_work(db, experiment_id, request).keys)


def spec_work(db: Database, experiment_id: int, request: RunRequest) -> Work:
    """The spec's jobs now and, for a study, what its planner will still add (the rule tasks requeue by)."""
    spec = request.spec if request.spec.searched else None
    return work(db, experiment_id, spec, [job.key for job in request.jobs])


def done_line(request: RunRequest, keys: list[str], todo: list[str], added: int, url: str) -> str:
    """The run's first line. A fresh study has no job yet: its planner samples trials as workers ask."""
    if request.spec.searched and not keys:
        return f"{request.spec.name}: study: trials are sampled as it runs; results in {url}"
    return (f"{request.spec.name}: {len(keys) - len(todo)} of {len(keys)} jobs already done"
            + (f", {added} new" if added else "") + f"; results in {url}")


def study_size(spec: Spec) -> int:
    """Jobs a study will have at most (for progress): trials x seeds per stream, plus the final jobs."""
    from runner.search.plan import final_models
    from runner.search.streams import streams

    if not spec.searched:
        return 0
    searched = sum(s.search.trials for s in streams(spec)) * len(spec.seeds)
    return searched + (len(spec.final.seeds) * final_models(spec) if spec.final else 0)


def study_table(spec: Spec) -> Table:
    from runner.search.streams import streams

    table = Table(title=f"{spec.name}: study plan (trials are sampled while it runs)")
    for column in ("stream", "sampler", "trials x seeds", "pruning", "metric", "space"):
        table.add_column(column)
    for s in streams(spec):
        p = s.search
        pruning = "none" if p.prune == "none" else f"{p.prune} (min {p.min_epochs} epochs, factor {p.reduction_factor})"
        table.add_row(s.key, p.sampler, f"{p.trials} x {len(spec.seeds)}", pruning, p.metric,
                      "; ".join(f"{k} {d.describe()}" for k, d in p.space))
    if spec.final:
        f = spec.final
        table.add_row("final", f"best by {f.select}", f"1 x {len(f.seeds)}", "none", f.select,
                      f"per {', '.join(f.per)}" + (f", {f.epochs} epochs" if f.epochs else ""))
    return table


def on_slurm(request: RunRequest, options: worker.WorkerOptions, db: Database, todo: int, console: Console) -> int:
    from runner.executors import slurm

    profile = replace(request.cluster, workers=min(request.cluster.workers, todo))  # no task without a job
    submission = slurm.submit(slurm.absolute(options), profile, request.spec.name)
    console.print(slurm.how_to_follow(submission, request.db_url))
    if not request.wait:
        return EXIT_OK
    try:
        slurm.follow(submission, lambda: spec_work(db, options.experiment_id, request), console)
    except KeyboardInterrupt:
        console.print(f"Stopped following; the array goes on (scancel {submission.job_id} cancels it).")
        return EXIT_INTERRUPTED
    return summarise(db, options.experiment_id, request, {}, console)


def check_sources(request: RunRequest) -> None:
    """Every distinct data source of the spec, checked before anything is written (DataError on a problem)."""
    seen = set()
    for data in [job.config.data for job in request.jobs] + study_sources(request.spec):
        if data not in seen:
            seen.add(data)
            check_source(request.spec.task, data)


def study_sources(spec: Spec) -> list:
    """The data of each search stream (searched data keys at the spec's values; their bounds are checked already)."""
    if not spec.searched:
        return []
    from runner.search.streams import streams
    from runner.spec.identity import config_from_dict

    return [config_from_dict(s.config).data for s in streams(spec)]


def requeue(db: Database, experiment_id: int, keys: list[str], request: RunRequest) -> None:
    if request.force:
        db.requeue(experiment_id, keys, ("done", "failed", "interrupted", "pruned"))
        worker.forget_checkpoints(request.root, request.spec.name, keys)
    elif request.retry_failed:
        db.requeue(experiment_id, keys, ("failed",))


def summarise(db: Database, experiment_id: int, request: RunRequest, counts: dict[str, int], console: Console) -> int:
    """The experiment's jobs now (a study's as its planner sees them) and the exit code that says what is left."""
    now = spec_work(db, experiment_id, request)
    console.print(results_table(now) if now.jobs else "No job has been added to the study yet.")
    if counts.get("interrupted") or counts.get("stopped"):
        console.print("Interrupted: rerun the same command to resume from the last checkpoints.")
        return EXIT_INTERRUPTED
    if now.count("failed"):
        console.print("Some jobs failed: `python -m runner show JOB` prints the traceback; "
                      "rerun with --retry-failed after fixing the cause.")
        return EXIT_FAILED
    held = running_rows(db, experiment_id)
    if held:
        console.print(f"{len(held)} jobs are still running with other runners, so this experiment is not "
                      "finished:\n" + running_lines(held) + "\n`python -m runner status` follows them; rerunning "
                      "this spec takes over a job whose runner has died.")
        return EXIT_STILL_RUNNING
    if not now.finished:
        console.print(f"Not finished: {now.describe_left()}; no runner is left on it. Rerun the same command to "
                      "continue (finished jobs are kept).")
        return EXIT_INTERRUPTED
    console.print("All jobs done. Next: python -m runner report")
    return EXIT_OK


def results_table(now: Work) -> Table:
    table = Table(title="jobs", show_lines=False)
    for column in ("job", "label", "status", "note"):
        table.add_column(column)
    for row in now.jobs:
        note = (row.error or "")[:80] if row.status != "done" else ""
        table.add_row(str(row.job_id), row.label, row.status, note)
    return table


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
