"""Report figures, each built from already aggregated frames (one line per selected model, never per job).

Figures are plain `matplotlib.figure.Figure` objects (no pyplot, so no global state and no GUI backend).
A figure that cannot be drawn from the data at hand raises `Skipped` with the reason, which the report shows.
"""
from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports.tables import (
    FRACTION,
    PLAIN_FAMILIES,
    Scoring,
    default_scoring,
    display_name,
    group_sort_key,
    swept_hyperparameters,
)

MAX_LINES = 12  # more lines than this stop being readable; the best ones by validation are drawn
ROTATION_METRIC = {"classification": "accuracy", "segmentation": "dice"}
_LABELS = {"valid_auc": "validation AUC", "valid_dice": "validation Dice", "test_auc": "test AUC",
           "test_dice": "test Dice", "accuracy": "test accuracy", "dice": "test Dice"}
_SPLIT_WORDS = {"valid": "validation", "test": "test"}


class Skipped(Exception):
    """A figure that the data cannot support; str(exception) says why."""


def label(metric: str) -> str:
    """'validation AUC', 'test NLL', 'test accuracy': an axis label for a recorded metric."""
    if metric in _LABELS:
        return _LABELS[metric]
    split, _, stem = metric.partition("_")
    return f"{_SPLIT_WORDS.get(split, split)} {Scoring('classification', stem).word}"


def pick_lines(table: pd.DataFrame, task: str, limit: int = MAX_LINES, scoring: Scoring | None = None) -> pd.DataFrame:
    """The rows to draw: all if few, else the best `limit` by validation, always keeping the best plain model."""
    if len(table) <= limit:
        return table
    scoring = scoring or default_scoring(task)
    ranked = table.sort_values(f"{scoring.valid}_mean", ascending=not scoring.maximize, kind="mergesort")
    plain = ranked[ranked["family"].isin(PLAIN_FAMILIES)].head(1)
    keep = pd.concat([plain, ranked.drop(plain.index)]).head(limit).index
    return table.loc[sorted(keep)]


def _styles(lines: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """A stable colour per model; plain models dashed so the equivariant ones stand out."""
    palette = [f"C{i}" for i in range(10)]
    return {name: {"color": palette[i % 10], "linestyle": "--" if family in PLAIN_FAMILIES else "-"}
            for i, (name, family) in enumerate(zip(lines["name"], lines["family"]))}


def _per_line(lines: pd.DataFrame, long: pd.DataFrame, x: str) -> pd.DataFrame:
    """Mean and std over seeds of `value` at each `x`, per drawn model: columns name, x, mean, std."""
    owners = lines[["name", "job_ids"]].explode("job_ids").rename(columns={"job_ids": "job_id"})
    owners["job_id"] = owners["job_id"].astype(int)
    merged = long[["job_id", x, "value"]].astype({"job_id": int}).merge(owners, on="job_id")
    stats = merged.groupby(["name", x])["value"].agg(["mean", "std"]).reset_index()
    return stats.fillna({"std": 0.0})


def _band(ax: Any, x: np.ndarray, mean: np.ndarray, std: np.ndarray, label: str, style: dict) -> None:
    ax.plot(x, mean, label=label, linewidth=1.6, **style)
    ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.15, linewidth=0)


def _bands(ax: Any, lines: pd.DataFrame, long: pd.DataFrame, x: str, offset: float = 0.0, **extra: Any) -> None:
    """One mean ± std band per drawn model, of `value` against `x` (shifted by `offset`, e.g. 1-based epochs)."""
    stats, styles = _per_line(lines, long, x), _styles(lines)
    for name in lines["name"]:
        part = stats[stats["name"] == name].sort_values(x)
        if not part.empty:
            _band(ax, part[x].to_numpy() + offset, part["mean"].to_numpy(), part["std"].to_numpy(), name,
                  {**styles[name], **extra})


def _figure(width: float = 7.0, height: float = 4.2) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _legend(ax: Any, n: int) -> None:
    ax.legend(fontsize=8, ncol=2 if n > 6 else 1, frameon=False)


def learning_curves(lines: pd.DataFrame, epochs: pd.DataFrame, task: str, scoring: Scoring | None = None) -> Figure:
    """Validation metric per epoch, mean ± std over seeds, one line per selected model."""
    metric = (scoring or default_scoring(task)).valid
    if lines.empty or epochs.empty:
        raise Skipped(f"no per-epoch {metric} recorded for the selected models")
    figure, ax = _figure()
    _bands(ax, lines, epochs, "epoch", offset=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=label(metric), title="Learning curves (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    _legend(ax, len(lines))
    return figure


def rotation_curves(lines: pd.DataFrame, rotations: pd.DataFrame, task: str) -> Figure:
    """Test metric against test-time rotation angle: flat lines are what equivariance buys."""
    metric = ROTATION_METRIC[task]
    if lines.empty or rotations.empty:
        raise Skipped(f"no rotation metrics ({metric!r} by angle) recorded for the selected models")
    figure, ax = _figure()
    _bands(ax, lines, rotations, "angle", marker="o", markersize=3)
    for angle in (90, 180, 270):
        ax.axvline(angle, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(0, 361, 45))
    ax.set(xlabel="test-time rotation (degrees)", ylabel=_LABELS[metric],
           title="Robustness to rotation (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    _legend(ax, len(lines))
    return figure


def metric_vs_params(configs: pd.DataFrame, table: pd.DataFrame, task: str, scoring: Scoring | None = None) -> Figure:
    """Headline test metric against parameter count: every config faint, selected models marked and named.

    configs: one row per hyperparameter set with family, params and `<headline>` (mean over seeds).
    """
    headline = (scoring or default_scoring(task)).test
    if table.empty:
        raise Skipped("no finished jobs")
    if table["params"].isna().all():
        raise Skipped("no finished job records its parameter count")
    figure, ax = _figure()
    for i, (family, part) in enumerate(configs.groupby("family", sort=True)):
        ax.scatter(part["params"], part[headline], s=10, alpha=0.25, color=f"C{i}", label=f"{family} (all configs)")
    styles = _styles(table)
    for _, row in table.iterrows():
        ax.errorbar(row["params"], row[f"{headline}_mean"], yerr=_nan_to_zero(row[f"{headline}_std"]), fmt="o",
                    color=styles[row["name"]]["color"], markersize=6, capsize=3)
        ax.annotate(row["name"], (row["params"], row[f"{headline}_mean"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    if configs["params"].max() > 5 * configs["params"].min():
        ax.set_xscale("log")
    ax.set(xlabel="parameters", ylabel=label(headline),
           title=f"{label(headline).capitalize()} against model size (selected: labelled)")
    ax.grid(alpha=0.3)
    _legend(ax, 2)
    return figure


def _nan_to_zero(value: float) -> float:
    return 0.0 if value is None or math.isnan(value) else value


def metric_vs_group(table: pd.DataFrame, task: str, scoring: Scoring | None = None) -> Figure:
    """Headline test metric per symmetry group (trivial → O2), one series per (family, augmentation)."""
    headline = (scoring or default_scoring(task)).test
    if table.empty:
        raise Skipped("no finished jobs")
    groups = sorted(table["group"].unique(), key=group_sort_key)
    position = {g: i for i, g in enumerate(groups)}
    series = list(table.groupby(["family", "augment.geometric"], sort=False))
    figure, ax = _figure()
    for i, ((family, geometric), part) in enumerate(series):
        x = part["group"].map(position).to_numpy() + (i - (len(series) - 1) / 2) * 0.08
        ax.errorbar(x, part[f"{headline}_mean"], yerr=part[f"{headline}_std"].fillna(0), fmt="o-" if len(part) > 1
                    else "o", color=f"C{i}", capsize=3, label=display_name(family, "trivial", geometric))
    ax.set_xticks(range(len(groups)), groups)
    ax.set(xlabel="symmetry group", ylabel=label(headline),
           title=f"{label(headline).capitalize()} by symmetry group")
    ax.grid(alpha=0.3, axis="y")
    _legend(ax, len(series))
    return figure


def data_efficiency(selected: pd.DataFrame, task: str, scoring: Scoring | None = None) -> Figure:
    """Headline test metric against the share of training data, one line per model."""
    scoring = scoring or default_scoring(task)
    headline = scoring.test
    if FRACTION not in selected.columns or selected[FRACTION].nunique() < 2:
        raise Skipped("the experiment does not sweep data.fraction")
    lines = selected.drop_duplicates("name")
    styles = _styles(pick_lines(lines, task, scoring=scoring))
    figure, ax = _figure()
    for name, part in selected.groupby("name", sort=False):
        if name in styles:
            part = part.sort_values(FRACTION)
            _band(ax, part[FRACTION].to_numpy(), part[f"{headline}_mean"].to_numpy(),
                  part[f"{headline}_std"].fillna(0).to_numpy(), name, {**styles[name], "marker": "o"})
    if selected[FRACTION].max() > 4 * selected[FRACTION].min():
        ax.set_xscale("log")
    ax.set(xlabel="share of the training set (data.fraction)", ylabel=label(headline),
           title="Data efficiency (best config per fraction, mean ± std over seeds)")
    ax.grid(alpha=0.3)
    _legend(ax, len(styles))
    return figure


def sensitivity(done: pd.DataFrame, task: str, scoring: Scoring | None = None) -> Figure:
    """Validation metric against each swept hyperparameter: per family, the best config (line) and the range
    (the best is the lowest for nll)."""
    scoring = scoring or default_scoring(task)
    metric = scoring.valid
    fields = swept_hyperparameters(done)
    if not fields:
        raise Skipped("no hyperparameter is swept (besides family, group, augmentation and seed)")
    configs = done.groupby("config_key").agg(**{"valid": (metric, "mean"), "family": ("family", "first")},
                                             **{f.replace(".", "__"): (f, "first") for f in fields})
    columns = min(3, len(fields))
    rows = math.ceil(len(fields) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    for index, field in enumerate(fields):
        _sensitivity_panel(figure.add_subplot(rows, columns, index + 1), configs, field, scoring)
    figure.suptitle("Hyperparameter sensitivity")
    return figure


def _sensitivity_panel(ax: Any, configs: pd.DataFrame, field: str, scoring: Scoring) -> None:
    column = field.replace(".", "__")
    values = sorted(configs[column].unique(), key=lambda v: (isinstance(v, str), v if not isinstance(v, str)
                                                             else 0, str(v)))
    numeric = all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
    position = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    for i, (family, part) in enumerate(configs.groupby("family", sort=True)):
        stats = part.groupby(column)["valid"].agg(["max", "min"]).reset_index()
        stats["x"] = stats[column].map(position)
        stats = stats.sort_values("x")
        ax.plot(stats["x"], stats["max" if scoring.maximize else "min"], "o-", color=f"C{i}", label=family,
                markersize=4)
        ax.fill_between(stats["x"], stats["min"], stats["max"], color=f"C{i}", alpha=0.15, linewidth=0)
    if numeric and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set(xlabel=field, ylabel=label(scoring.valid))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)


def sample_grid(lines: pd.DataFrame, samples: dict[int, dict[str, np.ndarray]], task: str,
                max_models: int = 6, max_samples: int = 6) -> Figure:
    """Test patches with predictions, one row per model (its first seed that stored samples)."""
    shown = [(row["name"], samples[job]) for _, row in lines.iterrows()
             for job in [next((j for j in row["job_ids"] if j in samples), None)] if job is not None][:max_models]
    if not shown:
        raise Skipped("no selected job stored a samples.npz artifact")
    k = min(max_samples, min(len(s["images"]) for _, s in shown))
    # A fixed layout: the constrained-layout solver takes seconds on a grid of this many axes.
    width, height = 1.6 * k + 0.6, 1.75 * len(shown) + 0.5
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=0.6 / width, right=0.99, bottom=0.05 / height, top=1 - 0.5 / height,
                           wspace=0.08, hspace=0.25)
    axes = figure.subplots(len(shown), k, squeeze=False)
    for (name, sample), row in zip(shown, axes):
        for i, ax in enumerate(row):
            _sample_panel(ax, sample, i, task)
        row[0].set_ylabel(name, fontsize=9)
    caption = ("label y, predicted P(tumour) p; green = correct" if task == "classification"
               else "green: ground-truth mask, dashed magenta: prediction ≥ 0.5")
    if task == "classification" and any(np.ndim(s["probs"]) == 2 and np.shape(s["probs"])[1] > 2 for _, s in shown):
        caption = "true class y, predicted class with its probability; green = correct"
    figure.suptitle(f"Test samples ({caption})", fontsize=10)
    return figure


def _sample_panel(ax: Any, sample: dict[str, np.ndarray], i: int, task: str) -> None:
    ax.imshow(_displayable(sample["images"][i]), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if task == "segmentation":
        for key, color, width, style in (("masks", "lime", 2.0, "solid"), ("preds", "magenta", 1.2, "dashed")):
            if key in sample and np.ptp(sample[key][i]) > 0:
                ax.contour(np.squeeze(sample[key][i]).astype(float), levels=[0.5], colors=color, linewidths=width,
                           linestyles=style)
        return
    probs = np.asarray(sample["probs"])
    truth = int(sample["labels"][i])
    if probs.ndim == 2 and probs.shape[1] > 2:
        names = [str(c) for c in sample["classes"]] if "classes" in sample else [str(k) for k in range(probs.shape[1])]
        guess = int(probs[i].argmax())
        ax.set_title(f"y={names[truth]}\n{names[guess]} {probs[i, guess]:.2f}", fontsize=7,
                     color="green" if guess == truth else "red")
        return
    prob = float(probs[i, -1] if probs.ndim == 2 else probs[i])
    ax.set_title(f"y={truth} p={prob:.2f}", fontsize=8, color="green" if (prob >= 0.5) == bool(truth) else "red")


def confusion_matrices(lines: pd.DataFrame, confusions: dict[int, dict[str, Any]], max_models: int = 6) -> Figure:
    """One test confusion matrix per model (rows true, columns predicted): the counts summed over the model's seeds
    that stored one, each cell shown as the mean count per seed and coloured by its share of the true class."""
    shown = []
    for _, row in lines.iterrows():
        stored = [confusions[j] for j in row["job_ids"] if j in confusions]
        if stored:
            shown.append((row["name"], stored))
    if not shown:
        raise Skipped("no selected job stored a confusion.json artifact")
    shown = shown[:max_models]
    classes = [str(c) for c in shown[0][1][0]["classes"]]
    side = 1.2 + 0.55 * len(classes)
    figure = Figure(figsize=(max(side * len(shown) + 0.4, 5.0), side + 1.1), layout="constrained")
    for index, (name, stored) in enumerate(shown):
        _confusion_panel(figure.add_subplot(1, len(shown), index + 1), name, stored, classes)
    figure.suptitle("Test confusion matrices: rows true, columns predicted\n(mean count per seed; colour: share of "
                    "the true class)", fontsize=9)
    return figure


def _confusion_panel(ax: Any, name: str, stored: list[dict[str, Any]], classes: list[str]) -> None:
    counts = np.sum([np.asarray(c["matrix"], dtype=float) for c in stored], axis=0)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    mean = counts / len(stored)
    for (r, c), value in np.ndenumerate(mean):
        ax.text(c, r, f"{value:.3g}", ha="center", va="center", fontsize=7,
                color="white" if share[r, c] > 0.6 else "black")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(ticks, classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"{name} ({len(stored)} seed{'s' if len(stored) != 1 else ''})", fontsize=9)


def _displayable(image: np.ndarray) -> np.ndarray:
    """uint8 RGB as is; float or single-channel images scaled to [0, 1] so any stored sample can be shown."""
    image = np.squeeze(np.asarray(image))
    if image.dtype == np.uint8:
        return image
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image, dtype=float)


def encode(figure: Figure) -> dict[str, bytes]:
    """The figure as PNG (for the page) and PDF (for papers); no timestamps, so reruns give the same PDF."""
    # Solve the layout once, then freeze it: otherwise every savefig re-runs the constrained-layout solver.
    figure.draw_without_rendering()
    figure.set_layout_engine("none")
    files = {}
    for suffix, options in (("png", {"dpi": 110}), ("pdf", {"metadata": {"CreationDate": None}})):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix, **options)
        files[suffix] = buffer.getvalue()
    return files
