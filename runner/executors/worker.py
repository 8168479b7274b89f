"""Workers: claim a job from the database, run it, record it, repeat.

Every worker does the same thing whether it runs in this process, in one of `--workers N` processes or in a Slurm
array task. A job is only ever run by the process whose conditional UPDATE claimed it. When a worker dies, the next
worker takes its job over and resumes it from its last checkpoint: at once when the dead worker ran on the same host
(its process is gone), after `stale_after` seconds without a heartbeat when it ran elsewhere.
"""
from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from runner.executors import liveness, registry
from runner.faults import DatabaseAway, DiskFull
from runner.spec import Spec
from runner.spec.identity import config_from_dict
from runner.store import Database, LostJob
from runner.training import checkpoint, loop
from runner.training.device import describe, peak_memory_mb, pick_device
from runner.training.provenance import collect

PLAN_POLL_SECONDS = 2.0  # how often an idle worker of a study looks again while other runners' jobs finish
# Statuses a worker returns for a job it stopped because of a fault that is not the job's (runner/faults.py).
FAULTS = {DiskFull: "disk_full", DatabaseAway: "database_away"}


@dataclass(frozen=True)
class WorkerOptions:
    db_url: str
    root: Path
    experiment_id: int
    keys: tuple[str, ...]
    stale_after: float = liveness.STALE_AFTER_SECONDS  # without a heartbeat this long, a running job is abandoned
    heartbeat_every: float = 20.0
    worker_index: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    spec: Spec | None = None  # set for a study: idle workers ask runner.search for new trials and final jobs
    threads: int = 0  # torch CPU threads of this worker; 0 keeps torch's default (every core)
    db_retry_seconds: float = 600.0  # how long a database outage is waited out before the worker stops (exit 4)


class StopFlag:
    """Set by SIGINT/SIGTERM (or Slurm's warning signal): the running job checkpoints at the next batch and the
    worker exits. `signum` remembers which signal asked, so a Slurm task knows to requeue itself."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.fault: Exception | None = None  # a DiskFull or DatabaseAway that stopped the worker

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
    # wait: a worker process or Slurm task may start while the server restarts; the parent checked the URL already.
    db = Database(options.db_url, retry_seconds=options.db_retry_seconds, wait=True)
    name = worker_name(options.worker_index)
    device = pick_device(options.worker_index, options.device)
    counts: dict[str, int] = {}
    keys = list(options.keys)
    peak = 0.0  # each job's peak starts at its own start; the worker's is the largest
    # Runners started separately on this host divide its cores too: each job starts with this worker's share of
    # them (runner/executors/registry.py).
    threads_before, entry = torch.get_num_threads(), registry.register(options.worker_index)
    share = registry.CoreShare(options.threads or threads_before)
    try:
        while not stop.is_set():
            _reclaim(db, options)
            job = db.claim(options.experiment_id, keys, name)
            if job is None:
                keys = _more_work(db, options, stop)
                if keys is None:
                    break
                continue
            share.take()
            status = run_one(db, job, name, device, options, stop, display)
            counts[status] = counts.get(status, 0) + 1
            peak = max(peak, peak_memory_mb(device))
        threads = share.fewest or torch.get_num_threads()
    finally:
        registry.unregister(entry)
        torch.set_num_threads(threads_before)  # an in-process worker leaves its caller's threads as it found them
    if stop.is_set():
        counts["stopped"] = 1  # asked to stop: jobs may be left queued
    if display and counts:
        # Workers may share a GPU (--workers above the GPU count): what each needed says how many fit.
        display.console.print(f"worker {options.worker_index} on {describe(device)} ({threads} CPU "
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


def _prune_hook(db: Database, options: WorkerOptions, job_id: int, worker: str):
    if options.spec is None or not any(b.search and b.search.prune != "none" for b in options.spec.blocks):
        return lambda epochs: None
    from runner import search

    return lambda epochs: search.prune_check(db, options.spec, options.experiment_id, job_id, worker, epochs)


def run_one(db: Database, job, name: str, device, options: WorkerOptions, stop: StopFlag, display) -> str:
    config = config_from_dict(json.loads(job.config_json))
    if display:
        display.job_started(job.label)
    # Every write below is owner-checked: a hook that finds the job gone raises LostJob and training stops there.
    hooks = loop.Hooks(
        record_epochs=lambda history: _record(db, job, name, history, display),
        # The core share is taken at the job's start only: a job's thread count, and so its arithmetic, stays
        # fixed for its whole life, which keeps a CPU run's metrics reproducible.
        heartbeat=_throttled(lambda: db.heartbeat(job.job_id, name), options.heartbeat_every),
        should_stop=stop.is_set,
        progress=(lambda info: display.batch(job.label, info)) if display else (lambda info: None),
        on_model=lambda params: db.set_provenance(job.job_id, name, params=params),
        after_epoch=_prune_hook(db, options, job.job_id, name),
        before_save=lambda: db.heartbeat(job.job_id, name),  # never write a checkpoint that is no longer ours
    )
    path = checkpoint.checkpoint_path(options.root, config.experiment, job.key)
    try:
        db.set_provenance(job.job_id, name, **collect(describe(device)))
        result = loop.run(config, path, options.root / "data", device, hooks)
    except (loop.Interrupted, KeyboardInterrupt) as exc:
        db.mark(job.job_id, "interrupted", name, error=str(exc) or "interrupted")
        _ended(display, job.label, "interrupted", "(rerun the spec to resume from its checkpoint)")
        stop.event.set()
        return "interrupted"
    except loop.Pruned as exc:
        db.mark(job.job_id, "pruned", name, error=str(exc))
        _ended(display, job.label, "pruned", str(exc).removeprefix("pruned "))
        return "pruned"
    except LostJob as exc:  # presumed dead while alive (a stalled node): the new owner's run stands
        _ended(display, job.label, "lost", f"({exc}; stopped training it)")
        return "lost"
    except (DiskFull, DatabaseAway) as exc:
        return _fault(db, job, name, exc, stop, display)
    except Exception as exc:  # noqa: BLE001 - any job failure is recorded and the other jobs go on
        db.mark(job.job_id, "failed", name, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        _ended(display, job.label, "failed", f"{type(exc).__name__}: {exc}")
        return "failed"
    if not db.finish(job.job_id, name, result.final, result.rotation, result.artifacts, result.params):
        _ended(display, job.label, "superseded", "(another worker took this job over; its result stands)")
        return "superseded"
    _ended(display, job.label, "done", _summary(result.final))
    return "done"


def _fault(db: Database, job, name: str, exc: Exception, stop: StopFlag, display) -> str:
    """Give the job back whole (it is resumable: the disk or the database failed, not the job) and stop this worker.

    Giving back is best effort: with the database away, or SQLite on the full disk, the job stays `running` under this
    worker's name, and the next run on this host takes it over at once because this process will be gone."""
    db.retry_seconds = 0  # this worker stops now; waiting out the bound a second time would only delay that
    try:
        db.release(job.job_id, name, str(exc))
    except Exception:  # noqa: BLE001 - see the docstring: the takeover covers it
        pass
    _ended(display, job.label, "stopped", str(exc))
    stop.fault = exc
    stop.event.set()
    return fault_status(exc)


def fault_status(exc: Exception) -> str:
    return next(status for kind, status in FAULTS.items() if isinstance(exc, kind))


def _record(db: Database, job, name: str, history, display) -> None:
    db.record_epochs(job.job_id, name, history)
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


def forget_checkpoints(root: Path, experiment: str, keys: list[str]) -> None:
    """--force: the jobs restart from scratch, so this experiment's checkpoints go (never another experiment's, nor
    a legacy shared one). Each folder stays, empty: a legacy checkpoint is only adopted where there is no folder."""
    for key in keys:
        folder = checkpoint.checkpoint_path(root, experiment, key).parent
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)


def adopt_legacy_checkpoints(root: Path, experiment: str, keys: list[str]) -> None:
    """A root from before per-experiment folders: each job resumes from (or exports) a copy of its shared checkpoint."""
    checkpoint.adopt_legacy(root, experiment, keys)
