"""Workers: claim a job from the database, run it, record it, repeat.

Every worker does the same thing whether it runs in this process or in one of `--workers N` processes. A job is
only ever run by the process whose conditional UPDATE claimed it; a worker that dies stops sending heartbeats and
the next worker marks its job interrupted and resumes it from its last checkpoint.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from runner import checkpoint, train
from runner.db import Database
from runner.device import describe, limit_threads, peak_memory_mb, pick_device, threads_per_worker
from runner.display import make_display
from runner.grid import config_from_dict
from runner.provenance import collect


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
    threads: int = 0  # torch CPU threads of this worker; 0 keeps torch's default (every core)


class StopFlag:
    """Set by SIGINT/SIGTERM: the running job checkpoints at the next batch and the worker exits."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (the last checkpoint still holds)
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


def run_worker(options: WorkerOptions, stop: StopFlag, display=None) -> dict[str, int]:
    """Claim and run jobs until none is left or a stop is requested; returns counts by final status."""
    db = Database(options.db_url)
    name = worker_name(options.worker_index)
    device = pick_device(options.worker_index, options.device)
    counts: dict[str, int] = {}
    peak = 0.0  # each job's peak starts at its own start; the worker's is the largest
    while not stop.is_set():
        db.reclaim_stale(options.experiment_id, options.stale_after)
        job = db.claim(options.experiment_id, list(options.keys), name)
        if job is None:
            break
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
    )
    path = checkpoint.checkpoint_path(options.root, job.key)
    try:
        result = train.run(config, path, options.root / "data", device, hooks)
    except (train.Interrupted, KeyboardInterrupt) as exc:
        db.mark(job.job_id, "interrupted", error=str(exc) or "interrupted")
        _ended(display, job.label, "interrupted", "(rerun the spec to resume from its checkpoint)")
        stop.event.set()
        return "interrupted"
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
