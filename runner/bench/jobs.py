"""What running through the runner costs: its overhead over a bare loop, and --workers N's CPU time over one worker.

Overhead: the same job (model, data, batch, epochs, evaluation passes) once through `python -m runner` in this
process (spec parsing, database, checkpoints, heartbeats, augmentation hook, progress, final records included)
and once as a bare loop; rounds interleaved, the fastest CPU time of each on one torch thread compared (see
runner.bench.models for why CPU time). Workers: a fixed set of jobs run by
`python -m runner --workers N` in a child process; its CPU time (user + system, every descendant) against one
worker's.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

import equiv
from runner.bench.models import torch_threads
from runner.data import iterate_batches, load_splits
from runner.spec import read_spec
from runner.spec.identity import expand
from runner.training.predict import PIXEL_MAX, normalise


@dataclass(frozen=True)
class JobSizes:
    train_size: int = 512
    epochs: int = 2
    batch_size: int = 64
    rounds: int = 5
    worker_jobs: int = 4
    workers: int = 2


QUICK = JobSizes(train_size=256, epochs=1, rounds=3, worker_jobs=2)


def spec_text(name: str, sizes: JobSizes, seeds: int) -> str:
    """A plain-CNN classification spec: a job of a few seconds whose evaluation is one pass over valid and test."""
    return f"""[experiment]
name = "{name}"
seeds = {list(range(seeds))}
[data]
train_size = {sizes.train_size}
valid_size = 64
test_size = 64
[train]
epochs = {sizes.epochs}
batch_size = {sizes.batch_size}
[eval]
rotation_angles = [0]
rotation_samples = 64
invariance = false
[[model]]
family = "cnn"
"""


def bare_job(spec: Path, data_dir: Path) -> tuple[float, float]:
    """The spec's first job as a bare loop: build, train, validate each epoch, test and the angle-0 pass.

    Returns (CPU, wall) seconds."""
    started, wall = time.process_time(), time.perf_counter()
    config = expand(read_spec(spec))[0].config
    torch.manual_seed(config.seed)
    splits = load_splits(config.task, config.data, data_dir)
    model = equiv.build_model("cnn", "trivial", 3, 2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    for epoch in range(config.train.epochs):
        model.train()
        for x, y in iterate_batches(splits.train, config.train.batch_size, shuffle=True, seed=config.seed,
                                    epoch=epoch, start_batch=0):
            loss = F.cross_entropy(model(normalise(x.float() / PIXEL_MAX)), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        evaluate(model, splits.valid, np.arange(len(splits.valid)))
    for split in (splits.test, splits.test):  # the test pass, then the rotation curve's angle 0
        evaluate(model, split, np.arange(len(split)))
    return time.process_time() - started, time.perf_counter() - wall


@torch.no_grad()
def evaluate(model, split, indices: np.ndarray) -> np.ndarray:
    model.eval()
    x, _ = split.get_batch(indices)
    return model(normalise(x.float() / PIXEL_MAX)).softmax(1)[:, 1].numpy()


def runner_job(spec: Path, root: Path) -> tuple[float, float]:
    """The same job through `python -m runner SPEC --force` in this process: (CPU, wall) seconds.

    It takes the command's own path below argument parsing (runner.run.run_spec with the request `run` builds), so
    the benchmark needs nothing from the CLI."""
    from runner.run import RunRequest, run_spec

    started, wall = time.process_time(), time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        parsed = read_spec(spec)
        os.environ.setdefault("EQUIV_CACHE_DIR", str(root / "cache" / "equiv"))  # as `run` sets it
        request = RunRequest(spec=parsed, jobs=tuple(expand(parsed)), root=root,
                             db_url=f"sqlite:///{root / 'results.db'}", force=True)
        code = run_spec(request, Console(highlight=False, soft_wrap=True, markup=False))
    if code != 0:
        raise RuntimeError(f"the benchmark's runner job exited with {code}; run {spec} by hand to see why")
    return time.process_time() - started, time.perf_counter() - wall


def runner_overhead(sizes: JobSizes, work: Path) -> dict[str, float]:
    """Fastest CPU and wall time of the job through the runner and as a bare loop (after one warm-up of each);
    the CPU ratio is the one compared with the target (wall time on a shared machine measures the neighbours)."""
    spec = work / "overhead.toml"
    spec.write_text(spec_text("bench_overhead", sizes, 1))
    root = work / "overhead"
    runner, bare = [], []
    with torch_threads(1):
        runner_job(spec, root)  # warm-up: generates the data set
        bare_job(spec, root / "data")
        for _ in range(sizes.rounds):
            runner.append(runner_job(spec, root))
            bare.append(bare_job(spec, root / "data"))
    (runner_cpu, runner_wall), (bare_cpu, bare_wall) = _fastest(runner), _fastest(bare)
    return {"runner_s": runner_cpu, "bare_s": bare_cpu, "overhead": runner_cpu / bare_cpu,
            "runner_wall_s": runner_wall, "bare_wall_s": bare_wall, "wall_overhead": runner_wall / bare_wall}


def _fastest(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """The fastest round's CPU and wall time: other work on the machine can only slow a run down."""
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(spec: Path, root: Path, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -m runner SPEC --workers N`, every descendant process included."""
    before, started = children_cpu_seconds(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "runner", str(spec), "--root", str(root), "--workers", str(workers)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, children_cpu_seconds() - before


def workers_cpu_time(sizes: JobSizes, work: Path) -> dict[str, float]:
    """The same jobs with 1 and with N workers: the CPU-time ratio (target <= 1.1) and the wall-time ratio."""
    spec = work / "workers.toml"
    spec.write_text(spec_text("bench_workers", sizes, sizes.worker_jobs))
    data = work / "workers_data"
    load_splits("classification", expand(read_spec(spec))[0].config.data, data)
    measured = {}
    for workers in (1, sizes.workers):
        root = work / f"workers{workers}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(data, root / "data")
        measured[workers] = timed_run(spec, root, workers)
    (wall_one, cpu_one), (wall_n, cpu_n) = measured[1], measured[sizes.workers]
    return {"workers": sizes.workers, "jobs": sizes.worker_jobs, "cpu_s_one": cpu_one, "cpu_s_n": cpu_n,
            "cpu_ratio": cpu_n / cpu_one, "wall_ratio": wall_n / wall_one if wall_one else math.nan}
