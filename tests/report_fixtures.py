"""Fake but realistic results databases for the report tests and benchmark, written through the real schema.

`build_fixture_db(path)` makes the small fixed database the reference tables are generated from: a
classification experiment (plain CNN vs G-CNNs, an lr sweep, three seeds, plus a running, a failed, a queued and a
done-without-metrics job) and a segmentation experiment (U-Net vs G-U-Net with a data-fraction sweep).
`build_bulk_db(path, n_jobs, n_epochs)` makes a large one quickly for the benchmark.
Metric values follow simple formulas (equivariant models score higher and hold up under rotation) plus seeded
noise, so every number is reproducible.
"""
from __future__ import annotations

import io
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from sqlalchemy import Engine, create_engine, event, insert

from runner.spec.config import AugmentSpec, DataSpec, EvalSpec, JobConfig, ModelSpec, TrainSpec
from runner.store import (
    ArtifactModel,
    BaseModel,
    EpochMetricModel,
    ExperimentModel,
    FinalMetricModel,
    JobModel,
    RotationMetricModel,
)

ANGLES = tuple(float(a) for a in range(0, 360, 15))
_ROW_MODELS = (JobModel, EpochMetricModel, FinalMetricModel, RotationMetricModel, ArtifactModel)


def create_db(path: Path) -> Engine:
    """A new SQLite database at `path` with the runner's schema, in WAL mode like the runner's."""
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode = WAL")
        dbapi_connection.execute("PRAGMA synchronous = OFF")  # test data: speed over durability

    BaseModel.metadata.create_all(engine)
    return engine


def job_config(experiment: str, task: str, seed: int, **sections: dict[str, Any]) -> JobConfig:
    """A JobConfig with the given section overrides, e.g. model={"family": "gcnn", "group": "C8"}."""
    specs = {"data": DataSpec, "train": TrainSpec, "augment": AugmentSpec, "model": ModelSpec, "eval": EvalSpec}
    built = {name: replace(cls(), **sections.get(name, {})) for name, cls in specs.items()}
    return JobConfig(experiment=experiment, task=task, seed=seed, **built)


def _symmetry_step(config: JobConfig) -> float:
    """Angle step (deg) under which the model is (nearly) invariant: 360 = only identity, 0 = every angle."""
    group = config.model.group
    if group in ("SO2", "O2"):
        return 0.0
    order = int(group[1:]) if group[:1] in "CD" and group[1:].isdigit() else 1
    step = 360.0 / order
    if config.augment.geometric in ("rot90", "d4"):
        step = min(step, 90.0)
    return step


def _quality(config: JobConfig) -> float:
    """Expected validation score of a config: what the fake 'training' converges to."""
    step = _symmetry_step(config)
    score = 0.84 + (0.04 if config.model.family in ("gcnn", "gunet") else 0.0)
    score += 0.02 * (1 - step / 360) if step else 0.03
    score += 0.01 if config.augment.geometric != "none" else 0.0
    score -= 0.03 * abs(math.log10(config.train.lr / 1e-3))
    score -= 0.04 * (1 - config.data.fraction)
    return score


def _rotation_drop(config: JobConfig, angle: float) -> float:
    """Accuracy lost at `angle`: none on the model's symmetry grid, most half-way between grid angles."""
    step = _symmetry_step(config)
    if step == 0:
        return 0.002
    if step == 360:
        return 0.15 * min(1.0, min(angle, 360 - angle) / 45)
    return 0.06 * min(angle % step, step - angle % step) / (step / 2)


def _invariance_error(config: JobConfig) -> float:
    """Relative logit change over rot90s/flips: ~0 for exact G-CNNs, small when learned from augmentation."""
    exact = config.model.family in ("gcnn", "gunet") and _symmetry_step(config) <= 90
    return 1e-5 if exact else (0.05 if config.augment.geometric != "none" else 0.3)


def _grid_error(config: JobConfig) -> float:
    """Relative logit change over all eight rot90/flip elements: ~0 only for groups that contain them all."""
    if config.model.family in ("gcnn", "gunet") and config.model.group in ("D4", "D8", "D16", "O2"):
        return 1e-5
    return 0.05 if config.augment.geometric != "none" else 0.3


def _params(config: JobConfig) -> int:
    base = config.model.width ** 2 * config.model.kernel_size ** 2 * config.model.depth * 2
    return int(base * (1.0 if config.model.family in ("cnn", "unet") else 0.98))


def _final_metrics(config: JobConfig, best: float, rng: np.random.RandomState, n_epochs: int) -> dict[str, float]:
    params = _params(config)
    timing = {"train_seconds": 0.002 * params * (1 + rng.rand() * 0.1) * n_epochs / 10,
              "train_images_per_s": 4e7 / params * (1 + rng.rand() * 0.1),
              "eval_images_per_s": 1.2e8 / params * (1 + rng.rand() * 0.1),
              "best_epoch": float(n_epochs - 1 - rng.randint(0, 2)), "epochs_run": float(n_epochs)}
    error, offgrid = _invariance_error(config), 3 * _rotation_drop(config, 45.0) + 1e-3
    if config.task == "segmentation":
        dice = best - 0.005 + rng.randn() * 0.004
        return {"test_dice": dice, "test_iou": dice / (2 - dice), "test_pixel_accuracy": 0.9 + dice / 20,
                "test_object_f1": dice - 0.1, "valid_dice": best, "valid_iou": best / (2 - best),
                "equivariance_error": error + offgrid / 10, "grid_error": _grid_error(config), **timing}
    auc = best - 0.005 + rng.randn() * 0.004
    return {"test_accuracy": auc - 0.07, "test_auc": auc, "test_nll": 1.2 - auc, "test_f1": auc - 0.08,
            "valid_accuracy": best - 0.07, "valid_auc": best, "invariance_error": error,
            "offgrid_error": offgrid, "grid_error": _grid_error(config), "rot45_error": offgrid, **timing}


def _curves(config: JobConfig, best: float, rng: np.random.RandomState, n_epochs: int) -> dict[str, np.ndarray]:
    epochs = np.arange(n_epochs)
    approach = 1 - np.exp(-(epochs + 1) / max(n_epochs / 4, 1))
    score = 0.6 + (best - 0.6) * approach + rng.randn(n_epochs) * 0.003
    curves = {"train_loss": 0.7 - 0.4 * approach, "valid_loss": 0.72 - 0.38 * approach,
              "lr": config.train.lr * 0.5 * (1 + np.cos(np.pi * epochs / n_epochs)),
              "epoch_seconds": 10 + rng.rand(n_epochs)}
    if config.task == "segmentation":
        return {**curves, "valid_dice": score, "valid_iou": score / (2 - score)}
    return {**curves, "valid_accuracy": score - 0.07, "valid_auc": score}


def _samples(config: JobConfig, rng: np.random.RandomState, k: int = 6, side: int = 32) -> bytes:
    """A samples.npz artifact: pink-purple noise patches with a dark 'nucleus' blob, labels and predictions."""
    yy, xx = np.mgrid[:side, :side]
    images = np.empty((k, side, side, 3), np.uint8)
    masks = np.zeros((k, side, side), np.uint8)
    for i in range(k):
        cy, cx, r = rng.randint(8, side - 8), rng.randint(8, side - 8), rng.randint(4, 8)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        base = np.array([230, 170, 210]) + rng.randint(-15, 15, size=(side, side, 3))
        images[i] = np.clip(base - masks[i][..., None] * np.array([120, 110, 40]), 0, 255)
    buffer = io.BytesIO()
    if config.task == "segmentation":
        shifted = np.roll(masks, shift=(rng.randint(-2, 3), rng.randint(-2, 3)), axis=(1, 2))
        preds = np.clip(shifted * 0.85 + rng.rand(k, side, side) * 0.2, 0, 1).astype(np.float32)
        np.savez(buffer, images=images, masks=masks, preds=preds)
    else:
        labels = rng.randint(0, 2, size=k)
        probs = np.clip(labels * 0.7 + rng.rand(k) * 0.3, 0, 1)
        np.savez(buffer, images=images, labels=labels, probs=probs)
    return buffer.getvalue()


def job_rows(job_id: int, experiment_id: int, config: JobConfig, status: str, n_epochs: int,
             with_finals: bool = True, with_samples: bool = True) -> dict[Any, list[dict[str, Any]]]:
    """Rows for every table of one job, as {Model: [row dict, ...]}. Unfinished jobs get partial curves only."""
    rng = np.random.RandomState(job_id * 7919 + config.seed)
    best = _quality(config) + rng.randn() * 0.004
    job = {"job_id": job_id, "experiment_id": experiment_id, "key": f"{job_id:016x}",
           "label": f"{config.model.family}-{config.model.group}-s{config.seed}", "config_json":
           json.dumps(config.to_dict(), sort_keys=True), "family": config.model.family,
           "group_name": config.model.group, "seed": config.seed, "status": status, "params": _params(config),
           "error": "RuntimeError: out of memory" if status == "failed" else None}
    rows: dict[Any, list[dict[str, Any]]] = {model: [] for model in _ROW_MODELS}
    rows[JobModel].append(job)
    partial = {"queued": 0, "running": n_epochs // 2, "failed": 1, "interrupted": n_epochs // 2}
    run_epochs = partial.get(status, n_epochs)
    for name, values in _curves(config, best, rng, n_epochs).items():
        rows[EpochMetricModel] += [{"job_id": job_id, "epoch": e, "name": name, "value": float(values[e])}
                                   for e in range(run_epochs)]
    if status != "done" or not with_finals:
        return rows
    finals = _final_metrics(config, best, rng, n_epochs)
    rows[FinalMetricModel] += [{"job_id": job_id, "name": k, "value": float(v)} for k, v in finals.items()]
    names = ("dice",) if config.task == "segmentation" else ("accuracy", "auc")
    test = finals["test_dice"] if config.task == "segmentation" else finals["test_accuracy"]
    rows[RotationMetricModel] += [
        {"job_id": job_id, "angle": angle, "name": name,
         "value": float(test + (0.07 if name == "auc" else 0) - _rotation_drop(config, angle) + rng.randn() * 0.002)}
        for angle in config.eval.rotation_angles for name in names]
    if with_samples:
        rows[ArtifactModel].append({"job_id": job_id, "name": "samples.npz", "media_type": "application/x-npz",
                                    "data": _samples(config, rng)})
    return rows


def _insert(engine: Engine, experiments: list[tuple[str, str]], jobs: Iterator[dict[Any, list[dict]]]) -> None:
    with engine.begin() as connection:
        connection.execute(insert(ExperimentModel), [
            {"experiment_id": i + 1, "name": name, "task": task, "spec_path": f"specs/{name}.toml",
             "spec_toml": f'name = "{name}"\ntask = "{task}"\n'} for i, (name, task) in enumerate(experiments)])
        pending: dict[Any, list[dict]] = {model: [] for model in _ROW_MODELS}
        for rows in jobs:
            for model, items in rows.items():
                pending[model] += items
            if len(pending[EpochMetricModel]) > 200_000:
                _flush(connection, pending)
        _flush(connection, pending)


def _flush(connection: Any, pending: dict[Any, list[dict]]) -> None:
    for model in _ROW_MODELS:
        if pending[model]:
            connection.execute(insert(model), pending[model])
            pending[model].clear()


def _classification_jobs(experiment_id: int) -> Iterator[tuple[JobConfig, str, bool]]:
    name, epochs = "pcam-groups", 6
    models = [("cnn", "trivial", "none"), ("cnn", "trivial", "d4"), ("gcnn", "C4", "none"), ("gcnn", "D4", "none"),
              ("gcnn", "C8", "none")]
    for (family, group, geometric), lr, seed in itertools.product(models, (1e-3, 3e-3), (0, 1, 2)):
        config = job_config(name, "classification", seed, model={"family": family, "group": group},
                            augment={"geometric": geometric}, train={"lr": lr, "epochs": epochs})
        yield config, "done", True
    extra = job_config(name, "classification", 0, model={"family": "gcnn", "group": "SO2"}, train={"epochs": epochs})
    for seed, status in enumerate(("running", "failed", "queued")):
        yield replace(extra, seed=seed), status, True
    yield replace(extra, seed=3), "done", False  # finished but its final metrics were never written


def _segmentation_jobs(experiment_id: int) -> Iterator[tuple[JobConfig, str, bool]]:
    name = "monuseg-unet"
    for (family, group), fraction, seed in itertools.product((("unet", "trivial"), ("gunet", "D4")),
                                                             (0.25, 1.0), (0, 1)):
        yield job_config(name, "segmentation", seed, model={"family": family, "group": group},
                         data={"fraction": fraction}, train={"epochs": 4}), "done", True


def build_fixture_db(path: Path) -> Path:
    """The small fixed database the reference tables come from; returns `path`."""
    engine = create_db(path)
    specs = [(_classification_jobs, "pcam-groups", "classification"), (_segmentation_jobs, "monuseg-unet",
                                                                           "segmentation")]

    def rows() -> Iterator[dict[Any, list[dict]]]:
        job_id = 0
        for experiment_id, (make, _, _) in enumerate(specs, start=1):
            for config, status, with_finals in make(experiment_id):
                job_id += 1
                yield job_rows(job_id, experiment_id, config, status, config.train.epochs, with_finals)

    _insert(engine, [(name, task) for _, name, task in specs], rows())
    engine.dispose()
    return path


def build_empty_db(path: Path) -> Path:
    """The schema and nothing else: what a database looks like before the first `run`."""
    create_db(path).dispose()
    return path


def bulk_configs(n_jobs: int, n_epochs: int) -> list[JobConfig]:
    """`n_jobs` classification configs: 2 families x groups x augments x lr x width x dropout, then seeds."""
    models = [("cnn", "trivial")] + [("gcnn", g) for g in ("C4", "D4", "C8", "D8", "SO2")]
    grid = list(itertools.product(models, ("none", "d4"), (3e-4, 1e-3, 3e-3, 1e-2), (8, 16, 32), (0.0, 0.2)))
    configs = []
    for seed in itertools.count():
        for (family, group), geometric, lr, width, dropout in grid:
            if len(configs) == n_jobs:
                return configs
            configs.append(job_config("bulk", "classification", seed, model={
                "family": family, "group": group, "width": width, "dropout": dropout},
                augment={"geometric": geometric}, train={"lr": lr, "epochs": n_epochs}))
    return configs


def build_bulk_db(path: Path, n_jobs: int, n_epochs: int) -> Path:
    """A large single-experiment database (samples only for seed 0, as they are the bulky part)."""
    engine = create_db(path)
    configs = bulk_configs(n_jobs, n_epochs)
    rows = (job_rows(i + 1, 1, config, "done", n_epochs, with_samples=config.seed == 0)
            for i, config in enumerate(configs))
    _insert(engine, [("bulk", "classification")], rows)
    engine.dispose()
    return path
