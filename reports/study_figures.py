"""Figures of a study: the final differences (forest plot), the search history, and the metric against each parameter.

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

from reports.figures import _LABELS, Skipped, _figure, _legend
from reports.final import _METRIC_WORD
from reports.tables import HEADLINE_METRIC
from runner.spec.search import METRIC_DIRECTIONS

_MARKERS = {"complete": ("o", 28), "pruned": ("x", 30), "failed": ("v", 24), "running": ("s", 18)}


def forest(table: pd.DataFrame, task: str) -> Figure:
    """Each model's paired difference to the baseline with its 95 % t interval; the zero line is 'no gain'."""
    headline = HEADLINE_METRIC[task]
    delta = f"delta_{headline}"
    if table.empty or "baseline" not in table.columns:
        raise Skipped("no final evaluation job is done yet")
    if table["baseline"].isna().all():
        raise Skipped("no plain baseline model among the final models")
    rows = table[(table["name"] != table["baseline"]) & table[delta].notna()]
    if rows.empty:
        raise Skipped("no final model shares a seed with the baseline")
    figure, ax = _figure(7.0, 1.2 + 0.45 * len(rows))
    y = np.arange(len(rows))[::-1]
    low = (rows[delta] - rows["delta_ci_low"]).fillna(0).clip(lower=0)
    high = (rows["delta_ci_high"] - rows[delta]).fillna(0).clip(lower=0)
    colors = [_evidence_color(lo, hi, p) for lo, hi, p in zip(rows["delta_ci_low"], rows["delta_ci_high"],
                                                               rows["p_holm"])]
    for yi, (_, row), lo, hi, color in zip(y, rows.iterrows(), low, high, colors):
        ax.errorbar(row[delta], yi, xerr=[[lo], [hi]], fmt="o", color=color, capsize=4, markersize=6)
        ax.annotate(_pairs_label(row), (row[delta], yi), textcoords="offset points", xytext=(0, 7), fontsize=7,
                    ha="center", color="0.3")
    ax.axvline(0, color="0.2", linewidth=1)
    ax.set_yticks(y, rows["name"])
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set(xlabel=f"Δ test {_METRIC_WORD[headline]} vs {table['baseline'].iloc[0]} (paired by seed)",
           title="Final evaluation: difference to the plain model, 95 % t CI; colour by Holm-adjusted p")
    ax.grid(alpha=0.3, axis="x")
    return figure


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
    ax.set(xlabel="trial number", ylabel=_LABELS.get(metrics[0], metrics[0]) if len(metrics) == 1 else "search metric",
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
    figure.suptitle(f"{_LABELS.get(metrics[0], metrics[0]) if len(metrics) == 1 else 'Search metric'} against each "
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
    ax.set(xlabel=parameter, ylabel=_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
