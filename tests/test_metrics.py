"""Metrics and losses against hand-computed small cases and against independent computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from runner.training.metrics import MetricInputError, classification_metrics, dice_bce_loss, segmentation_metrics


# --- classification -------------------------------------------------------------------------------------------------


def test_classification_hand_computed():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.6, 0.4, 0.9])
    m = classification_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(0.5)
    # Pairs (neg, pos): (0.1,0.4) ok, (0.1,0.9) ok, (0.6,0.4) wrong, (0.6,0.9) ok -> 3/4.
    assert m["auc"] == pytest.approx(0.75)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.4, 0.9])))
    # One TP (0.9), one FP (0.6), one FN (0.4): precision 1/2, recall 1/2.
    assert m["f1"] == pytest.approx(0.5)


def test_classification_one_class_gives_nan_auc():
    m = classification_metrics(np.ones(5, dtype=int), np.full(5, 0.7))
    assert math.isnan(m["auc"])
    assert m["accuracy"] == 1.0
    assert m["f1"] == 1.0
    assert m["nll"] == pytest.approx(-math.log(0.7))


def test_classification_certain_and_wrong_stays_finite():
    m = classification_metrics(np.array([0, 1]), np.array([1.0, 0.0]))
    assert math.isfinite(m["nll"]) and m["nll"] > 10
    assert m["accuracy"] == 0.0 and m["auc"] == 0.0


@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0.0, 1.0)), min_size=2, max_size=40))
def test_auc_matches_pairwise_count(pairs):
    labels = np.array([p[0] for p in pairs])
    probs = np.array([p[1] for p in pairs])
    auc = classification_metrics(labels, probs)["auc"]
    pos, neg = probs[labels == 1], probs[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        assert math.isnan(auc)
        return
    # Mann-Whitney: fraction of (pos, neg) pairs ranked correctly, ties count half.
    diff = pos[:, None] - neg[None, :]
    expected = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
    assert auc == pytest.approx(expected)


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        ([0, 1], [0.5], "same non-zero length"),
        ([0, 2], [0.5, 0.5], "must be 0 or 1"),
        ([0, 1], [0.5, 1.5], r"in \[0, 1\]"),
        ([0, 1], [0.5, float("nan")], "finite"),
    ],
)
def test_classification_rejects_bad_input(labels, probs, match):
    with pytest.raises(MetricInputError, match=match):
        classification_metrics(np.array(labels), np.array(probs))


# --- segmentation ---------------------------------------------------------------------------------------------------


def _two_objects() -> np.ndarray:
    truth = np.zeros((1, 8, 8), dtype=int)
    truth[0, 1:3, 1:3] = 1
    truth[0, 5:8, 4:8] = 7
    return truth


def test_segmentation_perfect_prediction():
    truth = _two_objects()
    m = segmentation_metrics(truth, (truth > 0).astype(float))
    assert m == {"dice": 1.0, "iou": 1.0, "pixel_accuracy": 1.0, "object_f1": 1.0}


def test_segmentation_empty_prediction():
    truth = _two_objects()
    m = segmentation_metrics(truth, np.zeros(truth.shape))
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["object_f1"] == 0.0
    assert m["pixel_accuracy"] == pytest.approx(1 - 16 / 64)


def test_segmentation_empty_truth_and_prediction_agree():
    m = segmentation_metrics(np.zeros((2, 4, 4), dtype=int), np.full((2, 4, 4), 0.1))
    assert m == {"dice": 1.0, "iou": 1.0, "pixel_accuracy": 1.0, "object_f1": 1.0}


def test_segmentation_hand_computed_partial():
    truth = _two_objects()  # object A: 4 px, object B: 12 px
    probs = np.zeros(truth.shape)
    probs[0, 1:3, 1:2] = 0.9  # half of A: IoU 0.5 -> matched
    probs[0, 5:6, 4:8] = 0.9  # a third of B: IoU 1/3 -> not matched
    probs[0, 0, 7] = 0.8  # a spurious one-pixel object
    m = segmentation_metrics(truth, probs)
    overlap, predicted, true = 2 + 4, 2 + 4 + 1, 16
    assert m["dice"] == pytest.approx(2 * overlap / (predicted + true))
    assert m["iou"] == pytest.approx(overlap / (predicted + true - overlap))
    assert m["pixel_accuracy"] == pytest.approx(1 - (1 + 2 + 8) / 64)
    # 1 match, 2 true, 3 predicted -> F1 = 2 * 1 / (2 + 3).
    assert m["object_f1"] == pytest.approx(0.4)


def test_segmentation_touching_instances_merge_into_one_component():
    truth = np.zeros((1, 4, 8), dtype=int)
    truth[0, :, :4] = 1
    truth[0, :, 4:] = 2
    m = segmentation_metrics(truth, np.ones(truth.shape))
    # One predicted component covering both: IoU 0.5 with each, one of them matched.
    assert m["object_f1"] == pytest.approx(2 * 1 / (2 + 1))
    assert m["dice"] == 1.0


def test_segmentation_pools_objects_over_the_set():
    truth = np.concatenate([_two_objects(), np.zeros((1, 8, 8), dtype=int)])
    probs = (truth > 0).astype(float)
    probs[1, 0:2, 0:2] = 1.0  # false positive in the empty image
    assert segmentation_metrics(truth, probs)["object_f1"] == pytest.approx(2 * 2 / (2 + 3))


@given(st.integers(0, 2**31 - 1))
def test_segmentation_pixel_metrics_match_direct_counts(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, size=(3, 12, 12))
    probs = rng.random((3, 12, 12))
    m = segmentation_metrics(truth, probs, threshold=0.3)
    t, p = truth.ravel() > 0, probs.ravel() >= 0.3
    tp, fp, fn = np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)
    assert m["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert 0.0 <= m["object_f1"] <= 1.0


def test_segmentation_rejects_shape_mismatch():
    with pytest.raises(MetricInputError, match=r"\(N, H, W\)"):
        segmentation_metrics(np.zeros((1, 4, 4), dtype=int), np.zeros((1, 4, 5)))


# --- loss -----------------------------------------------------------------------------------------------------------


def test_dice_bce_loss_matches_hand_formula():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    p = torch.sigmoid(logits)
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert dice_bce_loss(logits, target).item() == pytest.approx((bce + 1 - dice).item(), rel=1e-6)


def test_dice_bce_loss_is_small_when_confident_and_right_and_has_gradients():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1.0
    good = (target * 2 - 1) * 20
    bad = -good
    assert dice_bce_loss(good, target).item() < 1e-3
    assert dice_bce_loss(bad, target).item() > 10
    logits = torch.zeros_like(target, requires_grad=True)
    dice_bce_loss(logits, target).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_dice_bce_loss_rejects_shape_mismatch():
    with pytest.raises(MetricInputError, match="equal shape"):
        dice_bce_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))
