"""Which job `export --best` exports: the report's model selection, narrowed to one trained network.

The report picks, per (family, group, augmentation, data fraction), the hyperparameters with the best mean
validation metric over seeds. Here the full-data rows are narrowed by --family/--group, the row with the best mean
validation metric wins (by the same rule, runner.selection: a tie goes to the row whose earliest job came first),
and of its seeds the job with the best validation metric (the experiment's eval.metric; ties: the earliest) is the
network exported.
Where the database holds final-evaluation jobs (role `final`), only those are considered.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from reports.tables import FRACTION, best_config, scoring_of, select_models


class SelectionError(ValueError):
    """No finished job fits the request; the message lists what there is."""


def best_job_id(jobs: pd.DataFrame, task: str, family: str | None = None, group: str | None = None) -> int:
    """The job id of the selected model among `jobs` (a `reports.load` frame of one experiment)."""
    if "role" in jobs.columns and (jobs["role"] == "final").any():
        jobs = jobs[jobs["role"] == "final"]
    selected = select_models(jobs, task)
    if selected.empty:
        raise SelectionError("no finished job with a validation metric; run the experiment first "
                             "(python -m runner status shows its jobs)")
    if FRACTION in selected.columns:
        selected = selected[selected[FRACTION] == selected[FRACTION].max()]
    keep = np.ones(len(selected), dtype=bool)
    for column, wanted in (("family", family), ("group", group)):
        if wanted:
            keep &= (selected[column] == wanted).to_numpy()
    narrowed = selected[keep]
    if narrowed.empty:
        available = ", ".join(sorted({f"{f}/{g}" for f, g in zip(selected["family"], selected["group"])}))
        raise SelectionError(f"no selected model with family={family or 'any'} group={group or 'any'}; "
                             f"available (family/group): {available}")
    scoring = scoring_of(jobs, task)  # the experiment's eval.metric, as the report selects (nll: lowest wins)
    winner = best_config(jobs[jobs["config_key"].isin(set(narrowed["config_key"]))], task)
    seeds = jobs[jobs["job_id"].isin(winner.job_ids)].sort_values([scoring.valid, "job_id"],
                                                                   ascending=[not scoring.maximize, True],
                                                                   kind="mergesort")
    return int(seeds["job_id"].iloc[0])
