"""The final stage: each model's best searched configuration, re-run with the final seeds.

A "model" is what [final].per names (default family, group, augment.geometric). Its best configuration is the one
with the best mean over seeds of each done job's best validation value, by the rule the report and `export --best`
use too (runner.selection: ties go to the configuration whose first job came first). A final job whose resolved
config equals a search job's is that job (same key): nothing is trained twice.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runner.search.history import JobHistory
from runner.search.streams import Job
from runner.selection import Result, best
from runner.spec import Spec
from runner.spec.identity import config_from_dict, job_key
from runner.spec.search import FinalSpec


@dataclass(frozen=True)
class Choice:
    config: dict[str, Any]  # a done job's resolved config (its seed is replaced by each final seed)
    key: str  # that job's key: provenance of the final trial
    value: float  # mean over seeds of the selection metric
    candidates: int  # configurations compared


def lookup(config: dict[str, Any], dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return config[section][name]


def model_of(config: dict[str, Any], per: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(lookup(config, dotted) for dotted in per)


def model_name(model: tuple[Any, ...], per: tuple[str, ...]) -> str:
    return "final " + " ".join(f"{dotted.split('.', 1)[1]}={value}" for dotted, value in zip(per, model))


def config_id(config: dict[str, Any]) -> str:
    """The configuration without its seed (and experiment name): jobs that differ only by seed share it."""
    rest = {k: v for k, v in config.items() if k not in ("seed", "experiment")}
    return json.dumps(rest, sort_keys=True)


def select(jobs: list[JobHistory], direction: str) -> Choice | None:
    """The model's best configuration by the shared rule (runner.selection): each done job's best value over its
    epochs, averaged over the configuration's seeds; a tie goes to the configuration with the earliest job."""
    counted = {job.job_id: job for job in jobs if job.status == "done" and job.best(direction) is not None}
    chosen = best([Result(config_id(job.config), job.job_id, job.best(direction)) for job in counted.values()],
                  direction)
    if chosen is None:
        return None
    first = counted[chosen.job_ids[0]]
    return Choice(config=first.config, key=first.key, value=chosen.value, candidates=chosen.candidates)


def final_jobs(spec: Spec, final: FinalSpec, config: dict[str, Any]) -> tuple[Job, ...]:
    jobs = []
    for seed in final.seeds:
        data = json.loads(json.dumps(config))
        data.update(seed=seed, experiment=spec.name)
        if final.epochs:
            data["train"]["epochs"] = final.epochs
        resolved = config_from_dict(data)
        model = resolved.model
        name = model.family if model.group == "trivial" else f"{model.family} {model.group}"
        geometric = resolved.augment.geometric
        label = f"{name}{'' if geometric == 'none' else f' +{geometric}'} final s{seed}"
        jobs.append((job_key(resolved), label, json.loads(json.dumps(resolved.to_dict()))))
    return tuple(jobs)
