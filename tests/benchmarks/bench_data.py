"""Data-layer throughput: synthetic generation, PCam-format loading (streamed, in memory) vs a tiny CNN's training.

Run: uv run python tests/benchmarks/bench_data.py   (writes under runs/bench_data/, gitignored)
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from runner.spec.config import DataSpec
from runner.data import iterate_batches, load_splits, sample_figure
from runner.data import synthetic as sy
from runner.data.pcam import SPLITS, write_pcam_pair, file_name

OUT = Path("runs/bench_data")
BATCH = 64


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.0f}/s"


def bench_generator(n: int = 1024) -> None:
    for task in ("classification", "segmentation"):
        sy.generate(task, 0, "train", 64, 96)  # warm up (imports, FFT plans)
        start = time.perf_counter()
        sy.generate(task, 1, "train", n, 96)
        print(f"generator {task:14s} (1 thread, 96x96): {rate(n, time.perf_counter() - start)} patches")


def write_pcam_folder(root: Path, n_train: int) -> None:
    """A PCam-format folder; train patches are synthetic (tiled) so the bytes look like real images."""
    images, labels = sy.generate("classification", 0, "train", 1024, 96)
    for split, n in (("train", n_train), ("valid", 512), ("test", 512)):
        if not (root / file_name(split, "x")).is_file():
            reps = -(-n // len(images))
            write_pcam_pair(root / file_name(split, "x"), root / file_name(split, "y"),
                            np.concatenate([images] * reps)[:n], np.concatenate([labels] * reps)[:n])


def loader_rate(in_memory: bool, root: Path, batches: int = 60) -> float:
    spec = DataSpec(source="pcam", root=str(root), train_size=0, valid_size=0, test_size=0, in_memory=in_memory)
    splits = load_splits("classification", spec, OUT / "cache")
    start, seen = time.perf_counter(), 0
    for i, (x, _) in enumerate(iterate_batches(splits.train, BATCH, shuffle=True, seed=0, epoch=0)):
        seen += len(x)
        if i + 1 == batches:
            break
    return seen / (time.perf_counter() - start)


def tiny_cnn() -> nn.Module:
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))  # noqa: E731
    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 2))


def train_rate(root: Path, batches: int = 15) -> float:
    spec = DataSpec(source="pcam", root=str(root), train_size=0, valid_size=0, test_size=0, in_memory=True)
    split = load_splits("classification", spec, OUT / "cache").train
    model, seen = tiny_cnn(), 0
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    data = list(iterate_batches(split, BATCH, shuffle=True, seed=0, epoch=0))[:batches + 2]
    for i, (x, y) in enumerate(data):
        if i == 2:  # the first steps warm up allocators
            start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x.float() / 255), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(x) if i >= 2 else 0
    return seen / (time.perf_counter() - start)


def main() -> None:
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bench_generator()
    torch.set_num_threads(threads)
    root = OUT / "pcam"
    write_pcam_folder(root, n_train=16384)
    streamed, in_memory = loader_rate(False, root), loader_rate(True, root)
    train = train_rate(root)
    print(f"loader streamed  (HDF5, shuffled, batch {BATCH}): {streamed:8.0f} images/s")
    print(f"loader in memory (shuffled, batch {BATCH}):       {in_memory:8.0f} images/s")
    print(f"tiny CNN training (16/32/64 ch, 96x96, CPU):   {train:8.0f} images/s")
    print(f"ratio loader/train: streamed {streamed / train:.1f}x, in memory {in_memory / train:.1f}x (need >= 5x)")
    splits = load_splits("classification", DataSpec(train_size=256, valid_size=32, test_size=32), OUT / "cache")
    print(f"sample figure: {sample_figure(splits.train, OUT / 'synthetic_samples.png', n=24, title=splits.description[:60])}")
    seg = load_splits("segmentation", DataSpec(train_size=64, valid_size=16, test_size=16), OUT / "cache")
    print(f"sample figure: {sample_figure(seg.train, OUT / 'synthetic_nuclei.png', n=16)}")


if __name__ == "__main__":
    main()
