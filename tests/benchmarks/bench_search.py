"""Pruning pays: the same 27-point space on the embedded data, run as a full grid and with ASHA, in one run.

    uv run python tests/benchmarks/bench_search.py [--keep DIR] [--epochs 9]

Target: ASHA's selected configuration within 0.01 validation AUC of the grid's best, using at most 40 % of the
grid's training epochs. Both runs go through `python -m runner` (each in its own run root) with the grid sampler,
so they visit the same configurations; on CPU a configuration trained to the end has the same metrics in both.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from runner import cli  # noqa: E402

SPEC = """
[experiment]
name = "bench_search"
seeds = [0]
[data]
train_size = 384
valid_size = 192
test_size = 64
[train]
epochs = {epochs}
batch_size = 32
[eval]
rotation_angles = [0]
rotation_samples = 16
invariance = false
[search]
sampler = "grid"
prune = "{prune}"
min_epochs = 1
reduction_factor = 3
metric = "valid_auc"
[search.space]
"train.lr" = {{ choice = [3e-4, 1e-3, 3e-3] }}
"model.width" = {{ choice = [4, 8, 12] }}
"model.dropout" = {{ choice = [0.0, 0.2, 0.4] }}
[[model]]
family = "cnn"
depth = 2
"""


def run(root: Path, prune: str, epochs: int) -> tuple[dict[str, float], int, float]:
    """(best validation AUC per configuration among finished jobs, epochs trained, seconds)."""
    spec = root / f"{prune}.toml"
    spec.write_text(SPEC.format(prune=prune, epochs=epochs))
    start = time.perf_counter()
    code = cli.main([str(spec), "--root", str(root / prune)])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the {prune} run exited {code}")
    with sqlite3.connect(root / prune / "results.db") as con:
        best = dict(con.execute("select t.params_json, max(e.value) from trials t join trial_jobs l using (trial_id) "
                                "join jobs j using (job_id) join epoch_metrics e using (job_id) "
                                "where e.name = 'valid_auc' and j.status = 'done' group by t.params_json"))
        trained = con.execute("select count(*) from epoch_metrics where name = 'valid_auc'").fetchone()[0]
    return best, trained, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="keep both run roots here")
    parser.add_argument("--epochs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        grid, grid_epochs, grid_seconds = run(root, "none", args.epochs)
        asha, asha_epochs, asha_seconds = run(root, "asha", args.epochs)
    grid_best = max(grid.values())
    chosen = max(asha, key=asha.get)
    gap = grid_best - grid[chosen]
    ratio = asha_epochs / grid_epochs
    print(f"grid: {len(grid)} configurations, {grid_epochs} epochs, {grid_seconds:.0f} s; "
          f"best valid AUC {grid_best:.4f}")
    print(f"asha: {len(asha)} trained to the end, {asha_epochs} epochs, {asha_seconds:.0f} s; selected {chosen} "
          f"with valid AUC {grid[chosen]:.4f}")
    print(f"gap to the grid's best: {gap:.4f} ({'within' if gap <= 0.01 else 'OVER'} 0.01); "
          f"epochs: {ratio:.2f} of the grid's ({'within' if ratio <= 0.40 else 'OVER'} 0.40); "
          f"wall time: {asha_seconds / grid_seconds:.2f} of the grid's")


if __name__ == "__main__":
    main()
