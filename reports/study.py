"""A study's search stage as frames: one row per search trial (its value, state and sampled params), pruned counts.

The trial's value is what the sampler was told: per job the best value of the search metric over the epochs it ran,
averaged over the trial's seeds. A pruned trial's value is therefore its best before it was stopped, not comparable
with a complete trial's, and figures mark it apart. The search metric and which axes are log-distributed come from
the spec text stored with the experiment; a spec that cannot be read falls back to the task's validation metric.
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from reports.tables import display_name
from runner.spec.search import METRIC_DIRECTIONS, default_metric, merge_search

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# A trial's state from its jobs' statuses; the first that any job has wins (as in runner.search.history).
STATES = (("running", ("queued", "running", "interrupted")), ("failed", ("failed",)), ("pruned", ("pruned",)))
_BLOCK = re.compile(r"^model\[(\d+)\]")


def _document(spec_toml: str) -> dict[str, Any]:
    """The stored spec as a table; empty when it does not parse (the report still renders)."""
    try:
        return tomllib.loads(spec_toml)
    except tomllib.TOMLDecodeError:
        return {}


def search_tables(spec_toml: str) -> tuple[dict[str, Any] | None, list[dict[str, Any] | None]]:
    """The experiment-wide [search] table and each [[model]] block's merged one (None where absent or unreadable)."""
    document = _document(spec_toml)
    if not document:
        return None, []
    top = document.get("search") if isinstance(document.get("search"), dict) else None
    blocks = document.get("model") if isinstance(document.get("model"), list) else []
    merged = [merge_search(top, block.get("search")) if isinstance(block, dict) else top for block in blocks]
    return top, merged


def stream_metric(stream: str, spec_toml: str, task: str) -> str:
    """The validation metric the stream's search compared (its block's [model.search].metric, else [search])."""
    top, blocks = search_tables(spec_toml)
    match = _BLOCK.match(str(stream))
    table = blocks[int(match.group(1))] if match and int(match.group(1)) < len(blocks) else top
    fallback = default_metric(task, _document(spec_toml).get("eval"))
    metric = (table or {}).get("metric", fallback)
    return metric if metric in METRIC_DIRECTIONS else fallback


def log_axes(spec_toml: str) -> set[str]:
    """Dotted keys declared `{ log = [...] }` in any [search.space] of the spec."""
    top, blocks = search_tables(spec_toml)
    spaces = [table.get("space") for table in (top, *blocks) if table]
    return {key for space in spaces if isinstance(space, dict)
            for key, value in space.items() if isinstance(value, dict) and "log" in value}


def trial_results(trials: pd.DataFrame, jobs: pd.DataFrame, epochs: pd.DataFrame, spec_toml: str,
                  task: str) -> pd.DataFrame:
    """One row per search trial: stream, number, state (complete | pruned | failed | running), metric, value,
    n_jobs, pruned_epoch (the epoch its pruned jobs stopped after, NaN if none), name (the model's short name),
    then one column per sampled parameter."""
    search = trials[trials["role"] == "search"]
    if search.empty:
        return pd.DataFrame(columns=["stream", "number", "state", "metric", "value", "n_jobs", "pruned_epoch",
                                     "name"])
    status = jobs.set_index("job_id")["status"]
    rows = []
    for (stream, number), part in search.groupby(["stream", "number"], sort=False):
        metric = stream_metric(stream, spec_toml, task)
        ids = part["job_id"].tolist()
        rows.append({"stream": stream, "number": int(number), "state": _state(status.reindex(ids)),
                     "metric": metric, "value": _trial_value(epochs, ids, metric),
                     "n_jobs": len(ids), "pruned_epoch": _pruned_epoch(epochs, status, ids),
                     "name": model_name(jobs, ids[0]), **part["params"].iloc[0]})
    frame = pd.DataFrame(rows)
    return frame.sort_values(["stream", "number"], kind="mergesort").reset_index(drop=True)


def _state(statuses: pd.Series) -> str:
    for state, members in STATES:
        if statuses.isin(members).any():
            return state
    return "complete"


def _trial_value(epochs: pd.DataFrame, job_ids: list[int], metric: str) -> float:
    """Mean over the trial's jobs of each job's best epoch value; NaN unless every job has one."""
    direction = METRIC_DIRECTIONS[metric]
    values = epochs[(epochs["name"] == metric) & epochs["job_id"].isin(job_ids)].dropna(subset=["value"])
    best = values.groupby("job_id")["value"].agg("max" if direction == "maximize" else "min")
    return float(best.mean()) if len(best) == len(job_ids) else math.nan


def _pruned_epoch(epochs: pd.DataFrame, status: pd.Series, job_ids: list[int]) -> float:
    pruned = [j for j in job_ids if status.get(j) == "pruned"]
    ran = epochs[epochs["job_id"].isin(pruned)]
    return float(ran.groupby("job_id")["epoch"].max().max() + 1) if not ran.empty else math.nan


def model_name(jobs: pd.DataFrame, job_id: int) -> str:
    """'gcnn D4', 'cnn +d4': the short name of the model a job trains."""
    row = jobs.set_index("job_id").loc[job_id]
    return display_name(row["family"], row["group"], row.get("augment.geometric", "none"))


def searched_parameters(results: pd.DataFrame) -> list[str]:
    """The sampled parameters (dotted keys) in the order first seen."""
    fixed = {"stream", "number", "state", "metric", "value", "n_jobs", "pruned_epoch", "name"}
    return [column for column in results.columns if column not in fixed]


def pruned_counts(results: pd.DataFrame) -> pd.DataFrame:
    """Per stream: trials, complete, pruned (with the epochs they stopped after), failed, running, best value."""
    rows = []
    for stream, part in results.groupby("stream", sort=False):
        pruned = part[part["state"] == "pruned"]
        complete = part[part["state"] == "complete"]
        direction = METRIC_DIRECTIONS[part["metric"].iloc[0]]
        best = complete["value"].max() if direction == "maximize" else complete["value"].min()
        rows.append({"Stream": stream, "Model": part["name"].iloc[0], "Metric": part["metric"].iloc[0],
                     "Trials": len(part), "Complete": len(complete), "Pruned": len(pruned),
                     "Pruned after": _epochs_text(pruned["pruned_epoch"]),
                     "Failed": int((part["state"] == "failed").sum()),
                     "Running": int((part["state"] == "running").sum()),
                     "Best complete": "–" if np.isnan(best) else f"{best:.3f}"})
    return pd.DataFrame(rows)


def _epochs_text(epochs: pd.Series) -> str:
    """'epoch 1: 3, epoch 2: 1' (how many pruned trials stopped after each epoch)."""
    counts = epochs.dropna().astype(int).value_counts().sort_index()
    return ", ".join(f"epoch {epoch}: {count}" for epoch, count in counts.items()) or "–"
