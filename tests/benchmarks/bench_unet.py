"""U-Net costs at default hyper-parameters: params, build time, train/eval speed, equivariance error.

Run: `uv run python tests/benchmarks/bench_unet.py [--size 96]`. Prints numbers; asserts nothing.
A cold build is timed in a fresh process (after the escnn import), so escnn's basis caches start empty.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore", message=".*py3nj.*")

from equiv.checks import equivariance_errors  # noqa: E402
from equiv.groups import parse_group  # noqa: E402
from equiv import count_params  # noqa: E402
from equiv.segmentation import build_unet  # noqa: E402
from runner.training.metrics import dice_bce_loss  # noqa: E402

CASES = [("unet", "trivial"), ("gunet", "C4"), ("gunet", "D4")]
IN_CHANNELS = 3


def _build(family: str, group: str) -> tuple[torch.nn.Module, float]:
    start = time.perf_counter()
    model = build_unet(family, parse_group(group), IN_CHANNELS, 1)
    return model, time.perf_counter() - start


def _cold_build_seconds(family: str, group: str) -> float:
    code = (
        "import warnings; warnings.simplefilter('ignore'); import escnn.nn; import sys;"
        "sys.path.insert(0, 'tests/benchmarks'); import bench_unet as b;"
        f"print(b._build({family!r}, {group!r})[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _best_seconds(run, repeats: int) -> float:
    """Fastest of `repeats` timed calls after one warm-up: the least disturbed by other work on the machine."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _train_images_per_second(model: torch.nn.Module, size: int, batch: int = 8, repeats: int = 4) -> float:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, IN_CHANNELS, size, size)
    target = (torch.rand(batch, 1, size, size) > 0.5).float()

    def step() -> None:
        optimizer.zero_grad()
        dice_bce_loss(model(x), target).backward()
        optimizer.step()

    return batch / _best_seconds(step, repeats)


def _eval_images_per_second(model: torch.nn.Module, size: int, batch: int = 16, repeats: int = 4) -> float:
    model.eval()
    x = torch.randn(batch, IN_CHANNELS, size, size)
    with torch.no_grad():
        return batch / _best_seconds(lambda: model(x), repeats)


def _max_equivariance_error(model: torch.nn.Module, size: int) -> float:
    """Over the model's non-identity grid elements (D4's for the plain U-Net, to show the contrast), train and eval."""
    x = torch.randn(2, IN_CHANNELS, size, size)
    group = parse_group("D4") if model.group.kind == "trivial" else None
    errors = []
    for train in (True, False):
        model.train(train)
        errors += [e for name, e in equivariance_errors(model, x, group).items() if name != "rot0"]
    return max(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"input {args.size}x{args.size}, in_channels {IN_CHANNELS}, default hparams; speeds are best of 4 batches")
    header = f"{'model':<12}{'params':>9}{'cold s':>8}{'warm s':>8}{'train img/s':>13}{'eval img/s':>12}" \
             f"{'export img/s':>14}{'equiv err':>11}{'export diff':>13}"
    print(header)
    for family, group in CASES:
        cold = _cold_build_seconds(family, group)
        _build(family, group)
        model, warm = _build(family, group)
        train = _train_images_per_second(model, args.size)
        evaluate = _eval_images_per_second(model, args.size)
        exported, export_speed, diff = None, float("nan"), float("nan")
        if hasattr(model, "export"):
            model.eval()
            exported = model.export()
            export_speed = _eval_images_per_second(exported, args.size)
            x = torch.randn(4, IN_CHANNELS, args.size, args.size)
            with torch.no_grad():
                diff = float((exported(x) - model(x)).abs().max())
        error = _max_equivariance_error(model, args.size)
        name = family if group == "trivial" else f"{family} {group}"
        print(f"{name:<12}{count_params(model):>9}{cold:>8.2f}{warm:>8.2f}{train:>13.1f}{evaluate:>12.1f}"
              f"{export_speed:>14.1f}{error:>11.1e}{diff:>13.1e}")
    print("equiv err: max over non-identity grid elements (D4's for the plain unet), train and eval, of"
          " ||f(gx) - g f(x)|| / ||f(x)|| per sample")


if __name__ == "__main__":
    main()
