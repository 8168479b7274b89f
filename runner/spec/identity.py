"""Spec -> jobs: expand sweeps into one JobConfig per job, and give each job a stable key.

The key is a hash of the canonical resolved config without non-semantic fields (where data lives, how often to
checkpoint), so moving the data folder or changing checkpoint frequency never re-runs finished jobs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from equiv.group_names import PLAIN_FAMILIES
from runner.spec import config as C
from runner.spec.fields import SECTIONS
from runner.spec.parse import ModelBlock, Spec

# Fields that do not change results: excluded from the job key.
NON_SEMANTIC = {"data.root", "data.path", "data.in_memory", "train.checkpoint_minutes"}
# Fields added after jobs were first keyed: left out of the key at their default, so existing jobs keep their keys.
KEY_NEUTRAL_DEFAULTS = {"model.pool": "blur", "data.crop": 0, "eval.metric": "auc"}


@dataclass(frozen=True)
class Job:
    key: str
    label: str
    config: C.JobConfig


def expand(spec: Spec) -> list[Job]:
    """Every grid job of the spec, in a stable order (block, sweep values, seed); duplicates dropped."""
    jobs: dict[str, Job] = {}
    for block in spec.blocks:
        if block.search is not None:
            continue  # its jobs are sampled trials, planned from the database (runner.search)
        for values, swept in block_points(block):
            for seed in spec.seeds:
                config = build_config(spec.name, spec.task, seed, values)
                key = job_key(config)
                jobs.setdefault(key, Job(key=key, label=make_label(config, swept), config=config))
    return list(jobs.values())


def block_points(block: ModelBlock) -> list[tuple[dict[str, Any], list[str]]]:
    """The cartesian product of the block's swept keys (sorted for determinism)."""
    swept = sorted(k for k, v in block.values.items() if isinstance(v, list))
    fixed = {k: v for k, v in block.values.items() if k not in swept}
    points = []
    for combo in itertools.product(*(block.values[k] for k in swept)):
        points.append(({**fixed, **dict(zip(swept, combo))}, swept))
    return points


def build_config(name: str, task: str, seed: int, values: dict[str, Any]) -> C.JobConfig:
    sections = {}
    for section, cls in SECTIONS.items():
        prefix = section + "."
        sections[section] = cls(**{k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)})
    if sections["model"].family in PLAIN_FAMILIES:
        sections["model"] = dataclasses.replace(sections["model"], group="trivial")
    return C.JobConfig(experiment=name, task=task, seed=seed, **sections)


def canonical(config: C.JobConfig) -> dict[str, Any]:
    """The config as plain JSON-able data, with the non-semantic fields and the experiment name removed."""
    data = json.loads(json.dumps(config.to_dict()))
    data.pop("experiment")
    for dotted in NON_SEMANTIC:
        section, key = dotted.split(".")
        data[section].pop(key, None)
    for dotted, default in KEY_NEUTRAL_DEFAULTS.items():
        section, key = dotted.split(".")
        if data[section].get(key) == default:
            del data[section][key]
    return data


def job_key(config: C.JobConfig) -> str:
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_label(config: C.JobConfig, swept: list[str]) -> str:
    """A short readable name: family, group, the swept values, seed (e.g. 'gcnn D4 lr=0.001 s1')."""
    parts = [config.model.family]
    if config.model.family in ("gcnn", "gunet"):
        parts.append(config.model.group)
    as_dict = config.to_dict()
    for dotted in swept:
        if dotted in ("model.family", "model.group"):
            continue
        section, key = dotted.split(".")
        parts.append(f"{key}={as_dict[section][key]:g}" if isinstance(as_dict[section][key], float)
                     else f"{key}={as_dict[section][key]}")
    parts.append(f"s{config.seed}")
    return " ".join(parts)


def config_from_dict(data: dict[str, Any]) -> C.JobConfig:
    """Inverse of JobConfig.to_dict (used to rebuild a job's config from the database or a checkpoint)."""
    sections = {}
    for section, cls in SECTIONS.items():
        values = dict(data[section])
        if section == "eval":
            values["rotation_angles"] = tuple(values["rotation_angles"])
        sections[section] = cls(**values)
    return C.JobConfig(experiment=data["experiment"], task=data["task"], seed=data["seed"], **sections)
