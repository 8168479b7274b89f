"""How much a spec will train and evaluate, from the spec alone: one `Work` per kind of job.

A grid job runs train.epochs (at most: early stopping may end it sooner). A searched trial runs its expected share
of them under the spec's pruner: `expected_epochs` replays the pruner's rule (Optuna's successive halving or median
rule, as runner.search.prune applies it) on trials whose quality is a random ranking, the same ranking at every
rung (a good trial stays good), averaged over many seeded draws.

What one trial costs depends on the sampled values of the keys that change the cost per image (width, depth,
kernel, batch size, ...): a trial stands for two configurations, every such key at the low end of its range and
every one at the high end, and costs their mean (exact for a cost linear in the key; within a few per cent for a
width, whose cost grows with its square). The other searched keys sit at the centre of their range. The final
stage re-trains one configuration per model with the final seeds (those the search has already trained are
reused); which configuration wins is unknown before the search, so the same two stand for it.
"""
from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from typing import Any

from equiv.group_names import parse_group
from runner.spec import Spec
from runner.spec.search import Distribution, SearchSpec

PCAM_SIZES = {"train": 262_144, "valid": 32_768, "test": 32_768}  # the published split sizes
INVARIANCE_SAMPLES = 8  # runner.training.loop: patches the end-of-job symmetry checks use
INVARIANCE_PASSES = 20  # forward passes of those patches (own group, the eight grid elements, off-grid angles)
TTA_COPIES = 8  # the eight rot90/flip copies of each test patch (runner.training.extra_metrics)
_DRAWS = 400  # simulated studies averaged by expected_epochs: its value moves < 1 % between seeds


# Config parts that change what a job costs per image; everything else (lr, seeds, dropout, ...) does not.
_COST_PARTS = {"model": ("family", "group", "width", "depth", "kernel_size", "match", "max_frequency", "pool"),
               "train": ("batch_size", "amp", "optimizer"), "data": ("source", "image_size", "crop")}


def cost_key(config: dict[str, Any]) -> str:
    """What a job's rate depends on: two configs with one key train and evaluate at the same images per second."""
    parts = {section: {k: config[section][k] for k in keys} for section, keys in _COST_PARTS.items()}
    parts["augment"], parts["task"] = config["augment"], config["task"]
    return json.dumps(parts, sort_keys=True)


def data_key(config: dict[str, Any]) -> str:
    """What a job's split sizes depend on."""
    data = {k: v for k, v in config["data"].items() if k != "in_memory"}
    return json.dumps({"task": config["task"], **data}, sort_keys=True)


@dataclass(frozen=True)
class Sizes:
    train: int  # after data.fraction
    valid: int
    test: int


# Searched keys that change what a job costs: those its rate depends on (cost_key), the augmentation, and the
# share of the data it trains on. A trial is costed at both ends of their ranges.
COST_KEYS = frozenset({f"{section}.{key}" for section, keys in _COST_PARTS.items() for key in keys}
                      | {"augment.geometric", "augment.stain", "augment.brightness", "augment.contrast",
                         "data.fraction"})


@dataclass(frozen=True)
class Work:
    """`count` jobs (an expectation for a search), `epochs` expected epochs each; each job costs the mean of
    `configs` (resolved job configs in to_dict form)."""

    model: str  # the row a report would name: family, group, augmentation
    stage: str  # grid | search | final
    configs: tuple[dict[str, Any], ...]
    count: float
    epochs: float


def end_of_job_images(config: dict[str, Any], test: int) -> int:
    """Images a job evaluates once it has trained: the test set, its TTA copies (classifiers whose group lacks
    the eight grid elements), the rotation curve's angles x samples and the symmetry checks."""
    evaluation = config["eval"]
    images = test + len(evaluation["rotation_angles"]) * min(evaluation["rotation_samples"], test)
    if evaluation["invariance"]:
        images += INVARIANCE_SAMPLES * INVARIANCE_PASSES
    if config["task"] == "classification" and not _grid_invariant(config["model"]):
        images += TTA_COPIES * test
    return images


def _grid_invariant(model: dict[str, Any]) -> bool:
    group = parse_group(model["group"], model["max_frequency"])
    return group.has_reflections and (group.continuous or group.rotation_order % 4 == 0)


def model_name(config: dict[str, Any]) -> str:
    model, geometric = config["model"], config["augment"]["geometric"]
    parts = [model["family"], "" if model["group"] == "trivial" else model["group"],
             "" if geometric == "none" else f"aug={geometric}"]
    return " ".join(p for p in parts if p)


def split_sizes(task: str, data: dict[str, Any]) -> Sizes | None:
    """Patches per split known from the spec: the synthetic sizes, PCam's published ones under the caps."""
    if data["source"] == "synthetic":
        counts = {s: data[f"{s}_size"] for s in ("train", "valid", "test")}
    elif data["source"] == "pcam" and task == "classification":
        counts = {s: min(data[f"{s}_size"] or n, n) for s, n in PCAM_SIZES.items()}
    else:
        return None
    return Sizes(train=max(1, round(counts["train"] * data["fraction"])), valid=counts["valid"], test=counts["test"])


# ---- the spec's work ---------------------------------------------------------------------------------------------

def spec_work(spec: Spec) -> list[Work]:
    """Every kind of job the spec will run: its grid jobs, each search stream's trials, the final jobs."""
    from runner.search.final import model_of
    from runner.search.streams import streams
    from runner.spec.identity import expand

    grid = [job.config.to_dict() for job in expand(spec)]
    work = grid_work(grid)
    finalists: dict[tuple, tuple[dict[str, Any], ...]] = {}
    for stream in streams(spec):
        configs = trial_configs(stream.config, stream.search)
        count = stream.search.trials * len(spec.seeds)
        work.append(_work(configs, "search", count, expected_epochs(stream.search, configs[0]["train"]["epochs"])))
        if spec.final is not None:
            finalists.setdefault(model_of(configs[0], spec.final.per), configs)
    if spec.final is not None:
        for config in grid:  # grid models take part in the final stage too
            finalists.setdefault(model_of(config, spec.final.per), (config,))
        for configs in finalists.values():
            epochs = spec.final.epochs or configs[0]["train"]["epochs"]
            # A final job with the search's epochs and a seed the search trained is that trial's job: reused.
            reused = set(spec.seeds) if epochs == configs[0]["train"]["epochs"] else set()
            count = len(set(spec.final.seeds) - reused)
            if count:
                work.append(_work(configs, "final", float(count), float(epochs)))
    return work


def grid_work(grid: list[dict[str, Any]]) -> list[Work]:
    """Grid jobs that cost the same (same rate, data and epochs; other seeds, learning rates ...) as one row."""
    rows: dict[tuple, list[dict[str, Any]]] = {}
    for config in grid:
        rows.setdefault((cost_key(config), data_key(config), config["train"]["epochs"]), []).append(config)
    return [_work((same[0],), "grid", float(len(same)), float(same[0]["train"]["epochs"])) for same in rows.values()]


def _work(configs: tuple[dict[str, Any], ...], stage: str, count: float, epochs: float) -> Work:
    return Work(model=model_name(configs[0]), stage=stage, configs=configs, count=count, epochs=epochs)


def trial_configs(config: dict[str, Any], search: SearchSpec) -> tuple[dict[str, Any], ...]:
    """The configurations whose mean cost is a trial's: cost keys at the low end, then at the high end; the
    other searched keys at the centre of their ranges. One when no cost key is searched."""
    ends = []
    for end in (0, -1):
        out = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
        for dotted, distribution in search.space:
            section, name = dotted.split(".", 1)
            out[section][name] = (edge(distribution, end) if dotted in COST_KEYS
                                  else centre(distribution, out[section][name]))
        ends.append(out)
    return (ends[0],) if ends[0] == ends[1] else tuple(ends)


def edge(distribution: Distribution, end: int) -> Any:
    """The low (end 0) or high (end -1) value a distribution can produce."""
    if distribution.kind == "choice":
        return distribution.choices[end]
    if distribution.kind == "int":
        step = distribution.step or 1
        top = int(distribution.low + step * ((distribution.high - distribution.low) // step))
        return int(distribution.low) if end == 0 else top
    return distribution.low if end == 0 else distribution.high


def centre(distribution: Distribution, current: Any) -> Any:
    """The middle of a range (geometric for log ranges), on its step grid; the middle choice of a list."""
    if distribution.kind == "choice":
        return distribution.choices[len(distribution.choices) // 2]
    low, high = distribution.low, distribution.high
    middle = math.sqrt(low * high) if distribution.kind == "log" else (low + high) / 2
    if distribution.kind == "int" or isinstance(current, int):
        step = distribution.step or 1
        return int(low + step * round((middle - low) / step))
    return middle


# ---- the pruner's expected share ---------------------------------------------------------------------------------

def expected_epochs(search: SearchSpec, epochs: int, draws: int = _DRAWS) -> float:
    """Mean epochs a trial of this search runs, the pruner applied to randomly ranked trials run one after another."""
    if search.prune == "none" or epochs <= search.min_epochs:
        return float(epochs)
    rng = random.Random(search.seed)
    rule = _asha_epochs if search.prune == "asha" else _median_epochs
    return statistics.fmean(statistics.fmean(rule(search, epochs, [rng.random() for _ in range(search.trials)]))
                            for _ in range(draws))


def asha_rungs(search: SearchSpec, epochs: int) -> list[int]:
    """Epochs after which ASHA decides (min_epochs x factor^k), the last epoch excluded: nothing is left to save."""
    rungs, epoch = [], search.min_epochs
    while epoch < epochs:
        rungs.append(epoch)
        epoch *= search.reduction_factor
    return rungs


def _asha_epochs(search: SearchSpec, epochs: int, scores: list[float]) -> list[int]:
    """Optuna's successive-halving rule: at a rung a trial goes on when it is among the top
    max(1, n // factor) of the n trials that have reached that rung (itself included)."""
    reached: dict[int, list[float]] = {rung: [] for rung in asha_rungs(search, epochs)}
    ran = []
    for score in scores:
        stop = epochs
        for rung, others in reached.items():
            others.append(score)
            keep = max(1, len(others) // search.reduction_factor)
            if sorted(others, reverse=True).index(score) >= keep:
                stop = rung
                break
        ran.append(stop)
    return ran


def _median_epochs(search: SearchSpec, epochs: int, scores: list[float]) -> list[int]:
    """Optuna's median rule: once `startup_trials` trials have completed, a trial below the median of the completed
    trials (pruned ones do not count) stops at its first eligible epoch, min_epochs. Its rank does not change
    from epoch to epoch here, so a trial that passes there passes every later check."""
    ran: list[int] = []
    for i, score in enumerate(scores):
        completed = [s for s, e in zip(scores[:i], ran) if e == epochs]
        below = len(completed) >= max(search.startup_trials, 1) and score < statistics.median(completed)
        ran.append(search.min_epochs if below else epochs)
    return ran
