"""The one rule that picks the best configuration from finished jobs.

Used by a study's final stage (runner.search.final), the report's model selection (reports.tables) and
`export --best` (runner.inference.selection); each adapts its own data (database rows, pandas frames) to `Result`
records, so this module imports nothing of the project and neither side has to import the other.

Rule: a configuration (a hyperparameter set: a job's config minus its seed) scores the mean of its jobs' values;
the best mean wins. Means within `REL_TOL` of the best are a tie, and a tie goes to the configuration whose
earliest job has the smallest job id.

Why the earliest job id: it is in the database itself (both the worker's rows and the report's frame carry it), it
never changes once written, and new rows only get larger ids, so adding jobs never moves a tie to a configuration
that was already there. A key such as the report's config hash would not do: the report's hash is of the flattened
config over the columns the whole experiment has, so a job with a new config field changes every hash, and the
search identifies configurations by another string, so the two would order a tie differently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Iterable

DIRECTIONS = ("maximize", "minimize")
# Means of the same values summed in another order (or metrics computed in float32) differ in their last bits; such
# a difference says nothing about the models, so it is a tie and the tie-break decides, not the rounding.
REL_TOL = 1e-9
ABS_TOL = 1e-12


@dataclass(frozen=True)
class Result:
    """One finished job's value of the compared metric."""

    config: Hashable  # the configuration's identity (config minus seed), in whatever form the caller has
    job_id: int
    value: float


@dataclass(frozen=True)
class Best:
    config: Hashable
    value: float  # mean over the configuration's jobs
    job_ids: tuple[int, ...]  # the jobs counted, ascending: the first is the earliest
    candidates: int  # configurations compared


def best(results: Iterable[Result], direction: str) -> Best | None:
    """The best configuration among `results` (None when no result has a finite value)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")
    groups = _by_config(results)
    if not groups:
        return None
    means = {config: math.fsum(values.values()) / len(values) for config, values in groups.items()}
    top = max(means.values()) if direction == "maximize" else min(means.values())
    tied = [c for c in groups if math.isclose(means[c], top, rel_tol=REL_TOL, abs_tol=ABS_TOL)]
    winner = min(tied, key=lambda c: min(groups[c]))
    return Best(winner, means[winner], tuple(sorted(groups[winner])), len(groups))


def _by_config(results: Iterable[Result]) -> dict[Hashable, dict[int, float]]:
    """Per configuration, its jobs' finite values by job id (a job listed twice counts once)."""
    groups: dict[Hashable, dict[int, float]] = {}
    for result in results:
        if result.value is not None and math.isfinite(result.value):
            groups.setdefault(result.config, {})[int(result.job_id)] = float(result.value)
    return groups
