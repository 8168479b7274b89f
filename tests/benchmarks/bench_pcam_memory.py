"""PCam at (a share of) its real size through load_splits + iterate_batches: the private in-memory copy each worker
used to read (old) against the .npy copy mapped once per node (new), every figure from one run, beside its target.

    python tests/benchmarks/bench_pcam_memory.py                  # a quarter of PCam: 65,536 / 8,192 / 8,192
    python tests/benchmarks/bench_pcam_memory.py --full --new-only  # the real size (262,144 / 32,768 / 32,768)

Each measurement is a fresh worker process (one torch thread) so its peak memory is its own; the parent reads the
workers' /proc/<pid>/smaps_rollup while all four are alive, so PSS splits the shared pages among them (the sum of
PSS is what the node holds). "Cold-ish" drops the files from the page cache with posix_fadvise first (no root
needed; the disk's own cache may still help). Random uint8 patches, x chunked 64 rows like the published files.
The old path at full size needs ~14 GiB for one worker: run it only where that is safe.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runner.data.pcam import file_name  # noqa: E402

FULL = 262_144
BATCH = 256
PLAIN_CNN_GPU = 36_000  # README: the plain CNN's GPU training rate with AMP and channels_last, img/s
TARGET_RATE = 1.5 * PLAIN_CNN_GPU
TARGET_FIRST_BATCH_S = 5.0  # "within a few seconds" of the command, once converted
TARGET_EXTRA_GIB = 0.5  # "well under 1 GiB" per extra worker
WORKERS = 4
GIB = 1 << 30


# ---- the data ----------------------------------------------------------------------------------------------------

def write_folder(folder: Path, train: int) -> None:
    """PCam-format files (random patches, x chunked 64 rows), written block by block: memory stays ~100 MB."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train": train, "valid": train // 8, "test": train // 8}
    rng = np.random.default_rng(0)
    for split, n in sizes.items():
        x_path = folder / file_name(split, "x")
        if x_path.is_file():
            continue
        labels = rng.integers(0, 2, n, dtype=np.uint8).reshape(n, 1, 1, 1)
        _write_h5(folder / file_name(split, "y"), "y", labels)
        _write_x(x_path, n, rng)


def _write_h5(path: Path, key: str, data: np.ndarray) -> None:
    import h5py
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=data)


def _write_x(path: Path, n: int, rng: np.random.Generator, block: int = 4096) -> None:
    import h5py
    temp = path.with_name(f".{path.name}.tmp")
    with h5py.File(temp, "w") as f:
        ds = f.create_dataset("x", (n, 96, 96, 3), np.uint8, chunks=(64, 96, 96, 3))
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            ds[lo:hi] = np.frombuffer(rng.bytes((hi - lo) * 96 * 96 * 3), np.uint8).reshape(hi - lo, 96, 96, 3)
    os.replace(temp, path)


def evict(*folders: Path) -> None:
    """Drop these files' pages from the page cache ("cold-ish": the device's own cache is not ours to drop)."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix in (".h5", ".npy"):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


# ---- one worker (a child process) --------------------------------------------------------------------------------

def worker(mode: str, folder: Path, cache: Path, seed: int, started: float) -> None:
    """Load, take the first batch, run one shuffled epoch at batch 256, report, then wait for the parent to read
    this process's memory (so that concurrent workers are measured while all of them map the file)."""
    import torch
    torch.set_num_threads(1)
    from runner.spec.config import DataSpec
    from runner.data import iterate_batches, load_splits, shared
    if mode == "old":
        shared.PRIVATE_MAX_BYTES = 1 << 62  # every split copied into the worker, as before the shared path
    spec = DataSpec(source="pcam", root=str(folder), train_size=0, valid_size=0, test_size=0, in_memory=True)
    t0 = time.time()
    splits = load_splits("classification", spec, cache)
    t1 = time.time()
    batches = iterate_batches(splits.train, BATCH, shuffle=True, seed=seed, epoch=0)
    next(batches)
    t2, cpu = time.time(), time.process_time()
    seen = BATCH + sum(len(x) for x, _ in batches)
    wall, cpu = time.time() - t2, time.process_time() - cpu
    report = {"load_s": t1 - t0, "first_batch_s": t2 - t0, "command_to_first_batch_s": t2 - started,
              "img_s": (seen - BATCH) / wall, "img_cpu_s": (seen - BATCH) / cpu, "images": seen,
              "peak_rss_gib": status_kib("VmHWM") / (1 << 20), "description": splits.description}
    print(json.dumps(report), flush=True)
    sys.stdin.readline()


def status_kib(field: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rollup(pid: int) -> dict[str, float]:
    """smaps_rollup in GiB: Rss, Pss, Anonymous (the worker's own heap), Shared_Clean, Private_Clean, ..."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        out[key] = int(value.split()[0]) / (1 << 20)
    return out


# ---- the parent --------------------------------------------------------------------------------------------------

def start(mode: str, folder: Path, cache: Path, seed: int) -> subprocess.Popen:
    args = [sys.executable, __file__, "--worker", mode, str(folder), str(cache), str(seed), repr(time.time())]
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}  # CI: plain progress lines, no bar
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def measure(mode: str, folder: Path, cache: Path, workers: int = 1) -> list[dict]:
    """`workers` concurrent workers: each one's report plus its memory read while all are alive."""
    procs = [start(mode, folder, cache, seed) for seed in range(workers)]
    reports = []
    for proc in procs:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"a {mode} worker failed (exit {proc.wait()})")
        reports.append(json.loads(line))
    for proc, report in zip(procs, reports):
        report["memory"] = rollup(proc.pid)
    for proc in procs:
        proc.communicate("\n")
    return reports


def run(folder: Path, cache: Path, new_only: bool) -> dict:
    shutil.rmtree(cache, ignore_errors=True)  # the one-time conversion is part of the measurement
    results: dict = {}
    evict(folder)
    results["new_first"] = measure("new", folder, cache)[0]  # converts x of the three splits
    evict(folder, cache)
    results["new_cold"] = measure("new", folder, cache)[0]
    results["new_warm"] = measure("new", folder, cache)[0]
    results["new_workers"] = measure("new", folder, cache, WORKERS)
    if not new_only:
        evict(folder)
        results["old_cold"] = measure("old", folder, cache)[0]
        results["old_warm"] = measure("old", folder, cache)[0]
    return results


# ---- the table ---------------------------------------------------------------------------------------------------

def per_extra_worker(results: dict) -> float:
    """(node total with 4 workers - with 1) / 3, the node total being the sum of PSS (shared pages counted once)."""
    four = sum(r["memory"]["Pss"] for r in results["new_workers"])
    return (four - results["new_warm"]["memory"]["Pss"]) / (WORKERS - 1)


def rows(results: dict) -> list[tuple[str, str, str, str]]:
    first, cold, warm, four = (results[k] for k in ("new_first", "new_cold", "new_warm", "new_workers"))
    extra = per_extra_worker(results)
    table = [
        ("new: first load, converting x of all splits to .npy (cold h5)", f"{first['load_s']:.1f} s", "once", ""),
        ("new: load_splits, cold-ish / warm", f"{cold['load_s']:.2f} s / {warm['load_s']:.2f} s", "", ""),
        ("new: command to first training batch, cold-ish", f"{cold['command_to_first_batch_s']:.2f} s",
         f"<= {TARGET_FIRST_BATCH_S:.0f} s", _met(cold["command_to_first_batch_s"] <= TARGET_FIRST_BATCH_S)),
        ("new: command to first training batch, warm", f"{warm['command_to_first_batch_s']:.2f} s",
         f"<= {TARGET_FIRST_BATCH_S:.0f} s", _met(warm["command_to_first_batch_s"] <= TARGET_FIRST_BATCH_S)),
        ("new: one worker, peak RSS (shared file pages included) / own heap at the end",
         f"{warm['peak_rss_gib']:.2f} / {warm['memory']['Anonymous']:.2f} GiB", "", ""),
        (f"new: {WORKERS} workers, node total (sum of PSS)", f"{sum(r['memory']['Pss'] for r in four):.2f} GiB", "", ""),
        ("new: memory per extra worker ((PSS sum of 4 - PSS of 1) / 3)", f"{extra:.3f} GiB",
         f"<= {TARGET_EXTRA_GIB} GiB", _met(extra <= TARGET_EXTRA_GIB)),
        (f"new: {WORKERS} workers, own heap (Anonymous) / RSS minus shared, each (max)",
         f"{max(r['memory']['Anonymous'] for r in four):.3f} / "
         f"{max(r['memory']['Private_Clean'] + r['memory']['Private_Dirty'] for r in four):.3f} GiB", "", ""),
        ("new: shuffled batch-256 loader, one worker, cold-ish", _rate(cold), "", ""),
        ("new: shuffled batch-256 loader, one worker, warm", _rate(warm),
         f">= {TARGET_RATE / 1000:.0f}k img/s", _met(warm["img_cpu_s"] >= TARGET_RATE)),
        (f"new: loader per worker with {WORKERS} at once (per CPU-second; wall on {os.cpu_count()} cores)",
         f"{min(r['img_cpu_s'] for r in four) / 1000:.1f}k ({min(r['img_s'] for r in four) / 1000:.1f}k wall)",
         f">= {TARGET_RATE / 1000:.0f}k img/s", _met(min(r["img_cpu_s"] for r in four) >= TARGET_RATE)),
    ]
    return table + (old_rows(results) if "old_warm" in results else [])


def old_rows(results: dict) -> list[tuple[str, str, str, str]]:
    cold, warm, new = results["old_cold"], results["old_warm"], results["new_warm"]
    per_node = WORKERS * warm["peak_rss_gib"]
    return [
        ("old: load_splits, cold-ish / warm", f"{cold['load_s']:.1f} s / {warm['load_s']:.1f} s", "", ""),
        ("old: command to first training batch, warm", f"{warm['command_to_first_batch_s']:.2f} s", "", ""),
        ("old: one worker, peak RSS (all private)", f"{warm['peak_rss_gib']:.2f} GiB", "", ""),
        (f"old: {WORKERS} workers (4 x one; not run)", f"{per_node:.1f} GiB", "", ""),
        ("old: shuffled batch-256 loader, one worker, warm", _rate(warm), "", ""),
        ("ratio: first batch, old / new (warm)",
         f"{warm['command_to_first_batch_s'] / new['command_to_first_batch_s']:.1f}x", "", ""),
        ("ratio: one worker's peak RSS, old / new", f"{warm['peak_rss_gib'] / new['peak_rss_gib']:.1f}x", "", ""),
        (f"ratio: node memory with {WORKERS} workers, old / new",
         f"{per_node / sum(r['memory']['Pss'] for r in results['new_workers']):.1f}x", "", ""),
        ("ratio: loader rate per CPU-second, new / old (warm)", f"{new['img_cpu_s'] / warm['img_cpu_s']:.2f}x", "", ""),
    ]


def _rate(report: dict) -> str:
    """Per CPU-second (the loader's own cost: neighbours on a shared machine take wall time, not our CPU)."""
    cpu = report["img_cpu_s"]
    return f"{cpu / 1000:.1f}k img/s ({cpu / PLAIN_CNN_GPU:.2f}x the plain CNN on GPU; wall {report['img_s'] / 1000:.1f}k)"


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


def render(table: list[tuple[str, str, str, str]]) -> str:
    lines = ["| measure | value | target | met |", "|:--|:--|:--|:--|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in table])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=FULL // 4, help="training patches (valid, test: 1/8 of it)")
    parser.add_argument("--full", action="store_true", help=f"the real size, {FULL:,} training patches")
    parser.add_argument("--new-only", action="store_true", help="skip the old private copy (14 GiB at full size)")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "pcam-bench")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder and cache for a rerun")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "pcam_memory.json")
    args = parser.parse_args()
    size = FULL if args.full else args.size
    folder, cache = args.root / f"pcam-{size}", args.root / f"cache-{size}"
    started = time.time()
    write_folder(folder, size)
    print(f"PCam-format folder {folder}: {size:,} / {size // 8:,} / {size // 8:,} patches, "
          f"{sum(p.stat().st_size for p in folder.iterdir()) / 1e9:.1f} GB of .h5 (written in "
          f"{time.time() - started:.0f} s)", flush=True)
    try:
        results = run(folder, cache, args.new_only)
    finally:
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)
    table = render(rows(results))
    print(results["new_warm"]["description"])
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": size, "results": results, "table": table}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
    else:
        main()
