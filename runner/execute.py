"""Workers: claim a job from the database, run it, record it, repeat.

Every worker does the same thing whether it runs in this process, in one of `--workers N` processes or in a Slurm
array task. A job is only ever run by the process whose conditional UPDATE claimed it. When a worker dies, the next
worker takes its job over and resumes it from its last checkpoint: at once when the dead worker ran on the same host
(its process is gone), after `stale_after` seconds without a heartbeat when it ran elsewhere.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from runner import checkpoint, liveness, train
from runner.db import Database
from runner.device import describe, limit_threads, peak_memory_mb, pick_device, threads_per_worker
from runner.display import make_display
from runner.grid import config_from_dict
from runner.provenance import collect
from runner.spec import Spec

PLAN_POLL_SECONDS = 2.0  # how often an idle worker of a study looks again while other runners' jobs finish


@dataclass(frozen=True)
class WorkerOptions:
    db_url: str
    root: Path
    experiment_id: int
    keys: tuple[str, ...]
    stale_after: float = 300.0  # seconds without a heartbeat before a running job counts as abandoned
    heartbeat_every: float = 20.0
    worker_index: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    spec: Spec | None = None  # set for a study: idle workers ask runner.search for new trials and final jobs
    threads: int = 0  # torch CPU threads of this worker; 0 keeps torch's default (every core)


class StopFlag:
    """Set by SIGINT/SIGTERM (or Slurm's warning signal): the running job checkpoints at the next batch and the
    worker exits. `signum` remembers which signal asked, so a Slurm task knows to requeue itself."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def install(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (the last checkpoint still holds)
        self.signum = self.signum or signum
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


def worker_name(index: int) -> str:
    return str(liveness.this_worker(index))


def take_over_dead_here(db: Database, experiment_id: int) -> list[str]:
    """Release running jobs whose worker ran on this host and no longer exists; returns their labels."""
    released = []
    for _, job in db.running(experiment_id):
        if liveness.alive_here(job.worker) is False and db.release(
                job.job_id, job.worker, f"worker {job.worker} on this host no longer exists"):
            released.append(job.label)
    return released


def run_worker(options: WorkerOptions, stop: StopFlag, display=None) -> dict[str, int]:
    """Claim and run jobs until none is left or a stop is requested; returns counts by final status."""
    db = Database(options.db_url)
    name = worker_name(options.worker_index)
    device = pick_device(options.worker_index, options.device)
    counts: dict[str, int] = {}
    keys = list(options.keys)
    peak = 0.0  # each job's peak starts at its own start; the worker's is the largest
    while not stop.is_set():
        _reclaim(db, options)
        job = db.claim(options.experiment_id, keys, name)
        if job is None:
            keys = _more_work(db, options, stop)
            if keys is None:
                break
            continue
        status = run_one(db, job, name, device, options, stop, display)
        counts[status] = counts.get(status, 0) + 1
        peak = max(peak, peak_memory_mb(device))
    if stop.is_set():
        counts["stopped"] = 1  # asked to stop: jobs may be left queued
    if display and counts:
        # Workers may share a GPU (--workers above the GPU count): what each needed says how many fit.
        display.console.print(f"worker {options.worker_index} on {describe(device)} ({torch.get_num_threads()} CPU "
                              f"threads): {sum(counts.values())} jobs, peak memory {peak:.0f} MiB")
    return counts


def _more_work(db: Database, options: WorkerOptions, stop: StopFlag) -> list[str] | None:
    """A study's next jobs (the spec's keys, new trials included); None when nothing is left to plan or run."""
    from runner import search  # optuna loads only for studies

    if options.spec is None or not options.spec.searched:
        return None
    while not stop.is_set():
        plan = search.plan(db, options.spec, options.experiment_id)
        if plan.added or _claimable(db, options.experiment_id, plan.keys):
            return list(plan.keys)
        if not plan.open:
            return None
        time.sleep(PLAN_POLL_SECONDS)  # other runners hold the last jobs that the next stage depends on
        _reclaim(db, options)
    return None


def _reclaim(db: Database, options: WorkerOptions) -> None:
    """Jobs of runners that are gone: dead processes on this host at once, other hosts after --stale-after."""
    take_over_dead_here(db, options.experiment_id)
    db.reclaim_stale(options.experiment_id, options.stale_after)


def _claimable(db: Database, experiment_id: int, keys) -> bool:
    return any(row.status in ("queued", "interrupted") for row in db.jobs(experiment_id, list(keys)))


def _prune_hook(db: Database, options: WorkerOptions, job_id: int):
    if options.spec is None or not any(b.search and b.search.prune != "none" for b in options.spec.blocks):
        return lambda epochs: None
    from runner import search

    return lambda epochs: search.prune_check(db, options.spec, options.experiment_id, job_id, epochs)


def run_one(db: Database, job, name: str, device, options: WorkerOptions, stop: StopFlag, display) -> str:
    config = config_from_dict(json.loads(job.config_json))
    db.set_provenance(job.job_id, **collect(describe(device)))
    if display:
        display.job_started(job.label)
    hooks = train.Hooks(
        record_epochs=lambda history: _record(db, job, history, display),
        heartbeat=_throttled(lambda: db.heartbeat(job.job_id, name), options.heartbeat_every),
        should_stop=stop.is_set,
        progress=(lambda info: display.batch(job.label, info)) if display else (lambda info: None),
        on_model=lambda params: db.set_provenance(job.job_id, params=params),
        after_epoch=_prune_hook(db, options, job.job_id),
    )
    path = checkpoint.checkpoint_path(options.root, job.key)
    try:
        result = train.run(config, path, options.root / "data", device, hooks)
    except (train.Interrupted, KeyboardInterrupt) as exc:
        db.mark(job.job_id, "interrupted", error=str(exc) or "interrupted")
        _ended(display, job.label, "interrupted", "(rerun the spec to resume from its checkpoint)")
        stop.event.set()
        return "interrupted"
    except train.Pruned as exc:
        db.mark(job.job_id, "pruned", error=str(exc))
        _ended(display, job.label, "pruned", str(exc).removeprefix("pruned "))
        return "pruned"
    except Exception as exc:  # noqa: BLE001 - any job failure is recorded and the other jobs go on
        db.mark(job.job_id, "failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        _ended(display, job.label, "failed", f"{type(exc).__name__}: {exc}")
        return "failed"
    if not db.finish(job.job_id, name, result.final, result.rotation, result.artifacts, result.params):
        _ended(display, job.label, "superseded", "(another worker took this job over; its result stands)")
        return "superseded"
    _ended(display, job.label, "done", _summary(result.final))
    return "done"


def _record(db: Database, job, history, display) -> None:
    db.record_epochs(job.job_id, history)
    if display and history:
        display.epoch_done(job.label, *history[-1])


def _ended(display, label: str, status: str, summary: str) -> None:
    if display:
        display.job_ended(label, status, summary)


def _summary(final: dict[str, float]) -> str:
    shown = [k for k in ("test_accuracy", "test_auc", "test_dice", "test_iou") if k in final]
    return " ".join(f"{k}={final[k]:.3f}" for k in shown if final[k] is not None)


def _throttled(action, seconds: float):
    last = [0.0]

    def call() -> None:
        if time.monotonic() - last[0] >= seconds:
            last[0] = time.monotonic()
            action()
    return call


def forget_checkpoints(root: Path, keys: list[str]) -> None:
    """--force: the jobs restart from scratch, so their checkpoints go."""
    for key in keys:
        shutil.rmtree(checkpoint.checkpoint_path(root, key).parent, ignore_errors=True)


def run_jobs(options: WorkerOptions, workers: int, total: int) -> dict[str, int]:
    """Run the queued jobs with `workers` processes (1: in this process, with live progress)."""
    stop = StopFlag()
    stop.install()
    if workers <= 1:
        with make_display(total) as display:
            return run_worker(options, stop, display)
    return _run_processes(options, workers, stop)


def _run_processes(options: WorkerOptions, workers: int, stop: StopFlag) -> dict[str, int]:
    context = multiprocessing.get_context("spawn")  # fork would copy CUDA state and open database handles
    threads = options.threads or threads_per_worker(workers)
    with context.Pool(workers) as pool:
        pending = [pool.apply_async(_process_main, (WorkerOptions(**{**vars(options), "worker_index": i,
                                                                     "threads": threads}),))
                   for i in range(workers)]
        while not all(p.ready() for p in pending):
            time.sleep(0.5)
            if stop.is_set():
                for child in multiprocessing.active_children():
                    os.kill(child.pid, signal.SIGTERM)
                break
        counts: dict[str, int] = {}
        for p in pending:
            for status, n in p.get().items():
                counts[status] = counts.get(status, 0) + n
    return counts


def _process_main(options: WorkerOptions) -> dict[str, int]:
    if options.threads:
        limit_threads(options.threads)
    stop = StopFlag()
    stop.install()
    from runner.display import PlainDisplay

    return run_worker(options, stop, PlainDisplay(len(options.keys)))
