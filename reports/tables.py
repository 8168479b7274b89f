"""Model selection on validation and the comparison table: numeric frame, then markdown, CSV and LaTeX text.

Selection: for each (family, group, augment.geometric[, data.fraction]) the hyperparameter set (config minus
seed) with the best mean validation metric over its seeds, by the rule a study's final stage and `export --best`
use too (runner.selection: ties go to the set whose earliest job has the smallest job id); its test metrics are
reported as mean ± std over seeds.
The table shows the full-data rows (largest data.fraction); the other fractions feed the data-efficiency figure.

A classification experiment is judged by its eval.metric (a `Scoring`): selection on valid_<metric>, the headline
and the Δ column on test_<metric>, lower is better for nll; the default, auc, is the table as it always was. With
more than two classes the table adds balanced accuracy and each class's recall, named by class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from equiv.group_names import PLAIN_FAMILIES
from runner.selection import Best, Result, best
from runner.spec.config import FAMILIES, GEOMETRIC_AUGMENTS
from runner.spec.search import METRIC_DIRECTIONS

VALIDATION_METRIC = {"classification": "valid_auc", "segmentation": "valid_dice"}
HEADLINE_METRIC = {"classification": "test_auc", "segmentation": "test_dice"}
TEST_METRICS = {"classification": ("test_accuracy", "test_auc", "test_nll", "test_f1"),
                "segmentation": ("test_dice", "test_iou", "test_object_f1", "test_pixel_accuracy")}
# invariance_error: over the model's own exact elements (0 for a plain CNN: its group is trivial);
# grid_error: over all eight rot90/flip elements, the same yardstick for every model; rot45_error: a 45 deg turn
# (interpolated, on a centred disk), the off-grid yardstick for every model.
ERROR_METRICS = {"classification": ("invariance_error", "grid_error", "offgrid_error", "rot45_error"),
                 "segmentation": ("equivariance_error", "grid_error")}
COST_METRICS = ("train_seconds", "train_images_per_s", "eval_images_per_s")
ROW_KEYS = ("family", "group", "augment.geometric")
FRACTION = "data.fraction"
GROUP_ORDER = ("trivial", "flip", "C4", "D4", "C8", "D8", "SO2", "O2")
# Config fields that name the row (or duplicate a row key), so they are not "hyperparameters" of it.
_NOT_HYPERPARAMETERS = set(ROW_KEYS) | {FRACTION, "model.family", "model.group"}

_HEADERS = {"test_accuracy": "Test acc.", "test_auc": "Test AUC", "test_nll": "Test NLL", "test_f1": "Test F1",
            "test_dice": "Test Dice", "test_iou": "Test IoU", "test_object_f1": "Object F1",
            "test_pixel_accuracy": "Pixel acc.", "invariance_error": "Own-group error", "grid_error": "D4-grid error", "rot45_error": "45° error",
            "offgrid_error": "Off-grid error", "equivariance_error": "Equiv. error",
            "train_seconds": "Train time (s)", "train_images_per_s": "Train img/s",
            "eval_images_per_s": "Eval img/s"}


_WORDS = {"auc": "AUC", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1": "F1", "nll": "NLL",
          "dice": "Dice"}
_TEST_HEADERS = {"test_balanced_accuracy": "Test bal. acc."}


@dataclass(frozen=True)
class Scoring:
    """What an experiment's models are compared by: `metric` (eval.metric for classification, dice for
    segmentation) and, for more than two classes, the class names in label order (their recalls join the table)."""

    task: str
    metric: str
    classes: tuple[str, ...] = ()

    @property
    def valid(self) -> str:
        return f"valid_{self.metric}"

    @property
    def test(self) -> str:
        return f"test_{self.metric}"

    @property
    def direction(self) -> str:
        return METRIC_DIRECTIONS.get(self.valid, "maximize")

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def word(self) -> str:
        """'AUC', 'NLL', 'Dice': how sentences and headers name the metric."""
        return _WORDS.get(self.metric, self.metric)

    @property
    def recalls(self) -> tuple[str, ...]:
        """test_recall_<k> per class when there are more than two; none for a binary experiment."""
        return tuple(f"test_recall_{k}" for k in range(len(self.classes))) if len(self.classes) > 2 else ()

    @property
    def test_metrics(self) -> tuple[str, ...]:
        """The table's test columns: the task's four, the headline if it is not among them, then for K classes
        balanced accuracy and the per-class recalls."""
        extra = [self.test, *(["test_balanced_accuracy"] if self.recalls else []), *self.recalls]
        return tuple(dict.fromkeys([*TEST_METRICS[self.task], *extra]))

    def header(self, metric: str) -> str:
        """A test column's header: 'Test AUC', 'Test bal. acc.', 'Recall stroma'."""
        if metric in self.recalls:
            return f"Recall {self.classes[self.recalls.index(metric)]}"
        return _HEADERS.get(metric) or _TEST_HEADERS.get(metric) or metric

    def best_of(self, values: pd.Series) -> Any:
        """The index of the best value (highest, lowest for nll); values must not be all NaN."""
        return values.idxmax() if self.maximize else values.idxmin()


def default_scoring(task: str) -> Scoring:
    """AUC for classification and Dice for segmentation: the report before eval.metric existed."""
    return Scoring(check_task(task), "auc" if task == "classification" else "dice")


def scoring_of(jobs: pd.DataFrame, task: str, classes: tuple[str, ...] = ()) -> Scoring:
    """The experiment's scoring from its jobs' configs: the eval.metric most of them use (auc where none says),
    and `classes` (from its confusion artifacts), else label indices where jobs recorded per-class recall."""
    scoring = default_scoring(task)
    if task != "classification":
        return scoring
    stated = jobs["eval.metric"].dropna() if "eval.metric" in jobs.columns else pd.Series(dtype=object)
    metric = str(stated.mode().iloc[0]) if not stated.empty else scoring.metric
    recorded = sum(1 for c in jobs.columns if str(c).startswith("test_recall_"))
    if len(classes) <= 2 < recorded:
        classes = tuple(str(k) for k in range(recorded))
    return Scoring(task, metric, tuple(classes))


def check_task(task: str) -> str:
    if task not in VALIDATION_METRIC:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(VALIDATION_METRIC)}")
    return task


def group_sort_key(group: str) -> tuple[int, str]:
    """trivial, flip, C4, D4, C8, D8, SO2, O2, then any other group by name."""
    return (GROUP_ORDER.index(group), "") if group in GROUP_ORDER else (len(GROUP_ORDER), str(group))


def _order_key(column: pd.Series) -> pd.Series:
    orders = {"family": FAMILIES, "augment.geometric": GEOMETRIC_AUGMENTS}
    if column.name == "group":
        return column.map(lambda g: "%03d %s" % group_sort_key(g))
    if column.name in orders:
        order = orders[column.name]
        return column.map(lambda v: "%03d %s" % (order.index(v) if v in order else len(order), v))
    return column


def done_jobs(jobs: pd.DataFrame, task: str, scoring: Scoring | None = None) -> pd.DataFrame:
    """Jobs that finished and have the validation metric: the only ones selection can use."""
    metric = (scoring or scoring_of(jobs, check_task(task))).valid
    if metric not in jobs.columns:
        return jobs.iloc[0:0]
    return jobs[(jobs["status"] == "done") & jobs[metric].notna()]


def swept_hyperparameters(done: pd.DataFrame) -> list[str]:
    """Config fields that take more than one value among finished jobs (excluding row keys and the seed)."""
    fields = [c for c in done.columns if "." in c and c not in _NOT_HYPERPARAMETERS]
    return sorted(c for c in fields if done[c].astype(str).nunique() > 1)


def row_keys(done: pd.DataFrame) -> list[str]:
    return list(ROW_KEYS) + ([FRACTION] if FRACTION in done.columns else [])


def select_models(jobs: pd.DataFrame, task: str, scoring: Scoring | None = None) -> pd.DataFrame:
    """One row per (family, group, augment.geometric, data.fraction): the best config on mean validation.

    Columns: the row keys, name (a short display name), config_key, hyperparameters ("lr=0.003, width=32"),
    n_seeds, job_ids (tuple), params, `<metric>_mean` and `<metric>_std` for validation and test metrics,
    and the mean of each cost and error metric. Empty (with no rows) when no job is done.
    `scoring`: by default the experiment's own (scoring_of).
    """
    scoring = scoring or scoring_of(jobs, task)
    done = done_jobs(jobs, task, scoring)
    if done.empty:
        return pd.DataFrame()
    keys = row_keys(done)
    winners = [best_config(model, task, scoring) for _, model in done.groupby(keys, sort=False, dropna=False)]
    chosen = done[done["config_key"].isin({w.config for w in winners if w is not None})]
    table = _aggregate(chosen, scoring, keys)
    table["hyperparameters"] = _describe(chosen, swept_hyperparameters(done)).reindex(table["config_key"]).values
    table["name"] = [display_name(f, g, a) for f, g, a in zip(table["family"], table["group"],
                                                              table["augment.geometric"])]
    return table.sort_values(keys, key=_order_key, kind="mergesort").reset_index(drop=True)


def best_config(jobs: pd.DataFrame, task: str, scoring: Scoring | None = None) -> Best | None:
    """The shared rule (runner.selection) over `jobs`' finished rows: the config_key with the best mean validation
    metric, ties to the earliest job. None when no row is done with the metric."""
    scoring = scoring or scoring_of(jobs, task)
    done = done_jobs(jobs, task, scoring)
    results = [Result(c, int(j), float(v)) for c, j, v in zip(done["config_key"], done["job_id"],
                                                              done[scoring.valid])]
    return best(results, scoring.direction)


def display_name(family: str, group: str, geometric: str) -> str:
    """'cnn', 'cnn +d4', 'gcnn C8': a short legend label for a selected model."""
    name = family if group == "trivial" else f"{family} {group}"
    return name if geometric in ("none", "", None) else f"{name} +{geometric}"


def _aggregate(chosen: pd.DataFrame, scoring: Scoring, keys: list[str]) -> pd.DataFrame:
    spread = list(dict.fromkeys([VALIDATION_METRIC[scoring.task], scoring.valid, *scoring.test_metrics]))
    means = [*COST_METRICS, *ERROR_METRICS[scoring.task]]
    chosen = chosen.reindex(columns=list(dict.fromkeys([*chosen.columns, *spread, *means])))
    grouped = chosen.groupby("config_key", sort=False)
    parts = {"n_seeds": grouped["seed"].nunique(), "job_ids": grouped["job_id"].agg(lambda s: tuple(sorted(s))),
             "params": grouped["params"].mean()}
    parts.update({f"{m}_mean": grouped[m].mean() for m in spread})
    parts.update({f"{m}_std": grouped[m].std(ddof=1) for m in spread})
    parts.update({m: grouped[m].mean() for m in means})
    firsts = grouped[keys].first()
    return pd.concat([firsts, pd.DataFrame(parts)], axis=1).reset_index()


def _describe(chosen: pd.DataFrame, fields: list[str], number: str = "{:g}") -> pd.Series:
    """'lr=0.003, width=32' per config_key, naming each swept field by its last part when that is unambiguous;
    floats written with `number` (sampled values want fewer digits than grid values)."""
    short = {f: f.split(".", 1)[1] for f in fields}
    if len(set(short.values())) < len(short):
        short = {f: f for f in fields}
    firsts = chosen.groupby("config_key")[fields].first() if fields else None

    def text(config_key: str) -> str:
        return ", ".join(f"{short[f]}={_value(firsts.at[config_key, f], number)}" for f in fields) if fields else ""

    keys = sorted(chosen["config_key"].unique())
    return pd.Series([text(k) for k in keys], index=keys)


def _value(value: Any, number: str = "{:g}") -> str:
    return number.format(value) if isinstance(value, (float, np.floating)) else str(value)


def comparison_table(selected: pd.DataFrame, task: str, scoring: Scoring | None = None) -> pd.DataFrame:
    """The numeric table (what the CSV holds): full-data rows plus `delta_<headline>` vs the best plain model.

    The best plain model is the plain-family row (cnn/unet) with the best mean validation metric (ties as in
    selection: to the earliest job); without one the delta is NaN. `scoring`: default_scoring(task) if not given.
    """
    if selected.empty:
        return selected
    scoring = scoring or default_scoring(task)
    table = selected
    if FRACTION in table.columns:
        table = table[table[FRACTION] == table[FRACTION].max()]
    reference = _plain_reference(table, scoring)
    columns = ["name", *row_keys(table), "hyperparameters", "n_seeds", "params", f"{scoring.valid}_mean"]
    for metric in scoring.test_metrics:
        columns += [f"{metric}_mean", f"{metric}_std"]
    table = table.assign(**{f"delta_{scoring.test}": table[f"{scoring.test}_mean"] - reference})
    columns += [f"delta_{scoring.test}", *ERROR_METRICS[task], *COST_METRICS, "job_ids"]
    return table[columns].reset_index(drop=True)


def _plain_reference(table: pd.DataFrame, scoring: Scoring) -> float:
    """The headline mean of the best plain-family row by the shared rule, NaN without one. Each row is one
    configuration: its mean validation metric is its value and its earliest job breaks a tie."""
    plain = table[table["family"].isin(PLAIN_FAMILIES)]
    valid = f"{scoring.valid}_mean"
    results = [Result(c, min(ids), v) for c, ids, v in zip(plain["config_key"], plain["job_ids"], plain[valid])]
    chosen = best(results, scoring.direction)
    if chosen is None:
        return math.nan
    return float(plain.loc[plain["config_key"] == chosen.config, f"{scoring.test}_mean"].iloc[0])


def format_table(table: pd.DataFrame, task: str, scoring: Scoring | None = None) -> pd.DataFrame:
    """Display strings: 'mean ± std' per test metric, a signed delta, readable counts and times."""
    scoring = scoring or default_scoring(task)
    plain = "CNN" if task == "classification" else "U-Net"
    out = pd.DataFrame({"Model": table["family"], "Group": table["group"], "Augment": table["augment.geometric"],
                        "Hyperparameters": table["hyperparameters"].replace("", "–"),
                        "Params": table["params"].map(_count)})
    for metric in scoring.test_metrics:
        out[scoring.header(metric)] = [_spread(m, s) for m, s in zip(table[f"{metric}_mean"],
                                                                      table[f"{metric}_std"])]
    out[f"Δ {scoring.word} vs {plain}"] = table[f"delta_{scoring.test}"].map(_signed)
    for metric in ERROR_METRICS[task]:
        out[_HEADERS[metric]] = table[metric].map(lambda v: _missing(v) or f"{v:.2g}")
    out[_HEADERS["train_seconds"]] = table["train_seconds"].map(lambda v: _missing(v) or f"{v:,.0f}")
    for metric in COST_METRICS[1:]:
        out[_HEADERS[metric]] = table[metric].map(lambda v: _missing(v) or f"{v:,.0f}")
    out["Seeds"] = table["n_seeds"].map(str)
    return out


def _missing(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else ""


def _spread(mean: float, std: float) -> str:
    if _missing(mean):
        return "–"
    return f"{mean:.3f}" if _missing(std) else f"{mean:.3f} ± {std:.3f}"


def _signed(value: float) -> str:
    return _missing(value) or f"{value:+.3f}"


def _count(value: float) -> str:
    if _missing(value):
        return "–"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def to_markdown(formatted: pd.DataFrame) -> str:
    if formatted.empty:
        return "_No finished jobs with a validation metric yet._\n"
    return formatted.to_markdown(index=False, tablefmt="pipe", disable_numparse=True) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """Full-precision numbers, one column per statistic, job ids space-separated: for further analysis."""
    if "job_ids" in table.columns:
        table = table.assign(job_ids=table["job_ids"].map(lambda ids: " ".join(map(str, ids))))
    return table.to_csv(index=False, float_format="%.6g", lineterminator="\n")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def to_latex(formatted: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); text columns left, numbers right."""
    align = "".join("l" if c in ("Model", "Group", "Augment", "Hyperparameters") else "r" for c in formatted)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in formatted.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in formatted.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
