"""From uint8 patches to the models' inputs, and from a model to its predictions on a split.

Shared by the training loop (validation, test metrics, the rotation curve) and the end-of-job extra metrics (TTA,
calibration), so both see the same batches, normalisation and precision.
"""
from __future__ import annotations

import numpy as np
import torch

from equiv.groups import rotate

# The input normalisation: uint8 pixels / PIXEL_MAX, then (x - INPUT_MEAN) / INPUT_STD, centred and scaled roughly to
# unit range; a fixed affine map keeps every model's symmetry intact. Exported models state it in model.json.
PIXEL_MAX = 255.0
INPUT_MEAN = 0.5
INPUT_STD = 0.25


def prepare(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 batch -> float in [0, 1] on the device (pinned first on CUDA so the copy overlaps compute)."""
    if device.type == "cuda":
        x = x.pin_memory()
    return x.to(device, non_blocking=True).float().div_(PIXEL_MAX)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the models' input (INPUT_MEAN, INPUT_STD above)."""
    return (x - INPUT_MEAN) / INPUT_STD


@torch.no_grad()
def predict(config, model, split, device, indices=None, angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Targets and probabilities: P(class 1) (N,) for two classes, class probabilities (N, K) for K > 2, the
    foreground probability (N, H, W) for segmentation."""
    model.eval()
    indices = np.arange(len(split)) if indices is None else indices
    batch = max(2 * config.train.batch_size, 32)
    all_targets, all_probs = [], []
    for start in range(0, len(indices), batch):
        x, y = split.get_batch(indices[start:start + batch])
        x = prepare(x, device)
        if angle:
            x = rotate(x, angle)
            if config.task == "segmentation":
                y = (rotate((y > 0).float().unsqueeze(1), angle) > 0.5).squeeze(1).long()
        logits = model(normalise(x)).float()
        probs = class_probabilities(logits) if config.task == "classification" else logits.sigmoid()[:, 0]
        all_targets.append(y.numpy())
        all_probs.append(probs.cpu().numpy())
    return np.concatenate(all_targets), np.concatenate(all_probs)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes; only P(class 1) for a binary model, so its metrics stay those of one score."""
    probs = logits.softmax(1)
    return probs[:, 1] if probs.shape[1] == 2 else probs
