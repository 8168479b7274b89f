"""Statistics of the final evaluation: a t interval per model, and the paired difference to a baseline.

Seeds are the unit of replication: a seed trains every model once with the same batch order and augmentation
stream, so two models' results for one seed form a pair. Pairing removes the part of the seed-to-seed spread that
the models share.

- Per model: mean, sample std (ddof=1) and the 95 % Student-t interval of the mean over its seeds.
- Per model against the baseline: the mean of the per-seed differences, a 95 % percentile bootstrap interval of that
  mean (the per-seed differences resampled with replacement, 10,000 times, from a fixed seed so reports are
  reproducible) and the two-sided paired t-test's p-value (`scipy.stats.ttest_rel`).

The percentile bootstrap rather than BCa: with the 3-10 seeds of a final stage BCa's acceleration estimate is
unstable and it is undefined when the differences are all equal; the percentile interval is then the single value.
Fewer than 2 pairs give no interval and no p-value (NaN): one seed says nothing about noise.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Summary:
    """Mean ± std over seeds and the t interval of the mean; std and interval are NaN for a single seed."""

    n: int
    mean: float
    std: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """Model minus baseline, paired by seed: mean difference, its bootstrap interval and the paired t-test."""

    n_pairs: int
    mean: float
    low: float
    high: float
    p_value: float

    @property
    def includes_zero(self) -> bool:
        """True when the interval covers 0, or when there is no interval (no evidence of a difference either way)."""
        return not (self.low > 0 or self.high < 0)


def summarize(values: np.ndarray | list[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, std (ddof=1) and the Student-t interval mean ± t(1 - a/2, n-1) · std / sqrt(n); NaNs are dropped."""
    sample = _finite(values)
    n = len(sample)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(np.mean(sample))
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    if np.ptp(sample) == 0:  # exactly, where summing would leave a rounding residue in the mean and std
        value = float(sample[0])
        return Summary(n, value, 0.0, value, value)
    std = float(np.std(sample, ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired(model: pd.Series, baseline: pd.Series, confidence: float = CONFIDENCE,
           seed: int = BOOTSTRAP_SEED) -> Difference:
    """`model - baseline` over the seeds both have (each Series indexed by seed; NaN values are left out)."""
    both = pd.concat([model.rename("model"), baseline.rename("baseline")], axis=1, join="inner").dropna()
    differences = (both["model"] - both["baseline"]).to_numpy(dtype=float)
    n = len(differences)
    if n == 0:
        return Difference(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(np.mean(differences))
    if n == 1:
        return Difference(1, mean, math.nan, math.nan, math.nan)
    low, high = bootstrap_interval(differences, confidence, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # equal differences: zero variance, p is NaN
        p_value = float(stats.ttest_rel(both["model"], both["baseline"]).pvalue)
    return Difference(n, mean, low, high, p_value)


def bootstrap_interval(differences: np.ndarray, confidence: float = CONFIDENCE,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `differences` (at least two), from a fixed random seed."""
    result = stats.bootstrap((np.asarray(differences, dtype=float),), np.mean, confidence_level=confidence,
                             n_resamples=RESAMPLES, method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def _finite(values: np.ndarray | list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]
