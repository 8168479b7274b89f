"""The GPU check's full-size part: PatchCamelyon-format files of the real size, through `python -m runner`.

    PYTHONPATH=. python tests/gpu/gpu_check.py --out runs/gpu --parts fullsize          # on a CUDA machine
    PYTHONPATH=. python tests/gpu/gpu_check.py --out DIR --parts fullsize --cpu-smoke   # tiny, on the CPU

1. Files: 262,144 / 32,768 / 32,768 random 96 x 96 patches, x chunked 64 rows as published (8.9 GB of .h5).
2. The runner's own training rate against the bare model's, for the plain CNN and the D4 G-CNN at batch 256
   with AMP (target: at least 0.9x), with where the time goes when it falls short: the loader alone (shuffled
   batches from the memory-mapped split), the loop's train_step on one batch already in memory (copy to the device,
   augmentation, forward, backward, optimiser), and the rest (the job's bookkeeping).
3. `--workers 1, 2, 4` on one GPU with real-size jobs: jobs per hour, peak memory per worker.
4. `python -m runner specs/pcam_study.toml --dry-run --calibrate` on these files: the study's device-hours.

Rows share one shape (what, value, unit, versus, ratio, note) so the report's table stays readable.
"""
from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpu_parts import job_rows, run_runner, worker_peaks
from gpu_report import Recorder

REPO = Path(__file__).resolve().parents[2]
TARGET_RUNNER_VS_BARE = 0.9


@dataclass(frozen=True)
class FullSizes:
    device: str
    train: int  # patches in the generated training file (valid and test: train // 8, as published)
    d4_train: int  # the D4 job's cap: its rate needs no whole epoch
    eval_cap: int  # valid_size / test_size of every job
    packing_train: int
    packing_jobs: int
    workers: tuple[int, ...]
    loader_batches: int
    width: int
    depth: int


FULL = FullSizes(device="cuda", train=262_144, d4_train=65_536, eval_cap=8_192, packing_train=65_536,
                 packing_jobs=4, workers=(1, 2, 4), loader_batches=200, width=16, depth=3)
SMOKE = FullSizes(device="cpu", train=1_024, d4_train=256, eval_cap=64, packing_train=256, packing_jobs=2,
                  workers=(1, 2), loader_batches=4, width=4, depth=2)
BATCH = 256


def fullsize(recorder: Recorder, sizes, work: Path) -> None:
    """The part's entry (gpu_parts.run_named_part passes the small-part sizes; only their device is used)."""
    s = SMOKE if sizes.device == "cpu" else FULL
    pcam = write_files(recorder, s, work / "pcam")
    root = work / "root"
    for family, group, cap in (("cnn", "trivial", 0), ("gcnn", "D4", s.d4_train)):
        runner_rate(recorder, s, pcam, root, family, group, cap)
    packing(recorder, s, pcam, work)
    study_cost(recorder, s, pcam, root)


def row(recorder: Recorder, what: str, value: float, unit: str, versus: float | None = None,
        note: str = "") -> None:
    recorder.row(what=what, value=value, unit=unit, versus=versus,
                 ratio=None if not versus else value / versus, note=note)


# ---- 1. the files ------------------------------------------------------------------------------------------------

def write_files(recorder: Recorder, s: FullSizes, folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
    from bench_pcam_memory import write_folder  # the benchmark's writer: block by block, ~100 MB of memory

    started = time.monotonic()
    write_folder(folder, s.train)
    gigabytes = sum(p.stat().st_size for p in folder.glob("*.h5")) / 1e9
    row(recorder, "PCam-format files written", gigabytes, "GB", note=f"{s.train:,} training patches, "
        f"{time.monotonic() - started:.0f} s")
    return folder


# ---- 2. the runner against the bare model ------------------------------------------------------------------------

def spec_text(name: str, s: FullSizes, pcam: Path, family: str, group: str, train: int, seeds: int = 1) -> str:
    return f"""[experiment]
name = "{name}"
seeds = {list(range(seeds))}
[data]
source = "pcam"
root = "{pcam}"
train_size = {train}
valid_size = {s.eval_cap}
test_size = {s.eval_cap}
[train]
epochs = 1
batch_size = {BATCH}
amp = true
[eval]
rotation_angles = [0, 90]
rotation_samples = {min(s.eval_cap, 512)}
[[model]]
family = "{family}"
group = "{group}"
width = {s.width}
depth = {s.depth}
"""


def runner_rate(recorder: Recorder, s: FullSizes, pcam: Path, root: Path, family: str, group: str,
                cap: int) -> None:
    name = f"full_{family}_{group}"
    spec = root.parent / f"{name}.toml"
    spec.write_text(spec_text(name, s, pcam, family, group, cap))
    code, seconds, tail = run_runner(spec, root, s.device)
    jobs = [r for r in job_rows(root / "results.db") if r["job"].startswith(family)]
    if not recorder.check(f"{family} {group}: the full-size job ran", code == 0 and jobs, f"exit {code}"):
        recorder.note(tail)
        return
    runner = jobs[-1]["train_images_per_s"]
    parts = breakdown(s, pcam, root / "data", family, group)
    label = f"{family} {group}"
    row(recorder, f"{label}: runner training", runner, "img/s", parts["bare"], "ratio: runner / bare model")
    row(recorder, f"{label}: loader alone (mapped, shuffled)", parts["loader"], "img/s", runner)
    row(recorder, f"{label}: train_step on a batch in memory", parts["step"], "img/s", parts["bare"],
        "copy + augmentation + step, against the bare step")
    row(recorder, f"{label}: job wall time", seconds, "s", note=f"{cap or s.train:,} training patches, 1 epoch")
    recorder.check(f"{label}: runner >= {TARGET_RUNNER_VS_BARE}x the bare model", runner >= 0.9 * parts["bare"],
                   f"{runner:,.0f} vs {parts['bare']:,.0f} img/s ({runner / parts['bare']:.2f}x)")


def breakdown(s: FullSizes, pcam: Path, cache: Path, family: str, group: str) -> dict[str, float]:
    """img/s of: the bare model (a fixed batch on the device, AMP), the loop's train_step on a fixed batch in host
    memory, and the loader alone, in this process."""
    import torch

    from runner.data import iterate_batches, load_splits
    from runner.data.augment import Augmenter
    from runner.spec.config import DataSpec, JobConfig, ModelSpec, TrainSpec
    from runner.training import loop

    device = torch.device(s.device)
    config = JobConfig(experiment="breakdown", task="classification", seed=0,
                       data=DataSpec(source="pcam", root=str(pcam), train_size=0, valid_size=s.eval_cap,
                                     test_size=s.eval_cap),
                       train=TrainSpec(batch_size=BATCH, amp=True),
                       model=ModelSpec(family=family, group=group, width=s.width, depth=s.depth))
    splits = load_splits("classification", config.data, cache)
    started, images = time.monotonic(), 0
    for i, (x, _) in enumerate(iterate_batches(splits.train, BATCH, shuffle=True, seed=0, epoch=0)):
        images += len(x)
        if i + 1 >= s.loader_batches:
            break
    loader = images / (time.monotonic() - started)
    model = loop.build(config).to(device)
    optimizer = loop.make_optimizer(config, model)
    scaler = torch.amp.GradScaler("cuda", enabled=loop.use_amp(config, device))
    x, y = splits.train.get_batch(np.arange(min(BATCH, len(splits.train))))
    augmenter, rng = Augmenter(config.augment), torch.Generator().manual_seed(1)

    def step() -> None:
        loop.train_step(config, model, optimizer, scaler, augmenter, rng, x, y, device)

    def bare() -> None:
        with torch.autocast(device.type, enabled=loop.use_amp(config, device)):
            loss = loop.loss_of(config, model(on_device), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    on_device = loop.normalise(loop.prepare(x, device))
    target = y.to(device)
    return {"loader": loader, "step": _rate(step, len(x), device), "bare": _rate(bare, len(x), device)}


def _rate(step, batch: int, device, steps: int = 20) -> float:
    import torch

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.monotonic()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.monotonic() - started)


# ---- 3. packing real-size jobs -----------------------------------------------------------------------------------

def packing(recorder: Recorder, s: FullSizes, pcam: Path, work: Path) -> None:
    baseline = None
    for workers in s.workers:
        root = work / f"packing-k{workers}"
        shutil.rmtree(root, ignore_errors=True)
        spec = work / f"packing-k{workers}.toml"
        spec.write_text(spec_text(f"packing_k{workers}", s, pcam, "cnn", "trivial", s.packing_train,
                                  seeds=s.packing_jobs))
        (root / "data").parent.mkdir(parents=True, exist_ok=True)
        if (work / "root" / "data").is_dir():  # the mapped copy the first jobs made: not timed again
            (root / "data").symlink_to(work / "root" / "data", target_is_directory=True)
        code, seconds, tail = run_runner(spec, root, s.device, "--workers", str(workers))
        rows = job_rows(root / "results.db")
        done = sum(r["status"] == "done" for r in rows)
        per_hour = done / seconds * 3600
        baseline = baseline or per_hour
        peaks = worker_peaks(rows)
        row(recorder, f"--workers {workers}: jobs per hour", per_hour, "jobs/h", baseline,
            f"{done} of {len(rows)} done in {seconds:.0f} s; peak MiB per worker "
            + ", ".join(f"{p:.0f}" for p in peaks.values()))
        if not recorder.check(f"--workers {workers}: all jobs done", code == 0 and done == len(rows) > 0,
                              f"exit {code}, {done} of {len(rows)}"):
            recorder.note(tail)


# ---- 4. the study's cost -----------------------------------------------------------------------------------------

def study_cost(recorder: Recorder, s: FullSizes, pcam: Path, root: Path) -> None:
    """The real study's spec on the GPU; on the CPU smoke run the small study's spec (two models, not seven) on the
    same files, so the path is the same and the run stays short."""
    spec, overrides = REPO / "specs" / "pcam_study.toml", [f"data.root={pcam}"]
    if s.device == "cpu":
        spec = REPO / "specs" / "search_demo.toml"
        overrides += ["data.source=pcam", "data.train_size=128", f"data.valid_size={s.eval_cap}",
                      f"data.test_size={s.eval_cap}"]
    code, seconds, _ = run_runner(spec, root, s.device, "--dry-run", "--calibrate", *overrides)
    tail = (root.parent / f"{root.name}.log").read_text()  # the whole output: the estimate ends a long table
    match = re.search(r"Expected device time: ([0-9.]+) device-hours", tail)
    if not recorder.check(f"{spec.name}: calibrated estimate", code == 0 and match is not None,
                          f"exit {code} after {seconds:.0f} s"):
        recorder.note(tail[-2000:])
        return
    row(recorder, f"specs/{spec.name}: expected device time", float(match.group(1)), "device-hours",
        note=f"calibrated in {seconds:.0f} s on {s.device}")
    models = re.search(r"per model \(device-hours\): (.*?)\. Rates", tail, re.S)
    if models:
        recorder.note(f"{spec.name} per model (device-hours): " + " ".join(models.group(1).split()))
