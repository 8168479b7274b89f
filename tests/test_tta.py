"""End-of-job extra metrics (runner/training/extra_metrics.py): D4 test-time augmentation, calibration and the bootstrap
interval of test AUC, against sklearn and hand computations, on a tiny real CNN."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

import equiv
from runner.data.batches import ArraySplit
from runner.training import extra_metrics
from runner.training.predict import predict
from tests.report_fixtures import job_config

CPU = torch.device("cpu")


def _config(family: str = "cnn", group: str = "trivial", task: str = "classification"):
    return job_config("tta", task, 0, model={"family": family, "group": group, "width": 4, "depth": 1},
                      train={"batch_size": 8})


def _split(n: int = 24, side: int = 16, seed: int = 0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    return ArraySplit(rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8), labels, labels)


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return equiv.build_model("cnn", "trivial", 3, 2, width=4, depth=1).eval()


# ---- calibration ------------------------------------------------------------------------------------------------

def test_calibration_bins_and_ece_match_sklearns_calibration_curve():
    rng = np.random.default_rng(1)
    probs = np.concatenate([rng.random(500), [0.0, 0.1, 0.5, 0.9, 1.0]])  # bin edges too: same side as sklearn
    labels = (rng.random(len(probs)) < probs ** 2).astype(int)  # over-confident: a visible calibration error
    prob_true, prob_pred = calibration_curve(labels, probs, n_bins=10, strategy="uniform")
    out = extra_metrics.calibration(labels, probs)
    filled = [i for i in range(10) if out[f"calib_bin{i}_n"] > 0]
    assert [out[f"calib_bin{i}_y"] for i in filled] == pytest.approx(prob_true)
    assert [out[f"calib_bin{i}_p"] for i in filled] == pytest.approx(prob_pred)
    counts = np.array([out[f"calib_bin{i}_n"] for i in filled])
    assert counts.sum() == len(probs)
    assert out["test_ece"] == pytest.approx(np.sum(counts * np.abs(prob_true - prob_pred)) / len(probs))
    assert out["test_ece"] > 0.05


def test_ece_of_a_hand_computed_example():
    # Bin 1 [0.1, 0.2): p 0.15, 0.15, labels 0, 1 -> |0.15 - 0.5| = 0.35; bin 8 [0.8, 0.9): p 0.85, label 1 ->
    # |0.85 - 1| = 0.15. ECE = (2 · 0.35 + 1 · 0.15) / 3 = 0.2833.
    out = extra_metrics.calibration(np.array([0, 1, 1]), np.array([0.15, 0.15, 0.85]))
    assert out["test_ece"] == pytest.approx(0.85 / 3)
    assert out["calib_bin1_n"] == 2 and out["calib_bin8_n"] == 1 and out["calib_bin0_n"] == 0
    assert "calib_bin0_p" not in out and out["calib_bin1_y"] == 0.5


def test_a_perfectly_calibrated_bin_has_no_error():
    out = extra_metrics.calibration(np.array([1, 1, 0, 1]), np.array([0.75, 0.75, 0.75, 0.75]))
    assert out["test_ece"] == pytest.approx(0.0)


# ---- the bootstrap interval of test AUC --------------------------------------------------------------------------

def test_resampled_aucs_equal_sklearns_auc_of_each_resample_with_ties():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, size=60)
    probs = np.round(rng.random(60) * 0.6 + 0.4 * labels, 1)  # rounded: many ties
    indices = rng.integers(0, 60, size=(40, 60))
    expected = [roc_auc_score(labels[i], probs[i]) for i in indices]
    weights = np.stack([np.bincount(i, minlength=60) for i in indices]).astype(float)  # how often each is drawn
    assert extra_metrics.resampled_aucs(labels, probs, weights) == pytest.approx(expected)


def test_auc_interval_is_seeded_contains_the_auc_and_narrows_with_more_patches():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=2000)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    low, high = extra_metrics.auc_interval(labels, probs, seed=0)
    assert low < roc_auc_score(labels, probs) < high
    assert (low, high) == extra_metrics.auc_interval(labels, probs, seed=0)
    small_low, small_high = extra_metrics.auc_interval(labels[:200], probs[:200], seed=0)
    # The width shrinks as 1/sqrt(n): ten times the patches, about a third of the width.
    assert (high - low) < 0.5 * (small_high - small_low)


def test_resampling_whole_slides_widens_the_interval_when_a_slides_patches_agree():
    """40 slides of 25 near-copies each: the patch bootstrap takes them for 1,000 independent patches and gives an
    interval far too narrow; resampling whole slides gives the width of 40 observations."""
    rng = np.random.default_rng(4)
    slide_label = rng.integers(0, 2, size=40)
    slide_score = np.clip(rng.normal(0.4 + 0.2 * slide_label, 0.2), 0, 1)
    labels, slides = np.repeat(slide_label, 25), np.repeat(np.arange(40), 25)
    probs = np.clip(np.repeat(slide_score, 25) + rng.normal(0, 0.005, size=1000), 0, 1)
    patch_low, patch_high = extra_metrics.auc_interval(labels, probs, seed=0)
    low, high = extra_metrics.auc_interval(labels, probs, seed=0, groups=slides.astype(str))
    assert low < roc_auc_score(labels, probs) < high
    assert (high - low) > 3 * (patch_high - patch_low)
    one_each = extra_metrics.auc_interval(labels[::25], probs[::25], seed=0)  # one patch per slide
    assert (high - low) == pytest.approx(one_each[1] - one_each[0], rel=0.35)
    assert (low, high) == extra_metrics.auc_interval(labels, probs, seed=0, groups=slides.astype(str))


def test_auc_interval_without_both_classes_is_nan():
    assert all(math.isnan(v) for v in extra_metrics.auc_interval(np.zeros(10), np.linspace(0, 1, 10), seed=0))


# ---- test-time augmentation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("group, invariant", [("trivial", False), ("flip", False), ("C4", False), ("C8", False),
                                              ("SO2", False), ("D4", True), ("D8", True), ("O2", True)])
def test_only_groups_with_all_eight_rot90_flips_skip_tta(group, invariant):
    assert extra_metrics.d4_invariant(_config("gcnn" if group != "trivial" else "cnn", group)) == invariant


def test_tta_probability_is_the_mean_over_the_eight_d4_copies(cnn):
    split = _split()
    labels, mean = extra_metrics.tta_probabilities(_config(), cnn, split, CPU)
    x = (torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    copies = [torch.rot90(torch.flip(x, (-1,)) if flip else x, k, (-2, -1)) for flip in (0, 1) for k in range(4)]
    with torch.no_grad():
        expected = torch.stack([cnn(c).softmax(1)[:, 1] for c in copies]).mean(0).numpy()
    assert labels.tolist() == split.labels.tolist()
    assert mean == pytest.approx(expected, abs=1e-6)


def test_the_tta_average_is_d4_invariant_while_the_plain_cnn_is_not(cnn):
    split = _split()
    turned = ArraySplit(np.ascontiguousarray(np.rot90(np.flip(split.images, 2), 1, (1, 2))), split.targets,
                        split.labels)
    _, tta = extra_metrics.tta_probabilities(_config(), cnn, split, CPU)
    _, tta_turned = extra_metrics.tta_probabilities(_config(), cnn, turned, CPU)
    assert tta_turned == pytest.approx(tta, abs=1e-5)
    single, single_turned = predict(_config(), cnn, split, CPU)[1], predict(_config(), cnn, turned, CPU)[1]
    assert np.abs(single - single_turned).max() > 1e-4  # without the average the turn changes the output


def test_end_of_job_records_tta_for_a_plain_cnn_but_not_for_a_d4_model(cnn):
    split = _split()
    labels, probs = predict(_config(), cnn, split, CPU)
    plain = extra_metrics.end_of_job(_config(), cnn, split, CPU, labels, probs)
    assert {"test_tta_auc", "test_tta_accuracy", "test_tta_nll", "test_tta_f1", "test_tta_ece",
            "tta_eval_images_per_s", "test_ece", "test_auc_low", "test_auc_high", "calib_bin0_n"} <= set(plain)
    assert plain["tta_eval_images_per_s"] > 0 and plain["test_auc_low"] <= plain["test_auc_high"]
    # The D4 model's predictions are not needed for its metrics: only its group decides that TTA is skipped.
    d4 = extra_metrics.end_of_job(_config("gcnn", "D4"), cnn, split, CPU, labels, probs)
    assert not any(name.startswith(("test_tta", "tta_")) for name in d4) and "test_ece" in d4
    assert extra_metrics.end_of_job(replace(_config(), task="segmentation"), cnn, split, CPU, labels, probs) == {}


@pytest.mark.parametrize("group", ["trivial", "flip", "C4", "C8", "D2", "D4", "D6", "D8", "D12", "SO2", "O2"])
def test_the_reports_torch_free_reading_of_a_group_agrees_with_the_jobs(group):
    from reports.study_report import _d4

    assert _d4(group) == extra_metrics.d4_invariant(_config("cnn" if group == "trivial" else "gcnn", group))
