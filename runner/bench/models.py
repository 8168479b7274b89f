"""Training img/s of our models against their nearest alternatives, measured side by side in one process.

For each finite group: our parameter-matched G-CNN (default blur pooling, and pool="average"); escnn's tutorial recipe with the same fields (R2Conv,
InnerBatchNorm, ReLU, PointwiseAvgPoolAntialiased2D, GroupPooling: what a user would copy, not exact on 96x96);
a plain CNN with the G-CNN's expanded channel shape (fields x |G| channels) with our blur pooling and with 2x2
average pooling (what the escnn machinery and the exact pooling cost). Then the plain CNN against itself with 2x2
average pooling. Rounds are interleaved (every model steps once per round) and each model's fastest round is
kept: other work on the machine can only slow a step down.

Time is the process's CPU time on one torch thread: on a machine shared with other work, wall time measures the
neighbours as much as the model, while one thread's CPU time is the model's work alone (img/s below are images
per CPU-second, the wall-clock speed of an otherwise idle single core).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import equiv
from equiv.checks import smooth_images
from equiv.cnn import Architecture, BlurPool2d, classifier_head


@dataclass(frozen=True)
class SpeedSizes:
    batch: int = 64
    image: int = 96
    rounds: int = 5
    groups: tuple[str, ...] = ("flip", "C4", "D4", "C8", "D8")
    threads: int = 1


QUICK = SpeedSizes(batch=16, rounds=7, groups=("C4", "D4"))


def plain_net(channels: tuple[int, ...], pool: Callable[[], nn.Module], kernel_size: int = 5) -> nn.Module:
    """conv + BN + ReLU + pool stages with the given channel counts, and the classification head."""
    layers: list[nn.Module] = []
    previous = 3
    for count in channels:
        layers += [nn.Conv2d(previous, count, kernel_size, padding=kernel_size // 2, bias=False),
                   nn.BatchNorm2d(count), nn.ReLU(inplace=True), pool()]
        previous = count
    return nn.Sequential(*layers, classifier_head(previous, 2, 0.0))


def average_pool() -> nn.Module:
    return nn.AvgPool2d(2)


def escnn_recipe(group: str, fields: tuple[int, ...], kernel_size: int = 5) -> nn.Module:
    """escnn's tutorial classifier with the given regular fields per stage."""
    from equiv.build_cache import load_escnn
    from equiv.groups import gspace, parse_group

    enn = load_escnn().nn
    space = gspace(parse_group(group))
    current = enn.FieldType(space, 3 * [space.trivial_repr])
    input_type, stages = current, []
    for count in fields:
        hidden = enn.FieldType(space, count * [space.regular_repr])
        stages += [enn.R2Conv(current, hidden, kernel_size, padding=kernel_size // 2, bias=False),
                   enn.InnerBatchNorm(hidden), enn.ReLU(hidden, inplace=True),
                   enn.PointwiseAvgPoolAntialiased2D(hidden, sigma=0.66, stride=2)]
        current = hidden
    features = enn.SequentialModule(*stages, enn.GroupPooling(current))
    return _Recipe(input_type, features, classifier_head(len(features.out_type), 2, 0.0))


class _Recipe(nn.Module):
    def __init__(self, input_type, features, head: nn.Module) -> None:
        super().__init__()
        self.input_type, self.features, self.head = input_type, features, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from equiv.build_cache import load_escnn

        return self.head(self.features(load_escnn().nn.GeometricTensor(x, self.input_type)).tensor)


def step_function(model: nn.Module, sizes: SpeedSizes) -> Callable[[], None]:
    """One AdamW training step on a fixed batch (the model, not the loader)."""
    x, y = smooth_images(sizes.batch, sizes.image, seed=1), torch.arange(sizes.batch) % 2
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    return step


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def interleaved_speeds(models: dict[str, nn.Module], sizes: SpeedSizes) -> dict[str, float]:
    """img/s per model: one warm-up step each, then `rounds` rounds of one timed step per model; the fastest."""
    steps = {name: step_function(model, sizes) for name, model in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    with torch_threads(sizes.threads):
        for step in steps.values():
            step()
        names = list(steps)
        for round_ in range(sizes.rounds):
            # Each round starts with the next model, so none always runs right after the same neighbour.
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                started = time.process_time()
                steps[name]()
                seconds[name].append(time.process_time() - started)
    return {name: sizes.batch / min(values) for name, values in seconds.items()}


def group_rows(group: str, sizes: SpeedSizes) -> dict[str, float | str]:
    """Our G-CNN against the escnn recipe and the same-shape plain nets, for one group."""
    ours = equiv.build_model("gcnn", group, 3, 2)
    expanded = tuple(stage.out_type.size for stage in ours.stages)  # fields x |G| channels per stage
    speeds = interleaved_speeds({
        "ours": ours,
        "ours_average": equiv.build_model("gcnn", group, 3, 2, pool="average"),
        "recipe": escnn_recipe(group, ours.fields),
        "plain_blur": plain_net(expanded, BlurPool2d),
        "plain_avg": plain_net(expanded, average_pool),
    }, sizes)
    return {"group": group, "fields": str(ours.fields), "channels": str(expanded),
            **{f"{k}_img_s": v for k, v in speeds.items()},
            "vs_recipe": speeds["ours"] / speeds["recipe"], "vs_plain_avg": speeds["ours"] / speeds["plain_avg"],
            "vs_plain_blur": speeds["ours"] / speeds["plain_blur"],
            "average_vs_recipe": speeds["ours_average"] / speeds["recipe"],
            "average_vs_plain_avg": speeds["ours_average"] / speeds["plain_avg"]}


def cnn_row(sizes: SpeedSizes) -> dict[str, float | str]:
    """The plain CNN with its exact blur pooling against the same net with 2x2 average pooling."""
    channels = Architecture().channels
    speeds = interleaved_speeds({"ours": equiv.build_model("cnn", "trivial", 3, 2),
                                 "ours_average": equiv.build_model("cnn", "trivial", 3, 2, pool="average"),
                                 "plain_avg": plain_net(channels, average_pool)}, sizes)
    return {"group": "trivial (cnn)", "fields": str(channels), **{f"{k}_img_s": v for k, v in speeds.items()},
            "vs_plain_avg": speeds["ours"] / speeds["plain_avg"],
            "average_vs_plain_avg": speeds["ours_average"] / speeds["plain_avg"]}


def model_speeds(sizes: SpeedSizes, progress: Callable[[str], None] = print) -> list[dict[str, float | str]]:
    rows = [cnn_row(sizes)]
    progress(f"  cnn: {rows[-1]['vs_plain_avg']:.2f}x the same net with 2x2 average pooling "
             f"({rows[-1]['average_vs_plain_avg']:.2f}x with pool=average)")
    for group in sizes.groups:
        rows.append(group_rows(group, sizes))
        progress(f"  gcnn {group}: {rows[-1]['vs_recipe']:.2f}x the escnn recipe, "
                 f"{rows[-1]['vs_plain_avg']:.2f}x the same-shape plain net with 2x2 average pooling "
                 f"({rows[-1]['average_vs_recipe']:.2f}x and {rows[-1]['average_vs_plain_avg']:.2f}x with pool=average)")
    return rows
