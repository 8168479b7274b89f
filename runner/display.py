"""What a run shows: a rich progress view on a terminal, plain lines otherwise (pipes, logs, CI=true)."""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def interactive() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


class PlainDisplay:
    """One line per event; per-batch progress at most every 30 s so logs stay readable."""

    def __init__(self, total: int, console: Console | None = None):
        self.total, self.done = total, 0
        self.console = console or Console(highlight=False, soft_wrap=True, markup=False)
        self._last = 0.0

    def job_started(self, label: str) -> None:
        self.console.print(f"[{self.done + 1}/{self.total}] {label}: started")

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
        self.console.print(f"[{self.done}/{self.total}] {label}: {status} {summary}".rstrip())

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RichDisplay(PlainDisplay):
    """Overall jobs with ETA, the current job's epoch and batch, last metrics."""

    def __init__(self, total: int):
        super().__init__(total)
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
