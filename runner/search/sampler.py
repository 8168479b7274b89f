"""Next trial of a stream: Optuna's sampler through ask-and-tell, on a study rebuilt from the database's history.

There is no second study database: every ask builds an in-memory study, adds the stream's earlier trials in
trial-number order (params, value, intermediate values, and the sampler's own system attributes such as the grid
sampler's `grid_id`), and asks once. The sampler's seed is derived from (search seed, stream, trial number), so trial
n's configuration is a pure function of the spec and trials 0..n-1: a resumed search neither repeats nor re-seeds.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial

from runner.search.history import TrialHistory
from runner.spec.search import Distribution, SearchSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL,
           "running": TrialState.RUNNING}


def distribution(d: Distribution, grid: bool) -> BaseDistribution:
    if grid or d.kind == "choice":
        return CategoricalDistribution(list(d.grid_values()))
    if d.kind == "int":
        return IntDistribution(int(d.low), int(d.high), step=int(d.step or 1))
    return FloatDistribution(float(d.low), float(d.high), log=d.kind == "log",
                             step=None if d.step is None else float(d.step))


def distributions(search: SearchSpec) -> dict[str, BaseDistribution]:
    return {key: distribution(d, search.sampler == "grid") for key, d in search.space}


def trial_seed(search: SearchSpec, stream: str, number: int) -> int:
    # The grid sampler's seed also fixes the order of its grid points (grid_id -> params): it must not change
    # between trials, and the rebuilt history alone makes its next pick differ.
    number = 0 if search.sampler == "grid" else number
    digest = hashlib.sha256(f"{search.seed}|{stream}|{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(search: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    if search.sampler == "grid":
        space = {key: list(d.grid_values()) for key, d in search.space}
        return optuna.samplers.GridSampler(space, seed=seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
        # constant_liar: trials still running count as poor, so parallel workers do not all ask the same region.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials, constant_liar=True)


def rebuild(search: SearchSpec, history: list[TrialHistory], sampler=None) -> optuna.Study:
    """An in-memory study holding the stream's earlier trials in trial-number order. When the spec's space was
    edited since, an earlier trial contributes only the values the current space can still hold."""
    dists = distributions(search)
    space = dict(search.space)
    study = optuna.create_study(direction=search.direction, sampler=sampler)
    for past in sorted(history, key=lambda t: t.number):
        state = _STATES[past.state]
        params = {k: v for k, v in past.params.items() if k in space and space[k].contains(v)}
        study.add_trial(create_trial(
            state=state, params=params, distributions={k: dists[k] for k in params},
            value=past.value(search.direction) if state == TrialState.COMPLETE else None,
            intermediate_values=past.intermediate(), system_attrs=past.system_attrs))
    return study


def ask(search: SearchSpec, stream: str, number: int, history: list[TrialHistory]) -> tuple[dict[str, Any], dict]:
    """Trial `number`'s params and the sampler's system attributes, given the stream's trials so far."""
    study = rebuild(search, history, make_sampler(search, trial_seed(search, stream, number)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        trial = study.ask(distributions(search))
    return dict(trial.params), dict(study.trials[-1].system_attrs)
