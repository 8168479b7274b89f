"""Figures of a study: the final differences (forest plot), metric against cost (Pareto view), calibration, the
search history, and the metric against each parameter.

Same conventions as reports.figures: plain matplotlib Figures, `Skipped` with the reason when the data cannot
support a figure. Pruned trials are drawn as crosses: their value is the best before they were stopped.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from reports.figures import Skipped, _figure, _legend, label
from reports.tables import PLAIN_FAMILIES, Scoring, default_scoring
from runner.spec.search import METRIC_DIRECTIONS

_MARKERS = {"complete": ("o", 28), "pruned": ("x", 30), "failed": ("v", 24), "running": ("s", 18)}


def forest(table: pd.DataFrame, task: str, scoring: Scoring | None = None) -> Figure:
    """Each model's paired difference to the baseline with its 95 % t interval; the zero line is 'no gain'. Plain
    models (augmented, +TTA) are squares, equivariant ones circles; the dashed line is the strongest plain model,
    so a G-CNN right of it beats learning the symmetry too (left of it for nll, where lower is better)."""
    scoring = scoring or default_scoring(task)
    headline = scoring.test
    delta = f"delta_{headline}"
    if table.empty or "baseline" not in table.columns:
        raise Skipped("no final evaluation job is done yet")
    if table["baseline"].isna().all():
        raise Skipped("no plain baseline model among the final models")
    rows = table[(table["name"] != table["baseline"]) & table[delta].notna()]
    if rows.empty:
        raise Skipped("no final model shares a seed with the baseline")
    figure, ax = _figure(7.0, 1.4 + 0.45 * len(rows))
    y = np.arange(len(rows))[::-1]
    low = (rows[delta] - rows["delta_ci_low"]).fillna(0).clip(lower=0)
    high = (rows["delta_ci_high"] - rows[delta]).fillna(0).clip(lower=0)
    # Green is a gain whichever way is better: for nll the interval of the loss's fall.
    gains = (zip(rows["delta_ci_low"], rows["delta_ci_high"]) if scoring.maximize
             else zip(-rows["delta_ci_high"], -rows["delta_ci_low"]))
    colors = [_evidence_color(lo, hi, p) for (lo, hi), p in zip(gains, rows["p_holm"])]
    for yi, (_, row), lo, hi, color in zip(y, rows.iterrows(), low, high, colors):
        marker = "s" if row["family"] in PLAIN_FAMILIES else "o"
        ax.errorbar(row[delta], yi, xerr=[[lo], [hi]], fmt=marker, color=color, capsize=4, markersize=6)
        ax.annotate(_pairs_label(row), (row[delta], yi), textcoords="offset points", xytext=(0, 7), fontsize=7,
                    ha="center", color="0.3")
    ax.axvline(0, color="0.2", linewidth=1)
    _strongest_line(ax, table, delta)
    ax.set_yticks(y, rows["name"])
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set(xlabel=f"Δ test {scoring.word} vs {table['baseline'].iloc[0]} (paired by seed)",
           title="Difference to the plain model, 95 % t CI (coloured: Holm p < 0.05)")
    ax.grid(alpha=0.3, axis="x")
    return figure


def _strongest_line(ax: Any, table: pd.DataFrame, delta: str) -> None:
    strongest = table["strongest"].iloc[0] if "strongest" in table.columns else None
    if strongest is None or strongest == table["baseline"].iloc[0]:
        return
    value = table.loc[table["name"] == strongest, delta].iloc[0]
    if not np.isnan(value):
        ax.axvline(value, color="C0", linestyle="--", linewidth=1, label=f"strongest plain: {strongest}")
        ax.legend(fontsize=7, frameon=False, loc="lower right")


def _evidence_color(low: float, high: float, p: float) -> str:
    """Green above zero, red below, grey otherwise; `p` is Holm-adjusted, so as in the sentences an interval that
    excludes zero on its own but not after the family's correction counts as weak evidence: grey."""
    if not p < 0.05:  # also NaN: one pair, or equal differences
        return "0.35"
    return "C2" if low > 0 else "C3" if high < 0 else "0.35"


def _pairs_label(row: pd.Series) -> str:
    p = row["p_holm"]
    text = f"n={int(row['n_pairs'])}"
    return text if p is None or math.isnan(p) else f"{text}, p_Holm={p:.2g}"


def cost(table: pd.DataFrame, task: str, scoring: Scoring | None = None) -> Figure:
    """The Pareto view: mean test metric (95 % t CI over seeds) against training time per job, and against
    evaluation speed; the line joins the models no other model beats on both axes."""
    scoring = scoring or default_scoring(task)
    headline = scoring.test
    if table.empty or f"{headline}_mean" not in table.columns:
        raise Skipped("no final evaluation job is done yet")
    rows = table.dropna(subset=[f"{headline}_mean"])
    panels = [(x, axis, cheaper) for x, axis, cheaper in (
        ("train_seconds", "training time per job (s)", "lower"),
        ("eval_images_per_s", "evaluation images / s", "higher")) if rows[x].notna().any()]
    if not panels:
        raise Skipped("no job recorded its training time or evaluation speed")
    figure = Figure(figsize=(5.2 * len(panels), 4.4), layout="constrained")
    for index, (x, axis, cheaper) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), index + 1)
        _cost_panel(ax, rows.dropna(subset=[x]), x, scoring, cheaper)
        ax.set(xlabel=f"{axis} (log; {cheaper} is cheaper)", ylabel=label(headline))
    figure.suptitle("Test metric against cost per model (mean over final seeds; the line is the Pareto front)")
    return figure


def _cost_panel(ax: Any, rows: pd.DataFrame, x: str, scoring: Scoring, cheaper: str) -> None:
    headline = scoring.test
    mean = rows[f"{headline}_mean"]
    error = [(mean - rows[f"{headline}_ci_low"]).fillna(0).clip(lower=0),
             (rows[f"{headline}_ci_high"] - mean).fillna(0).clip(lower=0)]
    for i, (_, row) in enumerate(rows.iterrows()):
        marker = "s" if row["family"] in PLAIN_FAMILIES else "o"
        ax.errorbar(row[x], row[f"{headline}_mean"], yerr=[[error[0].iloc[i]], [error[1].iloc[i]]], fmt=marker,
                    color=f"C{i % 10}", capsize=3, label=row["name"])
    score = mean.to_numpy(float) if scoring.maximize else -mean.to_numpy(float)  # the front wants higher = better
    front = pareto_front(rows[x].to_numpy(float), score, cheaper == "lower")
    ax.plot(rows[x].to_numpy(float)[front], mean.to_numpy(float)[front], color="0.4", linewidth=1, zorder=0)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)


def pareto_front(cost: np.ndarray, score: np.ndarray, lower_is_cheaper: bool) -> np.ndarray:
    """Indices of the points no other point beats on both cost and score, ordered from cheap to dear."""
    cost = cost if lower_is_cheaper else -cost
    order = np.lexsort((-score, cost))  # cheapest first; at equal cost the best score first
    front, best = [], -np.inf
    for i in order:
        if score[i] > best:
            front.append(i)
            best = score[i]
    return np.array(front, dtype=int)


def calibration(reliability: pd.DataFrame, top_label: bool = False) -> Figure:
    """Reliability diagram: observed tumour fraction against mean P(tumour) per bin, pooled over each model's seeds
    (with more than two classes, `top_label`: accuracy against the predicted class's probability); the diagonal is
    perfect calibration, and the legend gives each model's mean ECE."""
    if reliability.empty:
        raise Skipped("no job recorded calibration bins (jobs from before they were measured, or segmentation)")
    figure, ax = _figure(5.6, 5.0)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    for i, (name, part) in enumerate(reliability.groupby("name", sort=False)):
        ece = part["ece"].iloc[0]
        text = name if np.isnan(ece) else f"{name} (ECE {ece:.3f})"
        ax.plot(part["p"], part["y"], marker="o", markersize=4, color=f"C{i % 10}", label=text)
    x, y = (("mean probability of the predicted class in the bin", "observed accuracy") if top_label
            else ("mean predicted P(tumour) in the bin", "observed tumour fraction"))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=x, ylabel=y, title="Calibration on the test set (10 equal-width bins)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return figure


def search_history(results: pd.DataFrame) -> Figure:
    """The search metric of each trial against its number, per stream; crosses are pruned, the line best-so-far."""
    if results.empty or results["value"].isna().all():
        raise Skipped("no search trial has a value of its search metric yet")
    figure, ax = _figure()
    labels = _stream_labels(results)
    for i, (stream, part) in enumerate(results.groupby("stream", sort=False)):
        color = f"C{i % 10}"
        _scatter_states(ax, part, part["number"], color)
        complete = part[part["state"] == "complete"].dropna(subset=["value"])
        if not complete.empty:
            best = complete["value"].cummax() if _maximize(part) else complete["value"].cummin()
            # Held to the stream's last trial, so the line shows how long the best has stood.
            x = [*complete["number"], part["number"].max()]
            ax.step(x, [*best, best.iloc[-1]], where="post", color=color, linewidth=1.4,
                    label=f"{labels[stream]}: best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    metrics = results["metric"].unique()
    ax.set(xlabel="trial number", ylabel=label(metrics[0]) if len(metrics) == 1 else "search metric",
           title="Search history (o complete, x pruned: best before it was stopped)")
    ax.grid(alpha=0.3)
    _legend(ax, results["stream"].nunique())
    return figure


def _stream_labels(results: pd.DataFrame) -> dict[str, str]:
    """The model's short name per stream, or the stream's key where several streams search one model."""
    names = results.groupby("stream", sort=False)["name"].first()
    return {stream: name if (names == name).sum() == 1 else stream for stream, name in names.items()}


def _maximize(part: pd.DataFrame) -> bool:
    return METRIC_DIRECTIONS[part["metric"].iloc[0]] == "maximize"


def _scatter_states(ax: Any, part: pd.DataFrame, x: pd.Series, color: str) -> None:
    for state, (marker, size) in _MARKERS.items():
        chosen = (part["state"] == state).to_numpy()
        if chosen.any():
            ax.scatter(np.asarray(x)[chosen], part["value"].to_numpy()[chosen], marker=marker, s=size, color=color,
                       alpha=1.0 if state == "complete" else 0.7, linewidths=1.2)


def search_parameters(results: pd.DataFrame, parameters: list[str], log_keys: set[str]) -> Figure:
    """The search metric against each sampled parameter, one panel each, per stream; log x for log-distributed ones
    (declared `log` in the spec, or positive values spanning at least a factor of 20)."""
    if not parameters or results["value"].isna().all():
        raise Skipped("no sampled parameter with a trial value yet")
    columns = min(3, len(parameters))
    rows = math.ceil(len(parameters) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    for index, parameter in enumerate(parameters):
        ax = figure.add_subplot(rows, columns, index + 1)
        _parameter_panel(ax, results, parameter, parameter in log_keys)
    metrics = results["metric"].unique()
    figure.suptitle(f"{label(metrics[0]) if len(metrics) == 1 else 'Search metric'} against each "
                    "searched parameter (o complete, x pruned)")
    return figure


def _parameter_panel(ax: Any, results: pd.DataFrame, parameter: str, declared_log: bool) -> None:
    values = results[parameter].dropna()
    numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
    categories = sorted(map(str, values.unique()))
    labels = _stream_labels(results)
    for i, (stream, part) in enumerate(results.groupby("stream", sort=False)):
        x = part[parameter].astype(float) if numeric else part[parameter].map(lambda v: categories.index(str(v)))
        _scatter_states(ax, part, x, f"C{i % 10}")
        ax.scatter([], [], color=f"C{i % 10}", s=20, label=labels[stream])
    positive = numeric and len(values) and float(values.min()) > 0
    if positive and (declared_log or float(values.max()) / float(values.min()) >= 20):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # within one decade the minor labels overprint each other
    if not numeric:
        ax.set_xticks(range(len(categories)), categories)
    metric = results["metric"].iloc[0]
    ax.set(xlabel=parameter, ylabel=label(metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
