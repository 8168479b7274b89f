"""A short measurement of one kind of job on this device, through the training loop's own pieces.

For a resolved job config: load its data (as a job would, into ROOT/cache, so the run later reuses it), build the
model, time training steps (train_step: augmentation, forward, backward, optimiser) and evaluation batches
(predict on the exported evaluation model), and the fixed costs of a job (building the model, exporting it for
evaluation) and of an epoch (writing the checkpoint). Each timing runs for at least `seconds` after one warm-up
step, so first-call costs (allocations, escnn's lazy buffers) stay out of the rate.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.cost.work import Sizes

MIN_STEPS = 3


@dataclass(frozen=True)
class Rate:
    train_images_per_s: float
    eval_images_per_s: float
    job_seconds: float  # once per job: model build and the export used for evaluation
    epoch_seconds: float  # once per epoch: the checkpoint write
    calibrated_for: float  # seconds the measurement took

    def to_dict(self) -> dict[str, float]:
        return dict(vars(self))


def calibrate(config_dict: dict[str, Any], device: torch.device, cache_dir: Path,
              seconds: float = 1.0) -> tuple[Rate, Sizes]:
    """The rates of one configuration on `device`, and its split sizes as loaded."""
    from runner.data import load_splits
    from runner.spec.identity import config_from_dict
    from runner.training import loop

    started = time.monotonic()
    config = config_from_dict(config_dict)
    splits = load_splits(config.task, config.data, cache_dir)
    sizes = Sizes(train=len(splits.train), valid=len(splits.valid), test=len(splits.test))
    classes = loop.class_count(splits)
    loop.build(config, classes)  # a worker builds many models: the first build's one-off costs stay out
    build_start = time.monotonic()
    model = loop.build(config, classes).to(device)
    build_seconds = time.monotonic() - build_start
    train_rate, optimizer, scheduler, scaler, rng = _train_rate(config, model, splits.train, device, seconds)
    export_start = time.monotonic()
    fast = loop.export_or_self(model)
    export_seconds = time.monotonic() - export_start
    eval_rate = _eval_rate(config, fast, splits.valid, device, seconds)
    epoch_seconds = _checkpoint_seconds(config, model, optimizer, scheduler, scaler, rng)
    rate = Rate(train_images_per_s=train_rate, eval_images_per_s=eval_rate, job_seconds=build_seconds + export_seconds,
                epoch_seconds=epoch_seconds, calibrated_for=time.monotonic() - started)
    return rate, sizes


def _train_rate(config, model, split, device, seconds: float):
    from runner.data import iterate_batches
    from runner.data.augment import Augmenter
    from runner.training import loop

    optimizer, augmenter = loop.make_optimizer(config, model), Augmenter(config.augment)
    scheduler = loop.make_scheduler(config, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=loop.use_amp(config, device))
    rng = torch.Generator().manual_seed(config.seed + 1)
    model.train()

    def step(epoch: int, x: torch.Tensor, y: torch.Tensor) -> None:
        loop.train_step(config, model, optimizer, scaler, augmenter, rng, x, y, device)

    batches = _endless(lambda epoch: iterate_batches(split, config.train.batch_size, shuffle=True, seed=config.seed,
                                                     epoch=epoch))
    return _rate(step, batches, device, seconds), optimizer, scheduler, scaler, rng


def _eval_rate(config, model, split, device, seconds: float) -> float:
    from runner.training.predict import predict

    batch = max(2 * config.train.batch_size, 32)  # predict()'s own batch
    rows = np.arange(min(len(split), batch))

    def step(epoch: int, x: Any, y: Any) -> None:
        predict(config, model, split, device, indices=rows)

    return _rate(step, _endless(lambda epoch: iter([(rows, None)])), device, seconds)


def _rate(step, batches, device: torch.device, seconds: float) -> float:
    """Images per second of `step` over whole batches, after one warm-up batch."""
    epoch, x, y = next(batches)
    step(epoch, x, y)
    _sync(device)
    images, steps, start = 0, 0, time.monotonic()
    while steps < MIN_STEPS or time.monotonic() - start < seconds:
        epoch, x, y = next(batches)
        step(epoch, x, y)
        images, steps = images + len(x), steps + 1
        _sync(device)
    return images / (time.monotonic() - start)


def _endless(epoch_batches):
    """(epoch, x, y) for ever, epoch after epoch (a small split is cycled)."""
    epoch = 0
    while True:
        for x, y in epoch_batches(epoch):
            yield epoch, x, y
        epoch += 1


def _checkpoint_seconds(config, model, optimizer, scheduler, scaler, rng) -> float:
    from runner.training import loop
    from runner.training.loop import Progress

    with tempfile.TemporaryDirectory() as folder:
        start = time.monotonic()
        loop.save(Path(folder) / "state.pt", config, model, optimizer, scheduler, scaler, rng, Progress(), None)
        return time.monotonic() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
