"""What is left of an experiment: its jobs now and, for a study, the trials and final evaluations still to come.

One rule for every place that asks "is this experiment finished?": a Slurm task deciding whether to requeue itself
after the warning signal, `--wait` following an array, and the summary at the end of a run. A grid's jobs are fixed
when it is submitted. A study's are not: on a fresh study the submission knows no job at all, and trials and final
jobs appear as workers ask the planner. So a study's jobs are re-read from the database on every call, and the
planner says what it will still add (`runner.search.current`, which adds nothing itself).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runner.spec import Spec
from runner.store import Database, JobModel

CLAIMABLE = ("queued", "interrupted")
ENDED = ("done", "pruned")  # a pruned trial is as final as a done one; a failed one waits for --retry-failed


@dataclass(frozen=True)
class Work:
    jobs: tuple[JobModel, ...]  # the experiment's jobs now, in job order
    to_add: int = 0  # a study's trials still to ask and final evaluations still to queue
    study: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(job.key for job in self.jobs)

    def count(self, *statuses: str) -> int:
        return sum(1 for job in self.jobs if job.status in statuses)

    @property
    def left(self) -> bool:
        """A worker has something to do, now or once the running jobs end: a job to claim or one still to add."""
        return self.to_add > 0 or self.count(*CLAIMABLE) > 0

    @property
    def finished(self) -> bool:
        """Nothing to add and every job done or pruned."""
        return self.to_add == 0 and self.count(*ENDED) == len(self.jobs)

    def describe_left(self) -> str:
        """What stands between this experiment and finished, in words ('' when finished)."""
        parts = [f"{n} {status}" for status in ("running", *CLAIMABLE, "failed") if (n := self.count(status))]
        if self.to_add:
            parts.append(f"{self.to_add} still to add (trials, final evaluations)")
        return ", ".join(parts)


def work(db: Database, experiment_id: int, spec: Spec | None, keys: Iterable[str]) -> Work:
    """The experiment's work now: a grid's `keys`, or (for a study spec) what the database and planner say."""
    if spec is None or not spec.searched:
        return Work(jobs=tuple(db.jobs(experiment_id, list(keys))))
    from runner import search  # optuna loads only for studies

    plan = search.current(db, spec, experiment_id)
    return Work(jobs=tuple(db.jobs(experiment_id, list(plan.keys))), to_add=plan.to_add, study=True)
