"""Pruning decisions: Optuna's successive-halving (ASHA) and median pruners, on a study rebuilt from the database.

`decide` is a pure function of the search settings, the job's history and its competitors' histories. Each job of
a stream is one pruner trial: its intermediate values are the compared metric by epoch, and its ASHA rung results
(`completed_rung_<r>` system attributes) come from the rung decisions stored in the database. The rung's cut and
the number of competitors are recorded beside each decision so a report can say why a job stopped.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState, create_trial

from runner.search.history import JobHistory
from runner.spec.search import SearchSpec

_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL,
           "running": TrialState.RUNNING}

Rung = tuple[int, int, float, "float | None", int, bool]  # (rung, epoch, value, cut, competitors, promoted)


@dataclass(frozen=True)
class Decision:
    prune: bool
    rungs: tuple[Rung, ...] = ()  # decisions made now (ASHA may pass several rungs at once)

    def reason(self, metric: str, step: int) -> str:
        if not self.rungs:  # decided before a restart: the stored decision stands
            return f"pruned after epoch {step} (decision recorded earlier; `python -m runner show` lists the rungs)"
        rung, epoch, value, cut, competitors, _ = self.rungs[-1]
        return (f"pruned at rung {rung} (epoch {epoch}): {metric} {value:.4g} did not reach the cut "
                f"{'n/a' if cut is None else f'{cut:.4g}'} among {competitors} jobs")


def rung_key(rung: int) -> str:
    return f"completed_rung_{rung}"


def make_pruner(search: SearchSpec) -> optuna.pruners.BasePruner:
    if search.prune == "asha":
        # min_resource set explicitly: "auto" would be estimated once per process and differ between workers.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.min_epochs,
                                                      reduction_factor=search.reduction_factor,
                                                      min_early_stopping_rate=0, bootstrap_count=0)
    return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials,
                                       n_warmup_steps=search.min_epochs - 1, interval_steps=1)


def _frozen(job: JobHistory, direction: str, upto: int | None = None, running: bool = False):
    values = {s: v for s, v in job.values.items() if upto is None or s <= upto}
    state = TrialState.RUNNING if running else _STATES[job.state]
    value = job.best(direction) if state == TrialState.COMPLETE else None
    if state == TrialState.COMPLETE and value is None:
        state = TrialState.FAIL  # done without a finite metric: nothing to compare
    return create_trial(state=state, params={}, distributions={}, value=value,
                        intermediate_values=values,
                        system_attrs={rung_key(r): v for r, v in job.rungs.items()})


def decide(search: SearchSpec, job: JobHistory, step: int, others: list[JobHistory]) -> Decision:
    """Should `job`, which has completed `step` epochs, stop? Decisions already stored for this step are returned
    as they were (a resumed job gets the same answer)."""
    if search.prune == "none" or step not in job.values:
        return Decision(False)
    stored = [promoted for _rung, epoch, promoted in job.decisions if epoch == step]
    if stored:
        return Decision(not stored[-1])
    study = optuna.create_study(direction=search.direction, pruner=make_pruner(search))
    for other in others:
        study.add_trial(_frozen(other, search.direction))
    study.add_trial(_frozen(job, search.direction, upto=step, running=True))
    pruned = study.pruner.prune(study, study.trials[-1])
    if search.prune == "asha":
        return _asha_decision(search, job, step, others, pruned, study.trials[-1].system_attrs)
    return _median_decision(search, job, step, others, pruned)


def _asha_decision(search, job, step, others, pruned, attrs) -> Decision:
    rungs = []
    new = sorted(int(k.rsplit("_", 1)[1]) for k in attrs if k.startswith("completed_rung_")
                 and int(k.rsplit("_", 1)[1]) not in job.rungs)
    for rung in new:
        value = attrs[rung_key(rung)]
        competing = [o.rungs[rung] for o in others if rung in o.rungs] + [value]
        cut = asha_cut(competing, search.reduction_factor, search.direction)
        promoted = not (pruned and rung == new[-1])
        rungs.append((rung, step, value, cut, len(competing), promoted))
    return Decision(pruned, tuple(rungs))


def asha_cut(competing: list[float], reduction_factor: int, direction: str) -> float:
    """The value a job must reach to be promoted: the k-th best of the rung, k = max(1, n // reduction_factor)."""
    k = max(1, len(competing) // reduction_factor)
    ordered = sorted(competing, reverse=direction == "maximize")
    return ordered[k - 1]


def _median_decision(search, job, step, others, pruned) -> Decision:
    if step < search.min_epochs:
        return Decision(False)
    # Optuna's median rule: the job's best value so far against the median, at this epoch, of the done jobs.
    so_far = [v for s, v in job.values.items() if s <= step and math.isfinite(v)]
    value = (max(so_far) if search.direction == "maximize" else min(so_far)) if so_far else job.values[step]
    complete = [o for o in others if o.state == "complete"]
    at_step = [o.values[step] for o in complete if step in o.values and math.isfinite(o.values[step])]
    cut = statistics.median(at_step) if at_step and len(complete) >= search.startup_trials else None
    return Decision(pruned, ((step, step, value, cut, len(at_step) + 1, not pruned),))
