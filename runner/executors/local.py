"""The local executor: run the jobs in this process (with live progress) or in `--workers N` processes.

A worker process that dies (the out-of-memory killer's SIGKILL) loses its job to the others at once and is
replaced, at most RESTARTS_PER_SLOT times per slot. Stopping (Ctrl-C, SIGTERM) asks every worker to checkpoint and
give its job back.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

from runner.executors.display import make_display
from runner.executors.worker import FAULTS, StopFlag, WorkerOptions, fault_status, run_worker, take_over_dead_here
from runner.store import Database
from runner.training.device import limit_threads, threads_per_worker

RESTARTS_PER_SLOT = 2  # a --workers slot whose process keeps dying (a job that always exhausts memory) then stays empty


def run_jobs(options: WorkerOptions, workers: int, total: int) -> dict[str, int]:
    """Run the queued jobs with `workers` processes (1: in this process, with live progress)."""
    stop = StopFlag()
    stop.install()
    if workers <= 1:
        with make_display(total) as display:
            return run_worker(options, stop, display)
    return _run_processes(options, workers, stop)


def _run_processes(options: WorkerOptions, workers: int, stop: StopFlag) -> dict[str, int]:
    """Run `workers` worker processes until all have ended; a worker that dies (the OOM killer's SIGKILL) loses its
    job to the others at once and is replaced, at most RESTARTS_PER_SLOT times per slot."""
    context = multiprocessing.get_context("spawn")  # fork would copy CUDA state and open database handles
    options = replace(options, threads=options.threads or threads_per_worker(workers))
    running = [_start(context, options, index) for index in range(workers)]
    counts: dict[str, int] = {}
    try:
        while running:
            # Sentinels, not results: a killed process never sends one, but its sentinel always becomes ready.
            ended = set(multiprocessing.connection.wait([s.process.sentinel for s in running], timeout=0.5))
            if stop.is_set():
                _terminate(running)
            for slot in [s for s in running if s.process.sentinel in ended]:
                running.remove(slot)
                result = _result(slot)
                if result is None:
                    running.extend(_after_death(context, options, slot, stop))
                for status, n in (result or {}).items():
                    counts[status] = counts.get(status, 0) + n
    finally:
        _terminate(running)  # only left on an exception here (a second Ctrl-C): no worker outlives the runner
    return counts


@dataclass
class _Slot:
    """One worker process of `--workers N`, and how often its slot has been restarted."""

    index: int
    process: multiprocessing.process.BaseProcess
    results: Connection  # the worker sends its counts here just before it exits; a dead one never does
    restarts: int = 0


def _start(context, options: WorkerOptions, index: int, restarts: int = 0) -> _Slot:
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_process_main, args=(replace(options, worker_index=index), writer),
                              name=f"runner-worker-{index}", daemon=True)
    process.start()
    writer.close()  # the child holds the only writer now, so a dead child leaves the reader at EOF
    return _Slot(index, process, reader, restarts)


def _result(slot: _Slot) -> dict[str, int] | None:
    """The counts an ended worker sent; None when it died without sending them."""
    slot.process.join()
    try:
        return slot.results.recv() if slot.results.poll() else None
    except EOFError:
        return None
    finally:
        slot.results.close()


def _after_death(context, options: WorkerOptions, slot: _Slot, stop: StopFlag) -> list[_Slot]:
    """Give a dead worker's job back and start a replacement (none when stopping, or when the slot keeps dying)."""
    released = _release_dead(options)
    cause = _exit_cause(slot.process.exitcode)
    jobs = f"its job {', '.join(released)} goes back to the queue" if released else "it held no job"
    if stop.is_set():
        print(f"worker {slot.index} (pid {slot.process.pid}) ended ({cause}) while stopping; {jobs}", flush=True)
        return []
    if slot.restarts >= RESTARTS_PER_SLOT:
        print(f"worker {slot.index} (pid {slot.process.pid}) died ({cause}), death {slot.restarts + 1} of this slot: "
              f"not restarting it again; {jobs}; the other workers go on", flush=True)
        return []
    print(f"worker {slot.index} (pid {slot.process.pid}) died ({cause}); {jobs}; starting a replacement "
          f"({slot.restarts + 1} of {RESTARTS_PER_SLOT})", flush=True)
    return [_start(context, options, slot.index, slot.restarts + 1)]


def _release_dead(options: WorkerOptions) -> list[str]:
    try:
        return take_over_dead_here(Database(options.db_url), options.experiment_id)
    except Exception:  # noqa: BLE001 - best effort: every worker takes dead workers' jobs over before its next claim
        return []


def _exit_cause(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"  # SIGKILL: the kernel's out-of-memory killer, or kill -9
    return f"exit code {code}"


def _terminate(slots: list[_Slot]) -> None:
    """Ask each living worker to stop: it checkpoints at its next batch, gives its job back and exits."""
    for slot in slots:
        if slot.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid, signal.SIGTERM)


def _process_main(options: WorkerOptions, results: Connection) -> None:
    if options.threads:
        limit_threads(options.threads)
    stop = StopFlag()
    stop.install()
    from runner.executors.display import PlainDisplay

    try:
        counts = run_worker(options, stop, PlainDisplay(len(options.keys)))
    except tuple(FAULTS) as exc:  # met between jobs (claiming, planning): the same stop as inside one, not a death
        print(f"worker {options.worker_index}: {exc}", flush=True)
        counts = {fault_status(exc): 1}
    results.send(counts)
    results.close()
