"""More than two classes: metrics against hand-computed values and scikit-learn, the binary metrics unchanged, the
end-of-job extras (top-label ECE, macro AUC interval), best-epoch selection by eval.metric, and one real 3-class job
through runner.training.loop.run with its checkpoint and confusion artifact."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from runner.data.batches import ArraySplit, Splits
from runner.training import checkpoint, extra_metrics, loop
from runner.training.metrics import MetricInputError, classification_metrics, confusion
from tests.report_fixtures import job_config

CPU = torch.device("cpu")
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([[0.7, 0.2, 0.1],   # 0 -> 0
                  [0.2, 0.5, 0.3],   # 0 -> 1
                  [0.1, 0.8, 0.1],   # 1 -> 1
                  [0.3, 0.3, 0.4],   # 1 -> 2
                  [0.1, 0.1, 0.8],   # 2 -> 2
                  [0.2, 0.2, 0.6]])  # 2 -> 2


# ---- metrics -----------------------------------------------------------------------------------------------------

def test_three_classes_hand_computed():
    m = classification_metrics(LABELS, PROBS)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert [m["recall_0"], m["recall_1"], m["recall_2"]] == pytest.approx([0.5, 0.5, 1.0])
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    # F1 per class: 0: P 1, R 1/2 -> 2/3; 1: P 1/2, R 1/2 -> 1/2; 2: P 2/3, R 1 -> 4/5.
    assert m["f1"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.7, 0.2, 0.8, 0.3, 0.8, 0.6])))
    # One vs rest, (positive, negative) pairs ranked right, ties half: 6.5/8, 7/8, 8/8.
    assert m["auc"] == pytest.approx((6.5 / 8 + 7 / 8 + 1.0) / 3)


def test_confusion_rows_are_true_and_columns_predicted():
    assert confusion(LABELS, PROBS, 3).tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]


def test_macro_auc_is_sklearns_one_vs_rest():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 4
    logits = rng.normal(size=(60, 4)) + np.eye(4)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert classification_metrics(labels, probs)["auc"] == pytest.approx(expected)


def test_an_absent_class_gives_nan_auc_and_recall_but_the_rest_is_defined():
    m = classification_metrics(LABELS[:4], PROBS[:4])
    assert math.isnan(m["auc"]) and math.isnan(m["recall_2"])
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # the mean of recall_0 and recall_1 only
    assert m["accuracy"] == pytest.approx(0.5) and math.isfinite(m["nll"])


def test_a_label_beyond_the_columns_is_rejected():
    with pytest.raises(MetricInputError, match="class indices 0..2"):
        classification_metrics(np.array([0, 3]), PROBS[:2])


def test_binary_metrics_are_unchanged_and_gain_balanced_accuracy():
    labels, probs = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9, 0.8])
    m = classification_metrics(labels, probs)
    assert set(m) == {"accuracy", "balanced_accuracy", "auc", "nll", "f1"}
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.4, 0.9, 0.8])))
    assert m["f1"] == pytest.approx(2 / 3)  # TP 2, FP 1, FN 1
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # (N, 2) class probabilities are read as P(class 1): the same numbers.
    assert classification_metrics(labels, np.stack([1 - probs, probs], 1)) == pytest.approx(m)


# ---- end-of-job extras -------------------------------------------------------------------------------------------

def test_top_label_ece_hand_computed():
    # Top probabilities 0.65 (right), 0.65 (wrong) in bin 6, 0.85 (right) in bin 8: (2 * 0.15 + 0.15) / 3.
    probs = np.array([[0.65, 0.25, 0.1], [0.65, 0.3, 0.05], [0.1, 0.05, 0.85]])
    out = extra_metrics.calibration(np.array([0, 1, 2]), probs)
    assert out["test_ece"] == pytest.approx(0.15)
    assert (out["calib_bin6_n"], out["calib_bin6_y"], out["calib_bin8_n"]) == (2.0, 0.5, 1.0)


def test_macro_auc_interval_brackets_the_macro_auc_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = np.arange(300) % 3
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    low, high = extra_metrics.auc_interval(labels, probs, seed=0)
    assert low < classification_metrics(labels, probs)["auc"] < high and high - low < 0.15
    assert (low, high) == extra_metrics.auc_interval(labels, probs, seed=0)
    assert all(math.isnan(v) for v in extra_metrics.auc_interval(labels % 2, probs, seed=0))


# ---- best epoch by eval.metric -----------------------------------------------------------------------------------

EPOCHS = [{"valid_nll": 0.9, "valid_auc": 0.90, "valid_loss": 0.9}, {"valid_nll": 0.5, "valid_auc": 0.80,
                                                                     "valid_loss": 0.5},
          {"valid_nll": 0.7, "valid_auc": 0.95, "valid_loss": 0.7}]


@pytest.mark.parametrize(("metric", "best"), [("nll", 1), ("auc", 2)])
def test_eval_metric_picks_the_best_epoch(metric, best):
    config = job_config("m", "classification", 0, eval={"metric": metric})
    progress, model = loop.Progress(), torch.nn.Linear(1, 1)
    for epoch, metrics in enumerate(EPOCHS):
        progress.epoch = epoch
        loop.update_best(config, progress, metrics, model, None)
    assert progress.best_epoch == best


def test_undefined_auc_falls_back_to_the_loss():
    config = job_config("m", "classification", 0)
    assert loop.monitor(config, {"valid_auc": math.nan, "valid_loss": 0.4}) == -0.4


# ---- one 3-class job ---------------------------------------------------------------------------------------------

CLASSES = ("stroma", "tumour", "lymphocytes")


def _split(n: int, seed: int, binary: bool = False) -> ArraySplit:
    """Class k is a noisy patch whose channel k is brightest: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % (2 if binary else 3)
    images = rng.integers(0, 120, size=(n, 16, 16, 3))
    images[np.arange(n), :, :, labels] += 120
    return ArraySplit(images.astype(np.uint8), labels, labels)


def three_class_splits() -> Splits:
    return Splits(train=_split(48, 0), valid=_split(24, 1), test=_split(30, 2), description="3 colours, in memory",
                  classes=CLASSES, split_note="stratified by label, seed 0")


@pytest.fixture(scope="module")
def three_class_job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k3")
    config = job_config("k3", "classification", 0, model={"width": 4, "depth": 1},
                        train={"epochs": 3, "batch_size": 16, "lr": 3e-3},
                        eval={"metric": "nll", "rotation_angles": (0.0, 90.0), "rotation_samples": 12})
    history = []
    hooks = loop.Hooks(record_epochs=history.extend)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "load_splits", lambda task, data, folder: three_class_splits())
        result = loop.run(config, tmp / "state.pt", tmp / "data", CPU, hooks)
    return config, result, history, checkpoint.load(tmp / "state.pt")


def test_the_model_has_three_outputs_and_predicts_three_probabilities(three_class_job):
    config, _, _, state = three_class_job
    model = loop.build(config, len(state["classes"]))
    model.load_state_dict(state["best_model"])
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    _, probs = loop.predict(config, model, three_class_splits().test, CPU)
    assert probs.shape == (30, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_the_checkpoint_names_the_classes_and_the_patch_side(three_class_job):
    _, _, _, state = three_class_job
    assert state["classes"] == list(CLASSES) and state["image_size"] == 16


def test_final_metrics_have_per_class_recall_and_the_macro_extras(three_class_job):
    _, result, history, _ = three_class_job
    final = result.final
    assert {"test_recall_0", "test_recall_1", "test_recall_2", "test_balanced_accuracy", "test_ece",
            "test_auc_low", "valid_nll", "valid_balanced_accuracy", "valid_f1"} <= set(final)
    assert "test_recall_3" not in final
    assert {name for _, name, _ in result.rotation} == {"accuracy", "auc"}


def test_eval_metric_nll_keeps_the_lowest_loss_epoch(three_class_job):
    _, result, history, _ = three_class_job
    losses = [metrics["valid_nll"] for _, metrics in history]
    assert len(losses) == 3 and result.final["best_epoch"] == int(np.argmin(losses)) + 1
    assert result.final["valid_nll"] == min(losses)


def test_the_confusion_artifact_counts_every_test_patch(three_class_job):
    _, result, _, _ = three_class_job
    media, data = result.artifacts["confusion.json"]
    body = json.loads(data)
    assert media == "application/json" and body["classes"] == list(CLASSES)
    matrix = np.array(body["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 30 and matrix.sum(1).tolist() == [10, 10, 10]
    assert body["split_note"] == "stratified by label, seed 0" and body["data"] == "3 colours, in memory"
    accuracy = np.trace(matrix) / 30
    assert result.final["test_accuracy"] == pytest.approx(accuracy)


def test_a_binary_job_without_class_names_gets_two_outputs(tmp_path):
    splits = three_class_splits()
    binary = replace(splits, classes=())
    assert loop.class_count(binary) == 2 and loop.data_facts(binary) == {"classes": ["0", "1"], "image_size": 16}


# ---- search and final selection ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("metric", "direction"), [("valid_balanced_accuracy", "maximize"), ("valid_f1", "maximize"),
                                                   ("valid_nll", "minimize")])
def test_search_and_final_accept_the_new_validation_metrics(metric, direction):
    from runner.spec.search import parse_final, parse_search

    problems: list = []
    search = parse_search({"metric": metric, "trials": 2, "space": {"train.lr": {"log": [1e-4, 1e-2]}}}, "search",
                          "classification", problems)
    final = parse_final({"seeds": [0, 1], "select": metric}, "classification", None, problems)
    assert problems == [] and search.direction == direction and final.direction == direction


@pytest.mark.parametrize("n_classes", [2, 3])
def test_validation_records_every_metric_a_search_may_select(n_classes):
    from runner.spec.search import TASK_METRICS

    config = job_config("m", "classification", 0, model={"width": 4, "depth": 1})
    model = loop.build(config, n_classes)
    split = three_class_splits().valid if n_classes == 3 else _split(12, 3, binary=True)
    assert set(TASK_METRICS["classification"]) <= set(loop.validate(config, model, split, CPU))
