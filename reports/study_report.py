"""What a study adds to an experiment's report: the answer paragraph, the final table and its sentences, the search
table, and five figures (forest, cost, calibration, search history, search parameters).

`view` returns None for a plain grid (no trials), so a grid's report is exactly what it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from equiv.group_names import parse_group
from reports import answer, final, study, study_figures, tables
from reports.load import Source, load_epochs, load_spec_text, load_trials

CAPTIONS = {
    "forest": ("Final evaluation: each model's test metric minus the plain model's, paired by seed, with the 95 % "
               "t interval; green or red only when the Holm-adjusted p is below 0.05; an interval crossing the zero "
               "line is no evidence of a difference."),
    "cost": ("Test metric (mean, 95 % t interval over seeds) against training time per job and evaluation speed; "
             "squares are plain models (+TTA: the same jobs averaged over the eight rot90/flips, 8 predictions per "
             "patch), the line is the Pareto front."),
    "calibration": ("Reliability diagram: observed tumour fraction against mean predicted P(tumour) in 10 "
                    "equal-width bins, pooled over each model's final seeds; on the diagonal is calibrated."),
    "search_history": ("Search metric per trial (mean over seeds of each job's best epoch); crosses are pruned "
                       "trials, the line is the best complete trial so far."),
    "search_parameters": "Search metric against each sampled parameter, per model; crosses are pruned trials.",
}
FINAL_CAPTION = ("Final evaluation: each model's best searched configuration re-run with the final seeds; test "
                 "metrics as mean ± std [95 % t interval]; Δ is paired by seed with the 95 % t interval of the "
                 "mean difference and the paired t-test's p; p Holm is adjusted over the family named in its "
                 "header (every model against the baseline); +TTA rows are the same jobs with the mean prediction "
                 "over the eight rot90/flips; cost is a multiple of the baseline's training and evaluation time.")


@dataclass(frozen=True)
class StudyView:
    trials: pd.DataFrame  # reports.load_trials
    results: pd.DataFrame  # one row per search trial (reports.study.trial_results)
    parameters: tuple[str, ...]  # sampled dotted keys
    log_keys: frozenset[str]  # parameters declared log-distributed
    final: pd.DataFrame  # numeric final table (empty until a final job is done)
    formatted: pd.DataFrame  # its display strings
    findings: tuple[str, ...]  # one sentence per model
    answer: str  # the paragraph that answers the question, first on the page
    reliability: pd.DataFrame  # calibration bins per model (reports.final.reliability)
    counts: pd.DataFrame  # trials per stream: complete, pruned (and when), failed
    notes: tuple[str, ...]


def view(engine: Source, experiment: str, task: str, jobs: pd.DataFrame,
         scoring: tables.Scoring | None = None) -> StudyView | None:
    """The study's part of the report, judged by `scoring` (by default the experiment's: tables.scoring_of)."""
    scoring = scoring or tables.scoring_of(jobs, task)
    trials = load_trials(engine, experiment)
    if trials.empty:
        return None
    spec_text = load_spec_text(engine, experiment)
    search_ids = trials.loc[trials["role"] == "search", "job_id"]
    metrics = {study.stream_metric(s, spec_text, task) for s in trials.loc[trials["role"] == "search", "stream"]}
    epochs = load_epochs(engine, search_ids, sorted(metrics))
    results = study.trial_results(trials, jobs, epochs, spec_text, task)
    parameters = study.searched_parameters(results)
    fields = parameters or tables.swept_hyperparameters(tables.done_jobs(jobs, task, scoring))
    numeric = final.final_table(jobs, trials, task, fields, scoring)
    formatted = final.format_final(numeric, task, scoring) if not numeric.empty else pd.DataFrame()
    return StudyView(trials=trials, results=results, parameters=tuple(parameters),
                     log_keys=frozenset(study.log_axes(spec_text)), final=numeric, formatted=formatted,
                     findings=final.findings(numeric, task, scoring), answer=answer.answer(numeric, task, scoring),
                     reliability=final.reliability(numeric, jobs), counts=study.pruned_counts(results),
                     notes=_notes(trials, jobs, results) + _final_notes(numeric, task))


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


def _final_notes(table: pd.DataFrame, task: str) -> tuple[str, ...]:
    """Which models have no TTA row and why, and the test-set interval of the best model's first job."""
    if table.empty or task != "classification":
        return ()
    notes = []
    plain_rows = table[~table["tta"]]
    with_tta = set(table.loc[table["tta"], "name"].str.removesuffix(final.TTA_SUFFIX))
    invariant = [n for n, g in zip(plain_rows["name"], plain_rows["group"]) if n not in with_tta and _d4(g)]
    if invariant:
        notes.append(f"No +TTA row for {', '.join(invariant)}: its group contains all eight rot90/flips, so "
                     "averaging over them changes nothing (as `predict --tta d4` says).")
    best = plain_rows.loc[plain_rows["test_auc_mean"].idxmax()] if plain_rows["test_auc_mean"].notna().any() else None
    if best is not None and pd.notna(best["test_auc_patch_low"]):
        notes.append(_uncertainty_note(best))
    return tuple(notes)


def _d4(group: str) -> bool:
    """Whether a group contains all eight rot90/flips: read from the group's name (no torch in the report)."""
    parsed = parse_group(group)
    return parsed.kind == "O2" or (parsed.kind == "D" and parsed.order % 4 == 0)


def _uncertainty_note(best: pd.Series) -> str:
    """The test-set interval of one trained model, and what was resampled: whole slides where the data names them."""
    head = (f"Test-set uncertainty of one trained model: {best['name']} (seed {int(best['patch_ci_seed'])}) has test "
            f"AUC {best['test_auc_patch']:.3f}, 95 % bootstrap interval")
    interval = f"[{best['test_auc_patch_low']:.3f}, {best['test_auc_patch_high']:.3f}]"
    groups = best.get("test_auc_patch_groups", float("nan"))
    if pd.notna(groups):
        return (f"{head} over the test set's {int(groups)} groups (slides or patients, resampled whole: patches of "
                f"one slide are not independent) {interval}.")
    return (f"{head} over test patches {interval}. Patches are resampled one by one; patches of one slide are not "
            "independent, so this is too narrow (a manifest or array file with a `group` column gets slide-level "
            "resampling; PCam's files carry no slide ids).")


def figure_builders(study_view: StudyView, task: str,
                    scoring: tables.Scoring | None = None) -> dict[str, Callable[[], Figure]]:
    return {
        "forest": lambda: study_figures.forest(study_view.final, task, scoring),
        "cost": lambda: study_figures.cost(study_view.final, task, scoring),
        "calibration": lambda: study_figures.calibration(study_view.reliability,
                                                         top_label=bool(scoring and len(scoring.classes) > 2)),
        "search_history": lambda: study_figures.search_history(study_view.results),
        "search_parameters": lambda: study_figures.search_parameters(
            study_view.results, list(study_view.parameters), set(study_view.log_keys)),
    }
