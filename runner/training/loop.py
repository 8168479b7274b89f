"""The training loop for one job, top to bottom: data, model, optimiser, epochs, checkpoints, final evaluation.

It knows nothing of the database: the worker passes hooks (record epochs, heartbeat, stop request, progress).
On CPU a job resumed from any checkpoint ends with exactly the metrics of an uninterrupted run: the batch order
depends only on (seed, epoch), and every random state is in the checkpoint.
"""
from __future__ import annotations

import io
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import equiv
import equiv.checks
from equiv.groups import parse_group
from runner.data import Splits, iterate_batches, load_splits
from runner.data.augment import Augmenter
from runner.spec.config import JobConfig
from runner.training import checkpoint, extra_metrics
from runner.training.device import peak_memory_mb, reset_peak_memory
from runner.training.predict import normalise, predict, prepare
from runner.training.metrics import (
    classification_metrics,
    confusion,
    dice_bce_loss,
    segmentation_metrics,
)

INVARIANCE_SAMPLES = 8
SAMPLE_IMAGES = 8
CONFUSION_ARTIFACT = "confusion.json"
# Validation metrics of a classification epoch (as valid_<name>): every one a search or eval.metric may select on.
VALID_CLASS_METRICS = ("accuracy", "balanced_accuracy", "auc", "f1")


class Interrupted(Exception):
    """The worker asked the job to stop (Ctrl-C, SIGTERM); a checkpoint was written first."""


class Pruned(Exception):
    """The search stopped this job at a rung (the message says why); its checkpoint is kept."""


@dataclass
class Hooks:
    record_epochs: Callable[[list[tuple[int, dict[str, float]]]], None] = lambda history: None
    heartbeat: Callable[[], None] = lambda: None
    should_stop: Callable[[], bool] = lambda: False
    progress: Callable[[dict[str, Any]], None] = lambda info: None
    on_model: Callable[[int], None] = lambda params: None
    # After each recorded epoch (epochs completed): a reason to stop (pruning), or None to go on.
    after_epoch: Callable[[int], str | None] = lambda epochs: None
    # Right before each checkpoint write: raises when the job is no longer this worker's to write.
    before_save: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class JobResult:
    final: dict[str, float]
    rotation: list[tuple[float, str, float]]
    artifacts: dict[str, tuple[str, bytes]]
    params: int


@dataclass
class Progress:
    """Where the loop is; saved in every checkpoint."""

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    train_seconds: float = 0.0
    images_trained: int = 0
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def run(config: JobConfig, ckpt_path: Path, data_dir: Path, device: torch.device, hooks: Hooks) -> JobResult:
    seed_everything(config.seed)
    reset_peak_memory(device)
    splits = load_splits(config.task, config.data, data_dir)
    facts = data_facts(splits)
    hooks.heartbeat()
    model = build(config, class_count(splits)).to(device)
    params = equiv.count_params(model)
    hooks.on_model(params)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp(config, device))
    augment_rng = torch.Generator().manual_seed(config.seed + 1)
    progress, best_state = Progress(), None
    state = checkpoint.load(ckpt_path)
    if state is not None:
        progress, best_state = restore(state, model, optimizer, scheduler, scaler, augment_rng)
        hooks.record_epochs(progress.history)
        if progress.batch == 0:  # stopped right after an epoch: its pruning decision may not have been taken
            check_pruned(config, progress, hooks)
    augmenter = Augmenter(config.augment)
    last_save = time.monotonic()
    while progress.epoch < config.train.epochs and not early_stopped(config, progress):
        model.train()
        start = epoch_start = time.monotonic()  # `start` restarts at mid-epoch checkpoints, `epoch_start` does not
        batches = iterate_batches(splits.train, config.train.batch_size, shuffle=True, seed=config.seed,
                                  epoch=progress.epoch, start_batch=progress.batch, prefetch=device.type == "cuda")
        for x, y in batches:
            loss = train_step(config, model, optimizer, scaler, augmenter, augment_rng, x, y, device)
            check_finite(loss, progress)
            progress.batch += 1
            progress.seen += len(x)
            progress.images_trained += len(x)
            progress.loss_sum += loss * len(x)
            hooks.heartbeat()
            hooks.progress({"epoch": progress.epoch, "batch": progress.batch, "loss": progress.loss_sum / progress.seen,
                            "batches": math.ceil(len(splits.train) / config.train.batch_size)})
            if hooks.should_stop() or time.monotonic() - last_save > 60 * config.train.checkpoint_minutes:
                progress.train_seconds += time.monotonic() - start
                start = time.monotonic()
                hooks.before_save()
                save(ckpt_path, config, model, optimizer, scheduler, scaler, augment_rng, progress, best_state, facts)
                last_save = time.monotonic()
                if hooks.should_stop():
                    raise Interrupted(f"stopped at epoch {progress.epoch + 1}, batch {progress.batch}")
        progress.train_seconds += time.monotonic() - start
        metrics = validate(config, model, splits.valid, device)
        metrics.update(train_loss=progress.loss_sum / max(progress.seen, 1), lr=optimizer.param_groups[0]["lr"],
                       epoch_seconds=time.monotonic() - epoch_start)
        best_state = update_best(config, progress, metrics, model, best_state)
        progress.history.append((progress.epoch, metrics))
        scheduler.step()
        progress.epoch, progress.batch, progress.loss_sum, progress.seen = progress.epoch + 1, 0, 0.0, 0
        hooks.before_save()
        save(ckpt_path, config, model, optimizer, scheduler, scaler, augment_rng, progress, best_state, facts)
        last_save = time.monotonic()
        hooks.record_epochs(progress.history[-1:])
        hooks.heartbeat()
        check_pruned(config, progress, hooks)
    if best_state is not None:
        model.load_state_dict(best_state)
    return finish(config, model, splits, device, progress, params)


def check_pruned(config: JobConfig, progress: Progress, hooks: Hooks) -> None:
    if 0 < progress.epoch < config.train.epochs:  # after the last epoch there is nothing left to save
        reason = hooks.after_epoch(progress.epoch)
        if reason:
            raise Pruned(reason)


# ---- building --------------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_count(splits: Splits) -> int:
    """The classifier's outputs: one per class name; 2 for splits that name none."""
    return len(splits.classes) or 2


def data_facts(splits: Splits) -> dict[str, Any]:
    """What a trained model needs to be used later, saved in its checkpoint: class names (label order; "0", "1"
    where the splits name none) and the side of the training patches as loaded."""
    x, _ = splits.train.get_batch(np.arange(1))
    return {"classes": class_names(splits, class_count(splits)), "image_size": int(x.shape[-1])}


def build(config: JobConfig, n_classes: int = 2) -> torch.nn.Module:
    """The job's model; a classifier gets `n_classes` outputs (the checkpoint's "classes" says how many)."""
    m = config.model
    outputs = n_classes if config.task == "classification" else 1
    pool = {"pool": m.pool} if config.task == "classification" else {}  # the U-Nets have one pooling
    return equiv.build_model(m.family, m.group, 3, outputs, width=m.width, depth=m.depth, kernel_size=m.kernel_size,
                             dropout=m.dropout, match=m.match, max_frequency=m.max_frequency, **pool)


def make_optimizer(config: JobConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def make_scheduler(config: JobConfig, optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    epochs, schedule = config.train.epochs, config.train.schedule
    if schedule == "cosine":
        factor = lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs))  # noqa: E731
    elif schedule == "step":
        factor = lambda e: 0.1 ** ((e >= epochs * 0.5) + (e >= epochs * 0.75))  # noqa: E731
    else:
        factor = lambda e: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def use_amp(config: JobConfig, device: torch.device) -> bool:
    return config.train.amp and device.type == "cuda"


# ---- one step --------------------------------------------------------------------------------------------------

def targets(config: JobConfig, y: torch.Tensor, device: torch.device) -> torch.Tensor:
    y = y.to(device)
    return y if config.task == "classification" else (y > 0).float().unsqueeze(1)


def loss_of(config: JobConfig, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if config.task == "classification":
        return F.cross_entropy(logits.float(), target)
    return dice_bce_loss(logits.float(), target)


def train_step(config, model, optimizer, scaler, augmenter, augment_rng, x, y, device) -> float:
    x = prepare(x, device)
    mask = None if config.task == "classification" else y.to(device)
    x, mask = augmenter(x, mask, augment_rng)
    target = targets(config, y if mask is None else mask, device)
    with torch.autocast(device_type=device.type, enabled=use_amp(config, device)):
        loss = loss_of(config, model(normalise(x)), target)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def check_finite(loss: float, progress: Progress) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"training loss became {loss} at epoch {progress.epoch + 1}, batch {progress.batch + 1}; "
            "lower train.lr or enable gradient-friendly settings, then run with --retry-failed"
        )


# ---- evaluation ------------------------------------------------------------------------------------------------

def metrics_of(config, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if config.task == "classification":
        return classification_metrics(y, p)
    return segmentation_metrics(y, p)


def validate(config, model, split, device) -> dict[str, float]:
    y, p = predict(config, model, split, device)
    metrics = metrics_of(config, y, p)
    names = VALID_CLASS_METRICS if config.task == "classification" else ("dice", "iou")
    out = {f"valid_{k}": metrics[k] for k in names}
    out["valid_loss"] = metrics["nll"] if config.task == "classification" else 1.0 - metrics["dice"]
    if config.task == "classification":
        out["valid_nll"] = metrics["nll"]  # by its own name too: a search may minimise it
    return out


def monitor(config: JobConfig, metrics: dict[str, float]) -> float:
    """The validation number the best epoch maximises: eval.metric for classification (nll negated, as lower is
    better), Dice for segmentation; -loss when it is undefined (AUC with one class in the validation split)."""
    name = config.eval.metric if config.task == "classification" else "dice"
    value = metrics.get(f"valid_{name}")
    if value is None or not math.isfinite(value):
        return -metrics["valid_loss"]
    return -value if name == "nll" else value


def update_best(config, progress: Progress, metrics, model, best_state):
    score = monitor(config, metrics)
    if score > progress.best_metric:
        progress.best_metric, progress.best_epoch, progress.bad_epochs = score, progress.epoch, 0
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    progress.bad_epochs += 1
    return best_state


def early_stopped(config: JobConfig, progress: Progress) -> bool:
    return config.train.early_stopping > 0 and progress.bad_epochs >= config.train.early_stopping


# ---- the end of a job ------------------------------------------------------------------------------------------

def finish(config, model, splits, device, progress: Progress, params: int) -> JobResult:
    model.eval()
    fast = export_or_self(model)
    start = time.monotonic()
    y, p = predict(config, fast, splits.test, device)
    eval_seconds = time.monotonic() - start
    final = {f"test_{k}": v for k, v in metrics_of(config, y, p).items()}
    best = dict(progress.history[progress.best_epoch][1]) if progress.best_epoch >= 0 else {}
    final.update({k: v for k, v in best.items() if k.startswith("valid_") and k != "valid_loss"})
    final.update(
        best_epoch=progress.best_epoch + 1, epochs_run=progress.epoch, train_seconds=progress.train_seconds,
        train_images_per_s=progress.images_trained / max(progress.train_seconds, 1e-9),
        eval_images_per_s=len(y) / max(eval_seconds, 1e-9), peak_memory_mb=peak_memory_mb(device),
    )
    if config.eval.invariance:
        final.update(symmetry_errors(config, model, splits.test, device))
    final.update(extra_metrics.end_of_job(config, fast, splits.test, device, y, p))  # TTA, calibration, AUC interval
    rotation = rotation_curve(config, fast, splits.test, device)
    artifacts = {"samples.npz": samples(config, y, p, splits)}
    if config.task == "classification":
        artifacts[CONFUSION_ARTIFACT] = confusion_artifact(y, p, splits)
    return JobResult(final=final, rotation=rotation, artifacts=artifacts, params=params)


def export_or_self(model: torch.nn.Module) -> torch.nn.Module:
    """The plain-torch export for fast evaluation (same outputs); the model itself when it cannot be exported."""
    try:
        # escnn's export builds some modules (batch norm) on the CPU: move them to the model's device.
        return equiv.export_eval(model).to(next(model.parameters()).device).eval()
    except NotImplementedError:
        return model


@torch.no_grad()
def symmetry_errors(config, model, split, device) -> dict[str, float]:
    """Relative output change under the model's own exact group elements, and under all eight rot90/flip elements
    (the same yardstick for every model: what a plain CNN gets wrong that a D4 model cannot)."""
    x, _ = split.get_batch(np.arange(min(INVARIANCE_SAMPLES, len(split))))
    x = normalise(prepare(x, device))
    own, grid = parse_group(config.model.group, config.model.max_frequency), parse_group("D4")
    if config.task == "segmentation":
        measure = equiv.checks.equivariance_errors
        return {"equivariance_error": _worst(measure(model, x, own)), "grid_error": _worst(measure(model, x, grid))}
    measure = equiv.checks.invariance_errors
    out = {"invariance_error": _worst(measure(model, x, own)), "grid_error": _worst(measure(model, x, grid))}
    out["offgrid_error"] = _worst(equiv.checks.offgrid_errors(model, x, own))
    # A 45 deg turn is in no finite group below C8, so this one compares every model on the same footing.
    out["rot45_error"] = _worst(equiv.checks.offgrid_errors(model, x, parse_group("trivial"), angles=[45.0]))
    return out


def _worst(errors: dict[str, float]) -> float:
    """The largest error; NaN when the group has no such elements (e.g. no off-grid rotations in C4)."""
    return max(errors.values()) if errors else float("nan")


def rotation_curve(config, model, split, device) -> list[tuple[float, str, float]]:
    """Test metrics on inputs rotated by each angle of eval.rotation_angles, on a fixed seeded subset."""
    count = min(config.eval.rotation_samples, len(split))
    indices = np.sort(np.random.default_rng(config.seed).choice(len(split), size=count, replace=False))
    names = ("accuracy", "auc") if config.task == "classification" else ("dice",)
    rows = []
    for angle in config.eval.rotation_angles:
        y, p = predict(config, model, split, device, indices=indices, angle=angle)
        metrics = metrics_of(config, y, p)
        rows += [(float(angle), name, metrics[name]) for name in names]
    return rows


def samples(config, y: np.ndarray, p: np.ndarray, splits: Splits) -> tuple[str, bytes]:
    """A few test inputs with targets and predictions, for the report's sample figure; probs are (n,) P(class 1)
    for two classes, (n, K) with the class names beside them for more."""
    count = min(SAMPLE_IMAGES, len(y))
    x, _ = splits.test.get_batch(np.arange(count))
    images = x.permute(0, 2, 3, 1).numpy()
    buffer = io.BytesIO()
    if config.task == "classification" and p.ndim == 2:
        np.savez_compressed(buffer, images=images, labels=y[:count], probs=p[:count],
                            classes=np.array(class_names(splits, p.shape[1])))
    elif config.task == "classification":
        np.savez_compressed(buffer, images=images, labels=y[:count], probs=p[:count])
    else:
        np.savez_compressed(buffer, images=images, masks=(y[:count] > 0).astype(np.uint8),
                            preds=p[:count].astype(np.float32))
    return "application/x-npz", buffer.getvalue()


def class_names(splits: Splits, k: int) -> list[str]:
    """Class names in label order; the label indices where the splits name none."""
    return list(splits.classes) if len(splits.classes) == k else [str(i) for i in range(k)]


def confusion_artifact(y: np.ndarray, p: np.ndarray, splits: Splits) -> tuple[str, bytes]:
    """The test confusion matrix (rows true, columns predicted) with the class names and how the data was split:
    the database keeps no per-patch predictions, so the report draws it from this."""
    k = p.shape[1] if p.ndim == 2 else 2
    body = {"classes": class_names(splits, k), "matrix": confusion(y, p, k).tolist(),
            "split_note": splits.split_note, "data": splits.description}
    return "application/json", json.dumps(body, indent=1).encode()


# ---- checkpoints -----------------------------------------------------------------------------------------------

def save(path, config, model, optimizer, scheduler, scaler, augment_rng, progress: Progress, best_state,
         facts: dict[str, Any] | None = None) -> None:
    """`facts` (data_facts: "classes", "image_size") go in at the top level, where export reads them; a caller
    without splits leaves them out and export falls back to the config."""
    checkpoint.save(path, {
        "config": config.to_dict(),
        **(facts or {}),
        "model": model.state_dict(),
        "best_model": best_state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "augment": augment_rng.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "progress": {k: v for k, v in vars(progress).items()},
    })


def restore(state, model, optimizer, scheduler, scaler, augment_rng):
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    augment_rng.set_state(state["rng"]["augment"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    saved = dict(state["progress"])
    saved["history"] = [(int(e), dict(m)) for e, m in saved["history"]]
    return Progress(**saved), state["best_model"]
