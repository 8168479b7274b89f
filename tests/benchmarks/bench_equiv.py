"""Benchmark of the classification families at default hparams: size, build cost, speed, symmetry errors.

    uv run python tests/benchmarks/bench_equiv.py

Build times: a fresh process with an empty EQUIV_CACHE_DIR (cold), a second process reusing it (warm), and a
second build in the same process. Throughput: 96x96 inputs, `torch.get_num_threads()` threads, best of 3 steps. Errors: eval mode,
smooth random images, freshly initialised models; grid = max over the group's rot90/flip elements (D4's for the
CNN), off-grid = rotation by 45 deg and the mean over 15, 30, ..., 75 deg (a quarter turn is exact, so one
quadrant suffices), as ||f(gx) - f(x)|| / ||f(x)|| and relative to the spread of f between different inputs
(an untrained model whose logits are mostly bias looks invariant by the first measure only).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

import equiv
from equiv.checks import centred_disk, invariance_errors, offgrid_errors, smooth_images
from equiv.groups import parse_group, rotate

ROWS = [("cnn", "trivial"), ("gcnn", "flip"), ("gcnn", "C4"), ("gcnn", "D4"), ("gcnn", "C8"), ("gcnn", "D8"),
        ("gcnn", "SO2"), ("gcnn", "O2")]
OFF_GRID_ANGLES = [15.0, 30.0, 45.0, 60.0, 75.0]


def build_times() -> dict[str, list[float]]:
    """Run in a child process: first build and same-process rebuild of every row, in seconds."""
    from equiv.build_cache import load_escnn

    load_escnn()
    times = {}
    for family, group in ROWS:
        started = time.perf_counter()
        equiv.build_model(family, group, 3, 2)
        first = time.perf_counter() - started
        started = time.perf_counter()
        equiv.build_model(family, group, 3, 2)
        times[group] = [first, time.perf_counter() - started]
    return times


def measured_builds() -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as cache:
        runs = []
        for _ in range(2):
            command = [sys.executable, __file__, "--build-times"]
            done = subprocess.run(command, env={**os.environ, "EQUIV_CACHE_DIR": cache}, capture_output=True,
                                  text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs[0], runs[1]


def images_per_second(step, batch: int, repeats: int = 3) -> float:
    """Best of `repeats` timed steps after a warm-up: other processes on the machine only ever slow a step down."""
    step()  # warm-up: first-call allocations, escnn's filter expansion
    fastest = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        fastest = min(fastest, time.perf_counter() - started)
    return batch / fastest


def throughput(model: torch.nn.Module) -> tuple[float, float, float]:
    x, y = smooth_images(4, seed=1), torch.arange(4) % 2
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step() -> None:
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()

    model.train()
    train = images_per_second(train_step, 4)
    model.eval()
    batch = smooth_images(8, seed=2)
    with torch.no_grad():
        evaluate = images_per_second(lambda: model(batch), 8)
        exported = equiv.export_eval(model)
        evaluate_exported = images_per_second(lambda: exported(batch), 8)
    return train, evaluate, evaluate_exported


def spread_normalised_offgrid(model: torch.nn.Module, x: torch.Tensor, angle: float) -> float:
    """max ||f(R(a/2) x) - f(R(-a/2) x)|| over the batch / mean distance of f(x_i) from the batch mean."""
    disk = x * centred_disk(x.shape[-2], x.shape[-1])
    with torch.no_grad():
        before, after = model(rotate(disk, -angle / 2, "zeros")), model(rotate(disk, angle / 2, "zeros"))
        outputs = model(disk)
    spread = (outputs - outputs.mean(0)).norm(dim=1).mean()
    return float((after - before).norm(dim=1).max() / spread)


def errors(model: torch.nn.Module) -> dict[str, float]:
    model.eval()
    x = smooth_images(4, seed=3)
    grid_group = parse_group("D4") if model.group.kind == "trivial" else model.group
    offgrid = offgrid_errors(model, x, group=parse_group("SO2"), angles=OFF_GRID_ANGLES)
    return {
        "grid": max(invariance_errors(model, x, group=grid_group).values()),
        "45": offgrid["rot45"],
        "mean": sum(offgrid.values()) / len(offgrid),
        "45/spread": spread_normalised_offgrid(model, x, 45.0),
    }


def main() -> None:
    torch.manual_seed(0)
    cold, warm = measured_builds()
    rows = []
    for family, group in ROWS:
        model = equiv.build_model(family, group, 3, 2)
        measured = errors(model)  # before the throughput runs train it
        train, evaluate, evaluate_exported = throughput(model)
        rows.append([
            f"{family} {group}", equiv.count_params(model), str(getattr(model, "fields", model.arch.channels)),
            cold[group][0], warm[group][0], cold[group][1], train, evaluate, evaluate_exported,
            measured["grid"], measured["45"], measured["mean"], measured["45/spread"],
        ])
    headers = ["model", "params", "fields", "build cold s", "build warm s (new proc)", "rebuild s (same proc)",
               "train img/s", "eval img/s escnn", "eval img/s exported", "grid err", "45deg err",
               "off-grid mean err", "45deg err/spread"]
    print(f"torch threads: {torch.get_num_threads()}; input 96x96; defaults {equiv.HPARAMS}")
    print(tabulate(rows, headers=headers, floatfmt=("", "", "", ".2f", ".2f", ".3f", ".1f", ".1f", ".1f", ".1e",
                                                     ".1e", ".1e", ".2f")))


if __name__ == "__main__":
    if sys.argv[1:] == ["--build-times"]:
        print(json.dumps(build_times()))
    else:
        main()
