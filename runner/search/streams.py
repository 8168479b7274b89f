"""Streams: one search per model block and per combination of its plain-list axes, and the jobs of a trial.

A stream's key names the block and its grid point ("model[1] group=C4"), so it stays the same from run to run;
a trial's jobs are ordinary jobs (one per experiment seed) whose key is the hash of the resolved config.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runner.spec import Spec
from runner.spec.fields import field_types
from runner.spec.identity import block_points, build_config, job_key, make_label
from runner.spec.search import SearchSpec

Job = tuple[str, str, dict[str, Any]]  # (key, label, config) as the database stores it


@dataclass(frozen=True)
class Stream:
    key: str
    index: int  # order of appearance in the spec: ties between streams go to the lower index
    values: dict[str, Any]  # the block's values at this grid point
    swept: tuple[str, ...]  # the block's grid axes (for labels)
    search: SearchSpec
    config: dict[str, Any]  # the resolved config at this grid point before any sampled value (first seed)


def streams(spec: Spec) -> list[Stream]:
    out = []
    for block in spec.blocks:
        if block.search is None:
            continue
        for values, swept in block_points(block):
            family, group = values.get("model.family", "cnn"), values.get("model.group", "trivial")
            point = " ".join(f"{k.split('.', 1)[1]}={values[k]}" for k in swept
                             if k not in ("model.family", "model.group"))
            key = " ".join(p for p in (f"model[{block.index}]", family, "" if group == "trivial" else group, point) if p)
            base = build_config(spec.name, spec.task, spec.seeds[0], values).to_dict()
            out.append(Stream(key=key, index=len(out), values=values, swept=tuple(swept), search=block.search,
                              config=json.loads(json.dumps(base))))
    return out


def typed(dotted: str, value: Any) -> Any:
    """A sampled value in its spec field's type: floats stay floats (1 and 1.0 must hash to the same job)."""
    section, name = dotted.split(".", 1)
    return float(value) if field_types(section)[name] is float else value


def trial_jobs(spec: Spec, stream: Stream, number: int, params: dict[str, Any]) -> tuple[Job, ...]:
    values = {**stream.values, **{k: typed(k, v) for k, v in params.items()}}
    jobs = []
    for seed in spec.seeds:
        config = build_config(spec.name, spec.task, seed, values)
        jobs.append((job_key(config), trial_label(make_label(config, list(stream.swept)), number),
                     json.loads(json.dumps(config.to_dict()))))
    return tuple(jobs)


def trial_label(label: str, number: int | str) -> str:
    """'gcnn D4 s0' -> 'gcnn D4 #3 s0': the trial number before the seed."""
    head, _, seed = label.rpartition(" ")
    return f"{head} #{number} {seed}"
