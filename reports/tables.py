"""Model selection on validation and the comparison table: numeric frame, then markdown, CSV and LaTeX text.

Selection: for each (family, group, augment.geometric[, data.fraction]) the hyperparameter set (config minus
seed) with the best mean validation metric over its seeds, by the rule a study's final stage and `export --best`
use too (runner.selection: ties go to the set whose earliest job has the smallest job id); its test metrics are
reported as mean ± std over seeds.
The table shows the full-data rows (largest data.fraction); the other fractions feed the data-efficiency figure.
"""
from __future__ import annotations

import math
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


def done_jobs(jobs: pd.DataFrame, task: str) -> pd.DataFrame:
    """Jobs that finished and have the validation metric: the only ones selection can use."""
    metric = VALIDATION_METRIC[check_task(task)]
    if metric not in jobs.columns:
        return jobs.iloc[0:0]
    return jobs[(jobs["status"] == "done") & jobs[metric].notna()]


def swept_hyperparameters(done: pd.DataFrame) -> list[str]:
    """Config fields that take more than one value among finished jobs (excluding row keys and the seed)."""
    fields = [c for c in done.columns if "." in c and c not in _NOT_HYPERPARAMETERS]
    return sorted(c for c in fields if done[c].astype(str).nunique() > 1)


def row_keys(done: pd.DataFrame) -> list[str]:
    return list(ROW_KEYS) + ([FRACTION] if FRACTION in done.columns else [])


def select_models(jobs: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (family, group, augment.geometric, data.fraction): the best config on mean validation.

    Columns: the row keys, name (a short display name), config_key, hyperparameters ("lr=0.003, width=32"),
    n_seeds, job_ids (tuple), params, `<metric>_mean` and `<metric>_std` for validation and test metrics,
    and the mean of each cost and error metric. Empty (with no rows) when no job is done.
    """
    done = done_jobs(jobs, task)
    if done.empty:
        return pd.DataFrame()
    keys = row_keys(done)
    winners = [best_config(model, task) for _, model in done.groupby(keys, sort=False, dropna=False)]
    chosen = done[done["config_key"].isin({w.config for w in winners if w is not None})]
    table = _aggregate(chosen, task, keys)
    table["hyperparameters"] = _describe(chosen, swept_hyperparameters(done)).reindex(table["config_key"]).values
    table["name"] = [display_name(f, g, a) for f, g, a in zip(table["family"], table["group"],
                                                              table["augment.geometric"])]
    return table.sort_values(keys, key=_order_key, kind="mergesort").reset_index(drop=True)


def best_config(jobs: pd.DataFrame, task: str) -> Best | None:
    """The shared rule (runner.selection) over `jobs`' finished rows: the config_key with the best mean validation
    metric, ties to the earliest job. None when no row is done with the metric."""
    done = done_jobs(jobs, task)
    metric = VALIDATION_METRIC[task]
    results = [Result(c, int(j), float(v)) for c, j, v in zip(done["config_key"], done["job_id"], done[metric])]
    return best(results, METRIC_DIRECTIONS[metric])


def display_name(family: str, group: str, geometric: str) -> str:
    """'cnn', 'cnn +d4', 'gcnn C8': a short legend label for a selected model."""
    name = family if group == "trivial" else f"{family} {group}"
    return name if geometric in ("none", "", None) else f"{name} +{geometric}"


def _aggregate(chosen: pd.DataFrame, task: str, keys: list[str]) -> pd.DataFrame:
    spread = [VALIDATION_METRIC[task], *TEST_METRICS[task]]
    means = [*COST_METRICS, *ERROR_METRICS[task]]
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


def comparison_table(selected: pd.DataFrame, task: str) -> pd.DataFrame:
    """The numeric table (what the CSV holds): full-data rows plus `delta_<headline>` vs the best plain model.

    The best plain model is the plain-family row (cnn/unet) with the best mean validation metric (ties as in
    selection: to the earliest job); without one the delta is NaN.
    """
    if selected.empty:
        return selected
    table = selected
    if FRACTION in table.columns:
        table = table[table[FRACTION] == table[FRACTION].max()]
    headline, valid = f"{HEADLINE_METRIC[task]}_mean", f"{VALIDATION_METRIC[task]}_mean"
    reference = _plain_reference(table, task)
    columns = ["name", *row_keys(table), "hyperparameters", "n_seeds", "params", valid]
    for metric in TEST_METRICS[task]:
        columns += [f"{metric}_mean", f"{metric}_std"]
    table = table.assign(**{f"delta_{HEADLINE_METRIC[task]}": table[headline] - reference})
    columns += [f"delta_{HEADLINE_METRIC[task]}", *ERROR_METRICS[task], *COST_METRICS, "job_ids"]
    return table[columns].reset_index(drop=True)


def _plain_reference(table: pd.DataFrame, task: str) -> float:
    """The headline mean of the best plain-family row by the shared rule, NaN without one. Each row is one
    configuration: its mean validation metric is its value and its earliest job breaks a tie."""
    plain = table[table["family"].isin(PLAIN_FAMILIES)]
    valid = f"{VALIDATION_METRIC[task]}_mean"
    results = [Result(c, min(ids), v) for c, ids, v in zip(plain["config_key"], plain["job_ids"], plain[valid])]
    chosen = best(results, METRIC_DIRECTIONS[VALIDATION_METRIC[task]])
    if chosen is None:
        return math.nan
    return float(plain.loc[plain["config_key"] == chosen.config, f"{HEADLINE_METRIC[task]}_mean"].iloc[0])


def format_table(table: pd.DataFrame, task: str) -> pd.DataFrame:
    """Display strings: 'mean ± std' per test metric, a signed delta, readable counts and times."""
    headline = HEADLINE_METRIC[task]
    plain = "CNN" if task == "classification" else "U-Net"
    out = pd.DataFrame({"Model": table["family"], "Group": table["group"], "Augment": table["augment.geometric"],
                        "Hyperparameters": table["hyperparameters"].replace("", "–"),
                        "Params": table["params"].map(_count)})
    for metric in TEST_METRICS[task]:
        out[_HEADERS[metric]] = [_spread(m, s) for m, s in zip(table[f"{metric}_mean"], table[f"{metric}_std"])]
    out[f"Δ {_HEADERS[headline].split()[-1]} vs {plain}"] = table[f"delta_{headline}"].map(_signed)
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
