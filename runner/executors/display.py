"""What a run shows: a rich progress view on a terminal, plain lines otherwise (pipes, logs, CI=true).

Plain lines go through `logging` with a timestamp: they end up in Slurm task logs and worker processes' output,
where nothing else says when a job started, was warned or gave up.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG_FORMAT = "%(asctime)s %(message)s"


def interactive() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


class _CurrentStdout(logging.StreamHandler):
    """Writes to sys.stdout as it is at each line: a caller (or a test) may replace it after the handler exists."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def worker_log() -> logging.Logger:
    """The logger of worker lines: to stdout, one line each, with its time; set up once per process."""
    log = logging.getLogger("runner.worker")
    if not log.handlers:
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # an application's root handlers would print each line twice
    return log


class LogConsole:
    """The `console` of a plain display: what the worker prints through it becomes a timestamped log line."""

    def print(self, *objects: Any, **_ignored: Any) -> None:
        worker_log().info(" ".join(str(o) for o in objects))


class PlainDisplay:
    """One line per event; per-batch progress at most every 30 s so logs stay readable. `total` 0: not known in
    advance (a study adds its jobs as it runs)."""

    def __init__(self, total: int, console: Console | LogConsole | None = None):
        self.total, self.done = total, 0
        self.console = console or LogConsole()
        self._last = 0.0

    def _count(self, n: int) -> str:
        return f"[{n}/{self.total}]" if self.total else f"[{n}]"

    def job_started(self, label: str) -> None:
        self.console.print(f"{self._count(self.done + 1)} {label}: started")

    def batch(self, label: str, info: dict[str, Any]) -> None:
        if time.monotonic() - self._last > 30:
            self._last = time.monotonic()
            self.console.print(f"    {label}: epoch {info['epoch'] + 1} batch {info['batch']}/{info['batches']} "
                               f"loss {info['loss']:.4f}")

    def epoch_done(self, label: str, epoch: int, metrics: dict[str, float]) -> None:
        self._last = time.monotonic()
        shown = {k: v for k, v in sorted(metrics.items()) if k.startswith(("valid_", "train_loss"))}
        self.console.print(f"    {label}: epoch {epoch + 1} " + " ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))

    def job_ended(self, label: str, status: str, summary: str = "") -> None:
        self.done += 1
        self.console.print(f"{self._count(self.done)} {label}: {status} {summary}".rstrip())

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RichDisplay(PlainDisplay):
    """Overall jobs with ETA, the current job's epoch and batch, last metrics."""

    def __init__(self, total: int):
        super().__init__(total, Console(highlight=False, soft_wrap=True, markup=False))
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
        self.jobs = self.progress.add_task("jobs", total=total)
        self.current = self.progress.add_task("", total=1, visible=False)
        self.progress.start()

    def job_started(self, label: str) -> None:
        self.progress.update(self.current, description=label, completed=0, total=1, visible=True)

    def batch(self, label: str, info: dict[str, Any]) -> None:
        text = f"{label} epoch {info['epoch'] + 1} loss {info['loss']:.3f}"
        self.progress.update(self.current, description=text, completed=info["batch"], total=info["batches"])

    def job_ended(self, label: str, status: str, summary: str = "") -> None:
        self.done += 1
        self.progress.advance(self.jobs)
        self.console.print(f"{label}: {status} {summary}".rstrip())

    def close(self) -> None:
        self.progress.stop()


def make_display(total: int):
    return RichDisplay(total) if interactive() else PlainDisplay(total)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
