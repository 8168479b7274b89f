"""The final table's statistics against scipy and numpy on known samples (one seed, equal values), the coverage of
the intervals by simulation, Holm against a hand computation, and power against published sample sizes."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from reports import stats

SAMPLE = [0.80, 0.82, 0.85, 0.81, 0.84]


def test_t_interval_of_a_known_sample_matches_the_formula():
    summary = stats.summarize(SAMPLE)
    mean, std = np.mean(SAMPLE), np.std(SAMPLE, ddof=1)
    half = scipy_stats.t.ppf(0.975, 4) * std / math.sqrt(5)  # t(0.975, 4) = 2.776
    assert summary.n == 5 and summary.mean == pytest.approx(0.824) and summary.std == pytest.approx(std)
    assert (summary.low, summary.high) == pytest.approx((mean - half, mean + half))
    assert (summary.low, summary.high) == pytest.approx(
        scipy_stats.t.interval(0.95, 4, loc=mean, scale=scipy_stats.sem(SAMPLE)))
    assert summary.high - summary.low == pytest.approx(2 * 2.7764451 * std / math.sqrt(5))


def test_one_seed_has_a_mean_but_no_spread_or_interval():
    summary = stats.summarize([0.9])
    assert summary.n == 1 and summary.mean == 0.9
    assert math.isnan(summary.std) and math.isnan(summary.low) and math.isnan(summary.high)


def test_identical_values_give_a_zero_width_interval():
    summary = stats.summarize([0.8, 0.8, 0.8])
    assert summary.std == 0.0 and (summary.low, summary.high) == pytest.approx((0.8, 0.8))


def test_missing_values_are_left_out_and_no_values_give_nan():
    assert stats.summarize([0.8, float("nan"), 0.9]).n == 2
    empty = stats.summarize([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_pairs_are_matched_by_seed_not_by_position():
    model = pd.Series({3: 0.90, 1: 0.86, 2: 0.88, 7: 0.99})  # seed 7 has no partner
    baseline = pd.Series({1: 0.84, 2: 0.85, 3: 0.86, 4: 0.80})  # seed 4 has no partner
    difference = stats.paired(model, baseline)
    assert difference.n_pairs == 3
    assert difference.mean == pytest.approx(np.mean([0.02, 0.03, 0.04]))
    expected = scipy_stats.ttest_rel([0.86, 0.88, 0.90], [0.84, 0.85, 0.86]).pvalue
    assert difference.p_value == pytest.approx(expected)


def test_paired_interval_is_the_t_interval_of_the_differences_and_agrees_with_ttest_rel():
    model = pd.Series([0.83, 0.85, 0.80, 0.84, 0.86], index=range(5))
    baseline = pd.Series([0.81, 0.82, 0.81, 0.80, 0.83], index=range(5))
    differences = (model - baseline).to_numpy()
    expected = scipy_stats.ttest_rel(model, baseline).confidence_interval(0.95)  # scipy's own paired interval
    difference = stats.paired(model, baseline)
    assert (difference.low, difference.high) == pytest.approx((expected.low, expected.high))
    assert difference.std == pytest.approx(np.std(differences, ddof=1))
    assert difference.low < difference.mean < difference.high


def test_two_pairs_give_the_wide_t_interval_not_the_span_of_the_two():
    # t(0.975, 1) = 12.71: with two seeds the honest interval is wide; the old bootstrap gave just [0.01, 0.03].
    difference = stats.paired(pd.Series([0.91, 0.83]), pd.Series([0.90, 0.80]))
    half = 12.7062047 * np.std([0.01, 0.03], ddof=1) / math.sqrt(2)
    assert (difference.low, difference.high) == pytest.approx((0.02 - half, 0.02 + half))
    assert difference.includes_zero and difference.p_value > 0.05


def test_one_pair_gives_a_difference_without_interval_or_p_value():
    difference = stats.paired(pd.Series({0: 0.9}), pd.Series({0: 0.8, 1: 0.7}))
    assert difference.n_pairs == 1 and difference.mean == pytest.approx(0.1)
    assert math.isnan(difference.low) and math.isnan(difference.p_value) and difference.includes_zero


def test_no_common_seed_gives_nan():
    difference = stats.paired(pd.Series({0: 0.9}), pd.Series({1: 0.8}))
    assert difference.n_pairs == 0 and math.isnan(difference.mean)


def test_equal_differences_give_a_point_interval_and_scipys_p_value():
    model, baseline = pd.Series([0.85, 0.86, 0.87]), pd.Series([0.85, 0.86, 0.87])
    same = stats.paired(model, baseline)
    assert (same.low, same.high, same.mean) == (0.0, 0.0, 0.0) and same.includes_zero
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = scipy_stats.ttest_rel(model, baseline).pvalue
    assert math.isnan(expected) and math.isnan(same.p_value)


def test_equal_nonzero_differences_up_to_rounding_have_no_p_value():
    # 17/18 - 18/18 on every seed: the float differences are a few ulps apart, and scipy's t-test on that spread
    # answers p ~ 1e-15; there is no spread, so no test.
    model, baseline = pd.Series([17 / 18, 0.1 + 17 / 18 - 0.1, 17 / 18]), pd.Series([1.0, 1.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert scipy_stats.ttest_rel(model, baseline).pvalue < 1e-3  # what the t-test alone would claim
    difference = stats.paired(model, baseline)
    assert math.isnan(difference.p_value) and difference.std == 0.0
    assert difference.low == difference.high == pytest.approx(-1 / 18)
    spread = stats.paired(pd.Series([0.90, 0.92, 0.95]), baseline)  # a real spread keeps its test
    assert 0 < spread.p_value < 0.05


def test_an_interval_below_zero_excludes_zero():
    assert not stats.Difference(3, -0.02, -0.03, -0.01, 0.01).includes_zero
    assert stats.Difference(3, 0.01, -0.001, 0.02, 0.2).includes_zero


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-0.1, 0.1), min_size=2, max_size=8))
def test_the_interval_excludes_zero_exactly_when_the_paired_t_test_rejects(differences):
    baseline = pd.Series(np.full(len(differences), 0.8))
    difference = stats.paired(baseline + np.array(differences), baseline)
    if math.isnan(difference.p_value) or abs(difference.p_value - 0.05) < 1e-9:
        return
    assert difference.includes_zero == (difference.p_value > 0.05)


# ---- coverage: does a "95 %" interval cover the truth 95 % of the time at the seed counts studies use ----------

REPETITIONS = 2_000


def _percentile_bootstrap(samples: np.ndarray, rng: np.random.Generator, resamples: int = 1_000) -> tuple:
    """The interval the report used before: percentile bootstrap of the mean, vectorised over repetitions."""
    repetitions, n = samples.shape
    picks = rng.integers(0, n, size=(repetitions, resamples, n))
    means = np.take_along_axis(samples[:, None, :], picks, axis=2).mean(axis=2)
    return np.percentile(means, 2.5, axis=1), np.percentile(means, 97.5, axis=1)


def _coverage(low: np.ndarray, high: np.ndarray, truth: float = 0.0) -> float:
    return float(np.mean((low <= truth) & (truth <= high)))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_t_interval_covers_the_true_mean_at_the_nominal_rate(n):
    differences = np.random.default_rng(n).normal(0.0, 0.01, size=(REPETITIONS, n))
    # 2,000 repetitions: the binomial standard error of a 95 % coverage is 0.5 points, so 3 points is ~6 sigma.
    assert _coverage(*stats.t_interval(differences)) == pytest.approx(0.95, abs=0.03)


def test_the_old_percentile_bootstrap_under_covers_with_few_seeds():
    rng = np.random.default_rng(3)
    differences = rng.normal(0.0, 0.01, size=(REPETITIONS, 3))
    coverage = _coverage(*_percentile_bootstrap(differences, rng))
    assert coverage < 0.85  # about 0.75: the test above would have failed on it
    assert _coverage(*stats.t_interval(differences)) > 0.92


# ---- several models against one baseline: Holm ----------------------------------------------------------------

def test_holm_matches_a_hand_computed_reference():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> raised to 0.06 (step-down monotone).
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_leaves_nan_out_of_the_family_and_keeps_one_p_as_is():
    adjusted = stats.holm([0.6, math.nan, 0.02])  # family of 2: 0.02·2 = 0.04, 0.6·1 -> 0.6
    assert adjusted[0] == pytest.approx(0.6) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert stats.holm([0.4, 0.7, 0.9]).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert stats.holm([0.03]).tolist() == [0.03] and stats.holm([]).size == 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=8))
def test_holm_is_never_below_the_raw_p_and_never_above_bonferroni(p_values):
    adjusted = stats.holm(p_values)
    raw = np.asarray(p_values)
    assert np.all(adjusted >= raw - 1e-12) and np.all(adjusted <= np.minimum(1, raw * len(raw)) + 1e-12)


# ---- power ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("effect, seeds", [(0.5, 34), (0.8, 15), (1.0, 10), (0.2, 199)])
def test_seeds_for_power_match_the_published_paired_t_test_sample_sizes(effect, seeds):
    # Cohen's (1988) tables and G*Power for a two-sided one-sample/paired t-test, alpha 0.05, power 0.80.
    assert stats.seeds_for_power(effect * 0.01, 0.01) == seeds
    assert stats.power(seeds, effect) >= 0.80 > stats.power(seeds - 1, effect)


def test_power_at_34_pairs_and_half_a_standard_deviation_is_0_808():
    assert stats.power(34, 0.5) == pytest.approx(0.8078, abs=1e-4)
    simulated = np.random.default_rng(0).normal(0.5, 1.0, size=(4_000, 34))
    rejected = scipy_stats.ttest_1samp(simulated, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8078, abs=0.02)  # the noncentral t against a simulation


def test_seeds_for_power_without_spread_or_difference():
    assert math.isnan(stats.seeds_for_power(0.01, 0.0)) and math.isnan(stats.seeds_for_power(math.nan, 0.01))
    assert stats.seeds_for_power(0.0, 0.01) == math.inf and stats.seeds_for_power(1e-6, 0.01) == math.inf
