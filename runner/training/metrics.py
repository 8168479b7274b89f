"""Metrics and losses: plain functions on numpy arrays and torch tensors, nothing else from the runner.

Classification, through scikit-learn. Two classes: accuracy, balanced accuracy, ROC AUC, negative log-likelihood
and F1 of P(class 1), (N,) probabilities. K > 2 classes, (N, K) probabilities: accuracy and balanced accuracy of the
arg-max, macro one-vs-rest AUC, multi-class log loss, macro F1 and each class's recall (`recall_<k>`, k the label).
Segmentation: pixel Dice / IoU / accuracy over the whole set, and object F1 (connected components matched one-to-one
to true instances at IoU >= 0.5 with the Hungarian algorithm).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from skimage.measure import label as connected_components
from sklearn.metrics import confusion_matrix, f1_score, log_loss, roc_auc_score

MATCH_IOU = 0.5
# Keeps log-loss finite when a model is certain and wrong; same order as float32 resolution near 0 and 1.
_PROB_EPS = 1e-7


class MetricInputError(ValueError):
    """Arrays whose shapes or values do not fit the metric; the message names the bad value and what is allowed."""


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Binary metrics for (N,) P(class 1) (or (N, 2) class probabilities); multi-class ones for (N, K > 2)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2 and probs.shape[1] == 2:
        probs = probs[:, 1]
    if probs.ndim == 2:
        return multiclass_metrics(labels, probs)
    return binary_metrics(labels, probs)


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, balanced_accuracy, auc (nan if only one class is present), nll and f1 of binary labels against
    P(class 1)."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    _check_same_length(labels, probs)
    _check_binary(labels, "labels")
    _check_probabilities(probs)
    predicted = (probs >= 0.5).astype(np.int64)
    clipped = np.clip(probs, _PROB_EPS, 1.0 - _PROB_EPS)
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": balanced_accuracy(class_recalls(labels, predicted, 2)),
        "auc": float(roc_auc_score(labels, probs)) if both_classes else math.nan,
        "nll": float(log_loss(labels, clipped, labels=[0, 1])),
        "f1": float(f1_score(labels, predicted, labels=[0, 1], zero_division=0.0)),
    }


def multiclass_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """accuracy, balanced_accuracy (mean recall over the classes present), auc (macro one-vs-rest; nan when a class
    is absent from `labels`), nll, f1 (macro) and recall_<k> (nan for an absent class) of (N, K) probabilities."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    _check_same_length(labels, probs)
    k = probs.shape[1]
    _check_classes(labels, k)
    _check_probabilities(probs)
    predicted = predicted_classes(probs)
    recalls = class_recalls(labels, predicted, k)
    # Renormalised after clipping, so a row stays a distribution and the log loss stays finite.
    clipped = np.clip(probs, _PROB_EPS, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    out = {
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": balanced_accuracy(recalls),
        "auc": macro_auc(labels, probs),
        "nll": float(log_loss(labels, clipped, labels=list(range(k)))),
        "f1": float(f1_score(labels, predicted, labels=list(range(k)), average="macro", zero_division=0.0)),
    }
    out.update({f"recall_{i}": float(r) for i, r in enumerate(recalls)})
    return out


def predicted_classes(probs: np.ndarray) -> np.ndarray:
    """The predicted label of each row: P(class 1) >= 0.5 for (N,) probabilities, the arg-max for (N, K)."""
    probs = np.asarray(probs)
    return probs.argmax(axis=1) if probs.ndim == 2 else (probs >= 0.5).astype(np.int64)


def confusion(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts: rows the true label, columns the predicted one."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    return confusion_matrix(labels, predicted_classes(probs), labels=list(range(n_classes)))


def class_recalls(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall of each class (nan for a class absent from `labels`), from the confusion matrix."""
    matrix = confusion_matrix(labels, predicted, labels=list(range(n_classes)))
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / np.maximum(support, 1), np.nan)


def balanced_accuracy(recalls: np.ndarray) -> float:
    """The mean recall over the classes present: sklearn's balanced_accuracy_score, without its warning for a
    predicted class that the labels lack."""
    present = recalls[np.isfinite(recalls)]
    return float(present.mean()) if len(present) else math.nan


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """The unweighted mean over classes of each class's one-vs-rest ROC AUC (sklearn's multi_class="ovr",
    average="macro"); nan when a class is absent, since its AUC is then undefined."""
    k = probs.shape[1]
    if len(np.unique(labels)) < k:
        return math.nan
    return float(np.mean([roc_auc_score(labels == i, probs[:, i]) for i in range(k)]))


def segmentation_metrics(true_instances: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """dice, iou (foreground pixels pooled over the set), pixel_accuracy, object_f1 (instances pooled over the set).

    true_instances: (N, H, W) int, 0 = background, k > 0 = instance k. probs: (N, H, W) P(foreground).
    An empty truth and an empty prediction agree perfectly: dice, iou and object_f1 are 1 then.
    """
    true_instances = np.asarray(true_instances)
    probs = np.asarray(probs, dtype=np.float64)
    if true_instances.ndim != 3 or true_instances.shape != probs.shape:
        raise MetricInputError(
            f"true_instances {true_instances.shape} and probs {probs.shape} must both be (N, H, W) of equal shape"
        )
    _check_probabilities(probs)
    truth = true_instances > 0
    predicted = probs >= threshold
    overlap = float(np.logical_and(truth, predicted).sum())
    total = float(truth.sum() + predicted.sum())
    union = float(np.logical_or(truth, predicted).sum())
    matched, n_true, n_pred = 0, 0, 0
    for instances, mask in zip(true_instances, predicted):
        image_matched, image_true, image_pred = _match_objects(instances, mask)
        matched, n_true, n_pred = matched + image_matched, n_true + image_true, n_pred + image_pred
    return {
        "dice": 2.0 * overlap / total if total else 1.0,
        "iou": overlap / union if union else 1.0,
        "pixel_accuracy": float(np.mean(truth == predicted)),
        "object_f1": 2.0 * matched / (n_true + n_pred) if n_true + n_pred else 1.0,
    }


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy plus soft Dice loss (1 - soft Dice over the batch) for (B, 1, H, W) logits.

    BCE gives every pixel a gradient; the Dice term keeps small foregrounds from drowning in background.
    `smooth` keeps the Dice term defined (and 0) when both prediction and target are empty.
    """
    if logits.shape != target.shape:
        raise MetricInputError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have equal shape")
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    soft_dice = (2.0 * (probs * target).sum() + smooth) / (probs.sum() + target.sum() + smooth)
    return bce + (1.0 - soft_dice)


def _match_objects(instances: np.ndarray, predicted_mask: np.ndarray) -> tuple[int, int, int]:
    """(matched pairs at IoU >= 0.5, true instances, predicted components) for one image."""
    true_ids = np.unique(instances[instances > 0])
    predicted = connected_components(predicted_mask, connectivity=1)
    n_pred = int(predicted.max())
    if len(true_ids) == 0 or n_pred == 0:
        return 0, len(true_ids), n_pred
    # Relabel true ids to 1..n so both label images index one joint histogram.
    relabelled = np.where(instances > 0, np.searchsorted(true_ids, instances) + 1, 0)
    iou = _iou_matrix(relabelled, len(true_ids), predicted, n_pred)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return int(np.sum(iou[rows, cols] >= MATCH_IOU)), len(true_ids), n_pred


def _iou_matrix(true_labels: np.ndarray, n_true: int, pred_labels: np.ndarray, n_pred: int) -> np.ndarray:
    """IoU of every (true k, predicted j) pair, both labelled 1..n with 0 as background, from one joint histogram."""
    joint = np.bincount(
        true_labels.ravel() * (n_pred + 1) + pred_labels.ravel(), minlength=(n_true + 1) * (n_pred + 1)
    ).reshape(n_true + 1, n_pred + 1)
    intersection = joint[1:, 1:].astype(np.float64)
    true_area = joint[1:, :].sum(axis=1, keepdims=True)
    pred_area = joint[:, 1:].sum(axis=0, keepdims=True)
    return intersection / (true_area + pred_area - intersection)


def _check_same_length(labels: np.ndarray, probs: np.ndarray) -> None:
    if len(labels) != len(probs) or len(labels) == 0:
        raise MetricInputError(f"labels ({len(labels)}) and probs ({len(probs)}) must have the same non-zero length")


def _check_binary(labels: np.ndarray, name: str) -> None:
    bad = set(np.unique(labels).tolist()) - {0, 1}
    if bad:
        raise MetricInputError(f"{name} must be 0 or 1, got {sorted(bad)[:5]}")


def _check_classes(labels: np.ndarray, n_classes: int) -> None:
    bad = set(np.unique(labels).tolist()) - set(range(n_classes))
    if bad:
        raise MetricInputError(f"labels must be class indices 0..{n_classes - 1} for {n_classes} probability "
                               f"columns, got {sorted(bad)[:5]}")


def _check_probabilities(probs: np.ndarray) -> None:
    if not np.all(np.isfinite(probs)) or probs.min() < 0.0 or probs.max() > 1.0:
        raise MetricInputError(
            f"probabilities must be finite and in [0, 1], got range [{np.nanmin(probs)}, {np.nanmax(probs)}]"
        )
