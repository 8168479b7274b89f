"""The final table's statistics against scipy and numpy on known samples, including one seed and equal values."""
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


def test_bootstrap_interval_is_scipys_seeded_percentile_bootstrap_of_the_differences():
    model = pd.Series([0.83, 0.85, 0.80, 0.84, 0.86], index=range(5))
    baseline = pd.Series([0.81, 0.82, 0.81, 0.80, 0.83], index=range(5))
    differences = (model - baseline).to_numpy()
    expected = scipy_stats.bootstrap((differences,), np.mean, n_resamples=stats.RESAMPLES, method="percentile",
                                     rng=np.random.default_rng(stats.BOOTSTRAP_SEED)).confidence_interval
    difference = stats.paired(model, baseline)
    assert (difference.low, difference.high) == pytest.approx((expected.low, expected.high))
    assert difference.low < difference.mean < difference.high
    assert stats.paired(model, baseline) == difference  # seeded: the same report twice


def test_two_pairs_bootstrap_spans_the_two_differences():
    # Resampling two differences a, b gives means a, (a+b)/2, b with chances 1/4, 1/2, 1/4: the 2.5 % and 97.5 %
    # points are a and b themselves.
    difference = stats.paired(pd.Series([0.91, 0.83]), pd.Series([0.90, 0.80]))
    assert (difference.low, difference.high) == pytest.approx((0.01, 0.03))
    assert not difference.includes_zero


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


def test_an_interval_below_zero_excludes_zero():
    assert not stats.Difference(3, -0.02, -0.03, -0.01, 0.01).includes_zero
    assert stats.Difference(3, 0.01, -0.001, 0.02, 0.2).includes_zero


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-0.1, 0.1), min_size=2, max_size=8))
def test_bootstrap_interval_lies_within_the_observed_differences(differences):
    baseline = pd.Series(np.full(len(differences), 0.8))
    difference = stats.paired(baseline + np.array(differences), baseline)
    assert min(differences) - 1e-9 <= difference.low <= difference.high <= max(differences) + 1e-9
