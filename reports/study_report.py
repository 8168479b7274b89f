"""What a study adds to an experiment's report: the final table and its sentences, the search table, three figures.

`view` returns None for a plain grid (no trials), so a grid's report is exactly what it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from reports import final, study, study_figures, tables
from reports.load import Source, load_epochs, load_spec_text, load_trials

CAPTIONS = {
    "forest": ("Final evaluation: each model's test metric minus the plain model's, paired by seed, with the 95 % "
               "t interval; green or red only when the Holm-adjusted p is below 0.05; an interval crossing the zero "
               "line is no evidence of a difference."),
    "search_history": ("Search metric per trial (mean over seeds of each job's best epoch); crosses are pruned "
                       "trials, the line is the best complete trial so far."),
    "search_parameters": "Search metric against each sampled parameter, per model; crosses are pruned trials.",
}
FINAL_CAPTION = ("Final evaluation: each model's best searched configuration re-run with the final seeds; test "
                 "metrics as mean ± std [95 % t interval]; Δ is paired by seed with the 95 % t interval of the "
                 "mean difference and the paired t-test's p; p Holm is adjusted over the family named in its "
                 "header (every model against the baseline).")


@dataclass(frozen=True)
class StudyView:
    trials: pd.DataFrame  # reports.load_trials
    results: pd.DataFrame  # one row per search trial (reports.study.trial_results)
    parameters: tuple[str, ...]  # sampled dotted keys
    log_keys: frozenset[str]  # parameters declared log-distributed
    final: pd.DataFrame  # numeric final table (empty until a final job is done)
    formatted: pd.DataFrame  # its display strings
    findings: tuple[str, ...]  # one sentence per model
    counts: pd.DataFrame  # trials per stream: complete, pruned (and when), failed
    notes: tuple[str, ...]


def view(engine: Source, experiment: str, task: str, jobs: pd.DataFrame) -> StudyView | None:
    trials = load_trials(engine, experiment)
    if trials.empty:
        return None
    spec_text = load_spec_text(engine, experiment)
    search_ids = trials.loc[trials["role"] == "search", "job_id"]
    metrics = {study.stream_metric(s, spec_text, task) for s in trials.loc[trials["role"] == "search", "stream"]}
    epochs = load_epochs(engine, search_ids, sorted(metrics))
    results = study.trial_results(trials, jobs, epochs, spec_text, task)
    parameters = study.searched_parameters(results)
    fields = parameters or tables.swept_hyperparameters(tables.done_jobs(jobs, task))
    numeric = final.final_table(jobs, trials, task, fields)
    formatted = final.format_final(numeric, task) if not numeric.empty else pd.DataFrame()
    return StudyView(trials=trials, results=results, parameters=tuple(parameters),
                     log_keys=frozenset(study.log_axes(spec_text)), final=numeric, formatted=formatted,
                     findings=final.findings(numeric, task), counts=study.pruned_counts(results),
                     notes=_notes(trials, jobs, results))


def _notes(trials: pd.DataFrame, jobs: pd.DataFrame, results: pd.DataFrame) -> tuple[str, ...]:
    notes = []
    pruned = results[results["state"] == "pruned"]
    if not results.empty:
        per_model = pruned.groupby("name", sort=False).size()
        notes.append(f"Search: {len(pruned)} of {len(results)} trials pruned"
                     + (" (" + ", ".join(f"{name} {count}" for name, count in per_model.items()) + ")"
                        if len(per_model) else "") + "; see the search table.")
    status = jobs.set_index("job_id")["status"]
    for stream, part in trials[trials["role"] == "final"].groupby("stream", sort=False):
        done = int((status.reindex(part["job_id"]) == "done").sum())
        if done < len(part):
            name = study.model_name(jobs, int(part["job_id"].iloc[0]))
            notes.append(f"Final evaluation of {name}: {done} of {len(part)} seeds done; its statistics use those.")
    return tuple(notes)


def figure_builders(study_view: StudyView, task: str) -> dict[str, Callable[[], Figure]]:
    return {
        "forest": lambda: study_figures.forest(study_view.final, task),
        "search_history": lambda: study_figures.search_history(study_view.results),
        "search_parameters": lambda: study_figures.search_parameters(
            study_view.results, list(study_view.parameters), set(study_view.log_keys)),
    }
