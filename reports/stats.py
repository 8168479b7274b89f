"""Statistics of the final evaluation: t intervals, paired differences, Holm's correction and the seeds for power.

Seeds are the unit of replication: a seed trains every model once with the same batch order and augmentation
stream, so two models' results for one seed form a pair. Pairing removes the part of the seed-to-seed spread that
the models share.

- Per model: mean, sample std (ddof=1) and the 95 % Student-t interval of the mean over its seeds.
- Per model against a reference model: the mean of the per-seed differences, the 95 % Student-t interval of that
  mean, mean ± t(0.975, n-1) · sd / sqrt(n), and the two-sided paired t-test's p-value (`scipy.stats.ttest_rel`).
  Interval and test are the same computation, so the interval excludes zero exactly when p < 0.05.
- Several models against one reference: Holm's step-down adjustment of their p-values (`holm`).
- A difference too small to tell: the paired seeds a t-test needs to detect it at 80 % power (`seeds_for_power`).

Why the t interval and not a bootstrap: a final stage has 3-10 seeds. The percentile bootstrap of so few
differences never reaches beyond the observed ones and ignores that the spread itself is estimated; simulated with
normal differences its "95 %" interval covers the true mean 75 % of the time at 3 seeds, 80 % at 5 and 91 % at 10,
while the t interval covers 95 % at every n (tests/test_stats.py repeats that simulation). A bootstrap is kept only
where n is large: the interval of one job's test AUC over its thousands of test patches (runner/extra_metrics.py).
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
ALPHA = 0.05
POWER = 0.80
MAX_SEEDS = 10_000  # the power search stops here: a difference that needs more is, for a lab, not detectable


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
    """Model minus reference, paired by seed: mean difference, its t interval, the paired t-test and the std of the
    per-seed differences (what a power calculation needs)."""

    n_pairs: int
    mean: float
    low: float
    high: float
    p_value: float
    std: float = math.nan

    @property
    def includes_zero(self) -> bool:
        """True when the interval covers 0, or when there is no interval (no evidence of a difference either way)."""
        return not (self.low > 0 or self.high < 0)


NO_DIFFERENCE = Difference(0, math.nan, math.nan, math.nan, math.nan)


def t_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The Student-t interval of the mean along the last axis (at least 2 values each): vectorised, so the
    coverage simulation runs the very code the report uses."""
    samples = np.asarray(samples, dtype=float)
    n = samples.shape[-1]
    mean = samples.mean(axis=-1)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * samples.std(axis=-1, ddof=1) / math.sqrt(n)
    return mean - half, mean + half


def constant(sample: np.ndarray) -> bool:
    """Equal values up to float rounding: 17/18 - 18/18 per seed gives differences a few ulps apart, and a t-test on
    that spread would report p ~ 0 for what has no spread at all."""
    return bool(np.ptp(sample) <= 1e-12 * max(1.0, float(np.max(np.abs(sample)))))


def summarize(values: np.ndarray | list[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, std (ddof=1) and the Student-t interval mean ± t(1 - a/2, n-1) · std / sqrt(n); NaNs are dropped."""
    sample = _finite(values)
    n = len(sample)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(np.mean(sample))
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    if constant(sample):  # summing would leave a rounding residue in the mean and std
        value = float(sample[0])
        return Summary(n, value, 0.0, value, value)
    low, high = t_interval(sample, confidence)
    return Summary(n, mean, float(np.std(sample, ddof=1)), float(low), float(high))


def paired(model: pd.Series, baseline: pd.Series, confidence: float = CONFIDENCE) -> Difference:
    """`model - baseline` over the seeds both have (each Series indexed by seed; NaN values are left out)."""
    both = pd.concat([model.rename("model"), baseline.rename("baseline")], axis=1, join="inner").dropna()
    differences = (both["model"] - both["baseline"]).to_numpy(dtype=float)
    n = len(differences)
    if n == 0:
        return NO_DIFFERENCE
    mean = float(np.mean(differences))
    if n == 1:
        return Difference(1, mean, math.nan, math.nan, math.nan)
    summary = summarize(differences, confidence)
    if constant(differences):  # no spread: the t-test is undefined, whatever rounding makes of it
        return Difference(n, summary.mean, summary.low, summary.high, math.nan, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_value = float(stats.ttest_rel(both["model"], both["baseline"]).pvalue)
    return Difference(n, mean, summary.low, summary.high, p_value, summary.std)


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of one family of p-values; NaNs stay NaN and are not counted in the family.

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) · p_(j)). It controls the chance
    of any false claim in the family at alpha, like Bonferroni, but rejects at least as often, and it assumes
    nothing about how the comparisons depend on each other (they share the baseline, so they do).
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="mergesort")]
    m = len(order)
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with n pairs for a true standardised effect (mean / sd of differences):
    the chance the noncentral t with n-1 degrees of freedom and noncentrality effect · sqrt(n) falls outside ±t_crit."""
    df, noncentrality = n - 1, abs(effect) * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def seeds_for_power(mean: float, std: float, target: float = POWER, alpha: float = ALPHA) -> float:
    """The fewest paired seeds (>= 2) at which the paired t-test detects a true difference `mean` with the seed-to-
    seed spread `std` at `target` power; NaN without a spread, inf for no difference or beyond MAX_SEEDS."""
    if not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
        return math.nan
    if mean == 0:
        return math.inf
    effect = abs(mean) / std
    # Normal approximation as a start, then step: power rises with n, so the first n that reaches it is the answer.
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(target)
    n = max(2, int((z / effect) ** 2) - 2)
    if n > MAX_SEEDS:
        return math.inf
    while power(n, effect, alpha) < target:
        n += 1
    return float(n)


def _finite(values: np.ndarray | list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]
