"""The database's rows, read as histories: per job its metric by epoch and its rung decisions; per stream its trials.

Everything a sampler, pruner or the final stage decides is a function of these (and the spec), so each decision
can be recomputed from the database alone.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from runner.store import FINISHED, StudySnapshot

# Optuna's trial states, by job status.
STATES = {"done": "complete", "pruned": "pruned", "failed": "fail"}


@dataclass(frozen=True)
class JobHistory:
    job_id: int
    key: str
    status: str
    config: dict[str, Any]
    values: dict[int, float]  # the compared metric by epochs completed (1-based); NaN where undefined
    rungs: dict[int, float] = field(default_factory=dict)  # rung -> value recorded by a pruning decision
    decisions: tuple[tuple[int, int, bool], ...] = ()  # stored (rung, epoch, promoted)

    @property
    def state(self) -> str:
        return STATES.get(self.status, "running")

    def best(self, direction: str) -> float | None:
        """The best value the job reached over its epochs (None before its first epoch)."""
        finite = [v for v in self.values.values() if math.isfinite(v)]
        if not finite:
            return None
        return max(finite) if direction == "maximize" else min(finite)


@dataclass(frozen=True)
class TrialHistory:
    stream: str
    role: str
    number: int
    params: dict[str, Any]
    system_attrs: dict[str, Any]
    jobs: tuple[JobHistory, ...]

    @property
    def finished(self) -> bool:
        return all(job.status in FINISHED for job in self.jobs)

    @property
    def state(self) -> str:
        """complete when every job is done; pruned or fail when one is; running otherwise."""
        states = {job.state for job in self.jobs}
        for state in ("running", "fail", "pruned"):
            if state in states:
                return state
        return "complete"

    def value(self, direction: str) -> float | None:
        """The mean over seeds of each job's best value: what the sampler is told."""
        values = [job.best(direction) for job in self.jobs]
        return None if not values or None in values else sum(values) / len(values)

    def intermediate(self) -> dict[int, float]:
        """Per epoch, the mean over the jobs that reached it (pruned trials are ranked by these)."""
        steps = sorted({step for job in self.jobs for step in job.values})
        out = {}
        for step in steps:
            values = [job.values[step] for job in self.jobs if step in job.values]
            out[step] = sum(values) / len(values)
        return out


class History:
    """Read-only view of one experiment's study rows for one metric."""

    def __init__(self, snapshot: StudySnapshot, metric: str):
        values: dict[int, dict[int, float]] = {}
        for job_id, epoch, name, value in snapshot.epochs:
            if name == metric:
                values.setdefault(job_id, {})[epoch + 1] = math.nan if value is None else float(value)
        rungs: dict[int, dict[int, float]] = {}
        decisions: dict[int, list[tuple[int, int, bool]]] = {}
        for job_id, rung, epoch, value, promoted in snapshot.rungs:
            rungs.setdefault(job_id, {})[rung] = math.nan if value is None else float(value)
            decisions.setdefault(job_id, []).append((rung, epoch, bool(promoted)))
        self.jobs = {job_id: JobHistory(job_id, key, status, json.loads(config), values.get(job_id, {}),
                                        rungs.get(job_id, {}), tuple(decisions.get(job_id, ())))
                     for job_id, key, status, config in snapshot.jobs}
        links: dict[int, list[int]] = {}
        for trial_id, job_id in snapshot.links:
            links.setdefault(trial_id, []).append(job_id)
        self.trials = [TrialHistory(stream, role, number, json.loads(params), json.loads(attrs),
                                    tuple(self.jobs[j] for j in sorted(links.get(trial_id, []))))
                       for trial_id, stream, role, number, params, attrs in snapshot.trials]

    def of_stream(self, stream: str, role: str = "search") -> list[TrialHistory]:
        """The stream's trials in trial-number order."""
        return sorted((t for t in self.trials if t.stream == stream and t.role == role), key=lambda t: t.number)

    def trials_of_job(self, job_id: int) -> list[TrialHistory]:
        return [t for t in self.trials if any(j.job_id == job_id for j in t.jobs)]
