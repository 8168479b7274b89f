"""Test metrics for a fair comparison, computed at the end of a classification job: they need per-patch predictions,
which the database does not keep.

- Test-time augmentation over D4: the mean of the model's P(tumour) (with more than two classes: of its class
  probabilities) over the eight rot90/flip copies of each patch.
  That average is exactly D4-invariant, so a plain CNN with it is the cheapest competitor to a D4 G-CNN; recorded
  as `test_tta_<metric>` with its cost `tta_eval_images_per_s`. Skipped for a model whose group already contains
  all eight elements (D4, D8, O2, ...): averaging over its own symmetries changes nothing, as `predict --tta` says.
- Calibration: expected calibration error over 10 equal-width bins of P(tumour) (`test_ece`, the bins' counts,
  mean predictions and observed tumour fractions as `calib_bin<i>_{n,p,y}`), since the scores are read as
  probabilities. With more than two classes it is the top-label ECE: bins of the top class's probability against
  how often the top class is right (the same keys).
- Test-set uncertainty of one trained model: a seeded percentile bootstrap of test AUC (macro one-vs-rest for more
  than two classes) over test patches (`test_auc_low`, `test_auc_high`). With thousands of patches the percentile bootstrap is valid (with 3-10 seeds it
  is not; see reports/stats.py). Where the data names each patch's slide or patient (a manifest's or array file's
  `group`), whole groups are resampled (`test_auc_groups` says how many): patches of one slide are not independent.
  Otherwise (PCam, class folders) patches are resampled one by one, and the interval is too narrow.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from equiv.groups import GridElement, grid_elements, parse_group
from runner.data.batches import Split
from runner.spec.config import JobConfig
from runner.training.metrics import classification_metrics
from runner.training.predict import predict

BINS = 10
RESAMPLES = 1_000
CONFIDENCE = 0.95
_CHUNK = 100  # resamples per vectorised block: 100 x 32,768 test patches of int64 is 26 MB


class Transformed(torch.nn.Module):
    """The model applied to one D4 copy of its input: P(tumour) of a patch does not depend on where it is shown,
    so a classifier's output needs no transform back."""

    def __init__(self, model: torch.nn.Module, element: GridElement) -> None:
        super().__init__()
        self.model, self.element = model, element

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.element.apply(x))


def end_of_job(config: JobConfig, model: torch.nn.Module, split: Split, device: torch.device, labels: np.ndarray,
               probs: np.ndarray) -> dict[str, float]:
    """The extra final metrics of a job from its test predictions `probs`; {} for segmentation."""
    if config.task != "classification":
        return {}
    out = {**calibration(labels, probs)}
    out["test_auc_low"], out["test_auc_high"] = auc_interval(labels, probs, config.seed, groups=split.groups)
    if split.groups is not None:
        out["test_auc_groups"] = float(len(set(split.groups)))  # resampled whole: the report says how many
    if not d4_invariant(config):
        out.update(tta_metrics(config, model, split, device))
    return out


def d4_invariant(config: JobConfig) -> bool:
    """Whether the model's group contains all eight rot90/flip elements (then TTA over them changes nothing)."""
    group = parse_group(config.model.group, config.model.max_frequency)
    return len(grid_elements(group)) == len(grid_elements(parse_group("D4")))


def tta_metrics(config: JobConfig, model: torch.nn.Module, split: Split, device: torch.device) -> dict[str, float]:
    """Test metrics of the mean P(tumour) over the eight D4 copies, and that evaluation's images per second."""
    start = time.monotonic()
    labels, mean = tta_probabilities(config, model, split, device)
    seconds = time.monotonic() - start
    out = {f"test_tta_{name}": value for name, value in classification_metrics(labels, mean).items()}
    out["test_tta_ece"] = calibration(labels, mean)["test_ece"]
    out["tta_eval_images_per_s"] = len(labels) / max(seconds, 1e-9)
    return out


def tta_probabilities(config: JobConfig, model: torch.nn.Module, split: Split,
                      device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the mean P(tumour) over the eight rot90/flip copies of each test patch, through the job's own
    prediction code (same batches, normalisation and precision as its plain test metrics)."""
    elements = grid_elements(parse_group("D4"))
    total, labels = None, None
    for element in elements:
        labels, p = predict(config, Transformed(model, element), split, device)
        total = p if total is None else total + p
    return labels, total / len(elements)


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = BINS) -> dict[str, float]:
    """ECE = sum over bins of (share of patches) x |mean P(tumour) - observed tumour fraction|, with equal-width bins
    of P(tumour) as sklearn's calibration_curve(strategy="uniform") draws them; empty bins have only a count.
    (N, K) probabilities: the top-label ECE (top_label)."""
    if np.ndim(probs) == 2:
        labels, probs = top_label(labels, probs)
    labels = np.asarray(labels, dtype=float).ravel()
    probs = np.asarray(probs, dtype=float).ravel()
    index = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], probs)
    counts = np.bincount(index, minlength=bins)
    mean_p = np.bincount(index, weights=probs, minlength=bins) / np.maximum(counts, 1)
    observed = np.bincount(index, weights=labels, minlength=bins) / np.maximum(counts, 1)
    out = {"test_ece": float(np.sum(counts * np.abs(mean_p - observed)) / max(len(probs), 1))}
    for i in range(bins):
        out[f"calib_bin{i}_n"] = float(counts[i])
        if counts[i]:
            out[f"calib_bin{i}_p"], out[f"calib_bin{i}_y"] = float(mean_p[i]), float(observed[i])
    return out


def top_label(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(whether the top class is right, its probability) per patch: multi-class calibration as a binary question."""
    probs = np.asarray(probs, dtype=float)
    top = probs.argmax(axis=1)
    return (top == np.asarray(labels).ravel()).astype(float), probs[np.arange(len(probs)), top]


def auc_interval(labels: np.ndarray, probs: np.ndarray, seed: int, resamples: int = RESAMPLES,
                 confidence: float = CONFIDENCE, groups: np.ndarray | None = None) -> tuple[float, float]:
    """The percentile bootstrap interval of ROC AUC over patches (seeded); NaN when a class is missing. (N, K)
    probabilities: of the macro one-vs-rest AUC (a resample that misses a class is left out). With `groups` (the
    slide of each patch) whole groups are resampled (a cluster bootstrap): patches of one slide are not independent."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=float)
    probs = probs if probs.ndim == 2 else probs.ravel()
    if len(np.unique(labels)) < (probs.shape[1] if probs.ndim == 2 else 2):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draw = _patch_draws(len(labels)) if groups is None else _group_draws(groups)
    aucs = np.concatenate([resampled_macro_aucs(labels, probs, draw(rng, min(_CHUNK, left)))
                           for left in range(resamples, 0, -_CHUNK)])
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def _patch_draws(n: int):
    """Resamples of patches: how often each patch is drawn, n draws with replacement."""
    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        indices = rng.integers(0, n, size=(rows, n))
        flat = (np.arange(rows)[:, None] * n + indices).ravel()  # one bincount for all rows of the block
        return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(float)
    return draw


def _group_draws(groups: np.ndarray):
    """Resamples of whole groups: each of the G groups drawn G times with replacement, every patch weighted by how
    often its group was drawn."""
    _, code = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    count = int(code.max()) + 1

    def draw(rng: np.random.Generator, rows: int) -> np.ndarray:
        return rng.multinomial(count, np.full(count, 1.0 / count), size=rows)[:, code].astype(float)
    return draw


def resampled_macro_aucs(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """resampled_aucs for (N,) P(class 1); for (N, K) the mean over classes of each one-vs-rest AUC per resample."""
    if probs.ndim == 1:
        return resampled_aucs(labels, probs, weights)
    return np.mean([resampled_aucs(labels == k, probs[:, k], weights) for k in range(probs.shape[1])], axis=0)


def resampled_aucs(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of each resample (a row of `weights`: how often each patch is in it), vectorised: AUC is the
    Mann-Whitney statistic, so it needs only the weight of each class at each distinct score, not a sort per
    resample."""
    values, score = np.unique(probs, return_inverse=True)
    rows, width = weights.shape[0], len(values)
    offsets = np.arange(rows)[:, None] * width + score[None, :]
    positive = np.asarray(labels).astype(bool)

    def weight_at_scores(mask: np.ndarray) -> np.ndarray:
        return np.bincount(offsets[:, mask].ravel(), weights=weights[:, mask].ravel(),
                           minlength=rows * width).reshape(rows, width)

    pos, neg = weight_at_scores(positive), weight_at_scores(~positive)
    # Negatives scored below each positive, ties counting one half.
    below = np.cumsum(neg, axis=1) - neg
    wins = np.sum(pos * (below + 0.5 * neg), axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)
