"""`python -m runner bench [--quick] [--out FILE]`: the performance figures in one table, every one a ratio taken
side by side in one process (or one run), with the issue's targets beside them; also written as JSON.

Sections: model speed (runner.bench.models), runner overhead and --workers CPU time (runner.bench.jobs), and a
profile of one training step (runner.bench.profile). Loader, build-cache and report benchmarks live in
tests/benchmarks/ (`nox -s bench` runs both).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

# (measure, target as text, predicate on the value)
TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "vs_recipe": (">= 1.00x", lambda v: v >= 1.0),
    "vs_plain_avg": (">= 0.95x", lambda v: v >= 0.95),
    "cnn_vs_plain_avg": (">= 0.90x", lambda v: v >= 0.9),
    "overhead": ("<= 1.03x", lambda v: v <= 1.03),
    "cpu_ratio": ("<= 1.10x", lambda v: v <= 1.1),
}


def run(quick: bool, out: Path, progress: Callable[[str], None] = print) -> dict:
    """Measure everything, write `out` (JSON, atomically) and return the results with a rendered table."""
    from runner.bench import jobs, models, profile

    speed_sizes = models.QUICK if quick else models.SpeedSizes()
    job_sizes = jobs.QUICK if quick else jobs.JobSizes()
    results: dict = {"machine": machine(), "quick": quick, "sizes": {"models": asdict(speed_sizes),
                                                                      "jobs": asdict(job_sizes)}}
    progress("model speed (training img/s per CPU-second on one thread, fastest of interleaved rounds):")
    results["models"] = models.model_speeds(speed_sizes, progress)
    with tempfile.TemporaryDirectory() as work:
        progress("runner overhead vs a bare loop:")
        results["overhead"] = jobs.runner_overhead(job_sizes, Path(work))
        progress(f"  {results['overhead']['overhead']:.3f}x")
        progress(f"--workers {job_sizes.workers} CPU time vs one worker:")
        results["workers"] = jobs.workers_cpu_time(job_sizes, Path(work))
        progress(f"  {results['workers']['cpu_ratio']:.3f}x")
    progress("profile of one training step:")
    image = 64 if quick else 96
    results["profile"] = {name: profile.profile_step(family, group, batch=32 if quick else 64, image=image)
                          for name, (family, group) in {"cnn": ("cnn", "trivial"), "D4": ("gcnn", "D4")}.items()}
    results["table"] = table(results)
    write_json(out, results)
    return results


def machine() -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cores": os.cpu_count()}


def table(results: dict) -> str:
    """One markdown table: measure, value, target, met."""
    rows = []
    for row in results["models"]:
        if row["group"].startswith("trivial"):
            rows.append(_row(f"plain CNN ({row['ours_img_s']:.1f} img/s) vs same net with 2x2 avg pooling "
                             f"({row['plain_avg_img_s']:.1f})", row["vs_plain_avg"], "cnn_vs_plain_avg"))
            rows.append(_row("plain CNN, pool=average, vs the same", row["average_vs_plain_avg"], "cnn_vs_plain_avg"))
            continue
        name = f"G-CNN {row['group']} {row['fields']} ({row['ours_img_s']:.1f} img/s)"
        average = f"G-CNN {row['group']}, pool=average ({row['ours_average_img_s']:.1f} img/s)"
        plain = f"same-shape plain net, 2x2 avg pooling ({row['plain_avg_img_s']:.1f})"
        rows.append(_row(f"{name} vs escnn recipe ({row['recipe_img_s']:.1f})", row["vs_recipe"], "vs_recipe"))
        rows.append(_row(f"{name} vs {plain}", row["vs_plain_avg"], "vs_plain_avg"))
        rows.append(_row(f"{average} vs escnn recipe", row["average_vs_recipe"], "vs_recipe"))
        rows.append(_row(f"{average} vs {plain}", row["average_vs_plain_avg"], "vs_plain_avg"))
    overhead, workers = results["overhead"], results["workers"]
    rows.append(_row(f"runner vs bare loop, same job, CPU time ({overhead['runner_s']:.1f} s vs "
                     f"{overhead['bare_s']:.1f} s; wall {overhead['wall_overhead']:.2f}x)",
                     overhead["overhead"], "overhead"))
    rows.append(_row(f"--workers {workers['workers']} CPU time vs 1 worker, {workers['jobs']} jobs "
                     f"(wall {workers['wall_ratio']:.2f}x)", workers["cpu_ratio"], "cpu_ratio"))
    for name, shares in results["profile"].items():
        top = sorted(shares.items(), key=lambda kv: -kv[1])
        rows.append([f"profile {name}: share of a training step", ", ".join(f"{k} {v:.0%}" for k, v in top if v >= 0.01),
                     "", ""])
    lines = ["| measure | value | target | met |", "|:--|:--|:--|:--|"]
    lines += [f"| {' | '.join(str(c) for c in row)} |" for row in rows]
    return "\n".join(lines)


def _row(measure: str, value: float, target: str) -> list[str]:
    text, met = TARGETS[target]
    return [measure, f"{value:.3f}x", text, "yes" if met(value) else "no"]  # 3 decimals: 0.995x is not 1.00x


def write_json(path: Path, results: dict) -> None:
    """Temp file + rename: an interrupted benchmark never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        json.dump(results, stream, indent=2)
    os.replace(temp, path)
