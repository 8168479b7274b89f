"""The GPU check's parts that go through the runner or the symmetry checks: e2e, AMP invariance, packing.

Each part is a function (recorder, sizes) run in a child process of gpu_check.py; sizes differ between the GPU
run and the CPU smoke run, the code paths do not.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import sqlite3
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gpu_report import Recorder

# Largest relative logit change allowed for the G-CNNs, per precision. fp32 with TF32 off is the project's
# requirement on 96x96; TF32 and fp16 keep 10 mantissa bits (rounding ~5e-4 per op, a few ops deep), bf16 keeps 7.
TOLERANCE = {"fp32": 1e-5, "tf32": 5e-3, "fp16": 5e-3, "bf16": 4e-2}
# The plain CNN must change its logits by at least this (measured 7e-2 to 0.5 after 4 steps; the project's own
# criterion in tests/test_invariance.py), so the measurement can fail. bf16's tolerance lies above it: at bf16 the
# G-CNN check says "symmetric to bf16 rounding", and the CNN's number beside it says how far that is from a CNN.
CNN_FLOOR = 1e-2
E2E_METRICS = ("test_accuracy", "test_auc", "test_nll", "train_images_per_s", "eval_images_per_s",
               "peak_memory_mb", "invariance_error", "grid_error")


@dataclass(frozen=True)
class Sizes:
    device: str
    image: int  # input side for throughput and invariance
    batch: int  # training batch for throughput
    warmup: int
    steps: int  # timed steps per configuration, at most
    seconds: float  # per configuration, at most (at least 2 timed steps)
    hparams: dict = field(default_factory=dict)  # model size for throughput and invariance (default: the defaults)
    families: tuple[tuple[str, str], ...] = ()
    e2e: dict = field(default_factory=dict)
    packing: dict = field(default_factory=dict)
    workers: tuple[int, ...] = (1, 2, 4)
    compile_backend: str = "inductor"


GPU = Sizes(
    device="cuda", image=96, batch=256, warmup=3, steps=12, seconds=2.5,
    families=(("cnn", "trivial"), ("gcnn", "C4"), ("gcnn", "D4"), ("gcnn", "C8"), ("gcnn", "SO2"),
              ("unet", "trivial"), ("gunet", "D4")),
    e2e={"train_size": 1024, "valid_size": 256, "test_size": 256, "image_size": 96, "batch_size": 128,
         "epochs": 2, "width": 16, "depth": 3, "samples": 128},
    packing={"train_size": 512, "valid_size": 128, "test_size": 128, "image_size": 96, "batch_size": 64,
             "epochs": 1, "width": 16, "depth": 3, "samples": 64, "seeds": 4, "groups": ("C4",)},
)
SMOKE = Sizes(
    device="cpu", image=32, batch=4, warmup=1, steps=2, seconds=0.5,
    hparams={"width": 4, "depth": 2, "kernel_size": 3},
    families=(("cnn", "trivial"), ("gcnn", "C4"), ("unet", "trivial")),
    e2e={"train_size": 64, "valid_size": 32, "test_size": 32, "image_size": 32, "batch_size": 16,
         "epochs": 1, "width": 4, "depth": 2, "samples": 16},
    packing={"train_size": 32, "valid_size": 16, "test_size": 16, "image_size": 32, "batch_size": 16,
             "epochs": 1, "width": 4, "depth": 2, "samples": 16, "seeds": 2, "groups": ()},
    workers=(1, 2), compile_backend="eager",  # the compile path without the compiler: minutes on 2 cores
)


def run_named_part(name: str, out: Path, smoke: bool) -> int:
    """Entry point of a part's child process: run it, record its end (ok or the error), exit 0 either way."""
    from gpu_fullsize import fullsize
    from gpu_speed import compile_cnn, compile_d4, throughput

    parts: dict[str, Callable[[Recorder, Sizes, Path], None]] = {
        "e2e": e2e, "amp_invariance": amp_invariance, "throughput": throughput,
        "compile_cnn": compile_cnn, "compile_d4": compile_d4, "packing": packing, "fullsize": fullsize,
    }
    recorder = Recorder(out / "parts" / f"{name}.json")
    work = out / "work" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        parts[name](recorder, SMOKE if smoke else GPU, work)
    except Exception as exc:  # noqa: BLE001 - recorded; the next part runs anyway
        recorder.note(traceback.format_exc())
        recorder.finish("failed", f"{type(exc).__name__}: {exc}")
        return 0
    recorder.finish("ok")
    return 0


# ---- specs through the runner ----------------------------------------------------------------------------------

def spec_text(name: str, s: dict, models: list[tuple[str, str]], seeds: int) -> str:
    blocks = "".join(f'\n[[model]]\nfamily = "{family}"\ngroup = "{group}"\nwidth = {s["width"]}\ndepth = {s["depth"]}\n'
                     for family, group in models)
    return f"""[experiment]
name = "{name}"
task = "classification"
seeds = {list(range(seeds))}

[data]
source = "synthetic"
train_size = {s["train_size"]}
valid_size = {s["valid_size"]}
test_size = {s["test_size"]}
image_size = {s["image_size"]}

[train]
epochs = {s["epochs"]}
batch_size = {s["batch_size"]}
amp = true

[eval]
rotation_angles = [0, 45, 90]
rotation_samples = {s["samples"]}
{blocks}"""


def run_runner(spec: Path, root: Path, device: str, *extra: str) -> tuple[int, float, str]:
    """`python -m runner SPEC --device D --root ROOT ...`: exit code, wall seconds, the log's tail."""
    log = root.parent / f"{root.name}.log"
    started = time.monotonic()
    with open(log, "w") as stream:
        code = subprocess.run([sys.executable, "-m", "runner", str(spec), "--device", device, "--root", str(root),
                               *extra], stdout=stream, stderr=subprocess.STDOUT).returncode
    return code, time.monotonic() - started, log.read_text()[-2000:]


def job_rows(db: Path) -> list[dict]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        jobs = connection.execute("SELECT job_id, label, status, device, worker FROM jobs ORDER BY job_id").fetchall()
        metrics = connection.execute("SELECT job_id, name, value FROM final_metrics").fetchall()
    rows = {job_id: {"job": label, "status": status, "device": device, "worker": worker}
            for job_id, label, status, device, worker in jobs}
    for job_id, name, value in metrics:
        rows[job_id][name] = value
    return list(rows.values())


def e2e(recorder: Recorder, sizes: Sizes, work: Path) -> None:
    spec = work / "e2e.toml"
    spec.write_text(spec_text("gpu_e2e", sizes.e2e, [("cnn", "trivial"), ("gcnn", "C4"), ("gcnn", "D4")], 1))
    code, seconds, tail = run_runner(spec, work / "root", sizes.device)
    recorder.note(f"python -m runner e2e.toml --device {sizes.device}: exit {code} in {seconds:.1f} s")
    if not recorder.check("runner exit code", code == 0, f"{code} (0 = all jobs done)"):
        recorder.note(tail)
    rows = job_rows(work / "root" / "results.db")
    for row in rows:
        recorder.row(**{k: row.get(k) for k in ("job", "status", "device", *E2E_METRICS)})
    recorder.check("all jobs done", rows and all(r["status"] == "done" for r in rows),
                   ", ".join(f"{r['job']}: {r['status']}" for r in rows) or "no jobs in the database")
    recorder.check(f"device recorded as {sizes.device}",
                   rows and all(str(r["device"]).startswith(sizes.device) for r in rows),
                   ", ".join(sorted({str(r["device"]) for r in rows})))
    missing = [f"{r['job']}.{m}" for r in rows for m in E2E_METRICS if not _finite(r.get(m))]
    recorder.check("metrics finite", not missing, "missing or not finite: " + (", ".join(missing) or "none"))
    equivariant = [r for r in rows if not r["job"].startswith("cnn")]
    worst = max((r.get("invariance_error") or math.inf for r in equivariant), default=math.inf)
    recorder.check("G-CNN invariance after AMP training (evaluated at default precision)",
                   worst <= TOLERANCE["tf32"], f"worst {worst:.2e} <= {TOLERANCE['tf32']:.0e}")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---- invariance under autocast ---------------------------------------------------------------------------------

def precisions(device: str) -> dict[str, tuple[object, bool]]:
    """name -> (autocast dtype or None, allow TF32). TF32 exists only on CUDA."""
    import torch

    table = {"fp32": (None, False), "tf32": (None, True), "fp16": (torch.float16, False),
             "bf16": (torch.bfloat16, False)}
    return table if device == "cuda" else {k: v for k, v in table.items() if k != "tf32"}


@contextlib.contextmanager
def precision(device: str, dtype, tf32: bool):
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        with torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def trained_model(family: str, group: str, sizes: Sizes, steps: int = 4):
    """A model after a few Adam steps at a high rate: the plain CNN then clearly breaks the symmetry.

    The plain CNN always has the default size (cheap everywhere), so CNN_FLOOR holds in the CPU smoke run too.
    """
    import torch
    import torch.nn.functional as F

    import equiv
    from equiv.checks import smooth_images

    torch.manual_seed(0)
    hparams = {} if family == "cnn" else sizes.hparams
    model = equiv.build_model(family, group, 3, 2, **hparams).to(sizes.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        x = smooth_images(8, sizes.image, seed=100 + step).to(sizes.device)
        optimiser.zero_grad()
        F.cross_entropy(model(x), torch.arange(8, device=sizes.device) % 2).backward()
        optimiser.step()
    return model.eval()


def amp_invariance(recorder: Recorder, sizes: Sizes, work: Path) -> None:
    import equiv
    from equiv.checks import invariance_errors, smooth_images
    from equiv.groups import parse_group

    x = smooth_images(8, 96, seed=3).to(sizes.device)  # 96x96: the size the 1e-5 requirement is stated for
    for family, group in (("cnn", "trivial"), ("gcnn", "C4"), ("gcnn", "D4")):
        model = trained_model(family, group, sizes)
        measured_group = parse_group("D4") if family == "cnn" else None
        for name, (dtype, tf32) in precisions(sizes.device).items():
            with precision(sizes.device, dtype, tf32):
                worst = max(invariance_errors(model, x, group=measured_group).values())
            label = f"{family} {group} {name}"
            recorder.row(model=f"{family} {group}", params=equiv.count_params(model), precision=name,
                         max_error=worst, tolerance=TOLERANCE[name])
            if family == "cnn":
                recorder.check(f"{label} is not invariant", worst >= CNN_FLOOR, f"{worst:.2e} >= {CNN_FLOOR}")
            else:
                recorder.check(f"{label} is invariant", worst <= TOLERANCE[name],
                               f"{worst:.2e} <= {TOLERANCE[name]:.0e}")


# ---- packing several jobs on one device ------------------------------------------------------------------------

def packing(recorder: Recorder, sizes: Sizes, work: Path) -> None:
    s = sizes.packing
    models = [("cnn", "trivial")] + [("gcnn", g) for g in s["groups"]]
    spec = work / "packing.toml"
    spec.write_text(spec_text("gpu_packing", s, models, s["seeds"]))
    data = prepare_data(spec, work / "data")
    baseline = None
    for workers in sizes.workers:
        root = work / f"k{workers}"
        shutil.copytree(data, root / "data")
        code, seconds, tail = run_runner(spec, root, sizes.device, "--workers", str(workers))
        rows = job_rows(root / "results.db")
        done = sum(r["status"] == "done" for r in rows)
        per_hour = done / seconds * 3600
        baseline = baseline or per_hour
        peaks = worker_peaks(rows)
        recorder.row(workers=workers, jobs=len(rows), done=done, wall_s=seconds, jobs_per_hour=per_hour,
                     vs_one_worker=per_hour / baseline, workers_used=len(peaks),
                     peak_mib_per_worker=", ".join(f"{p:.0f}" for p in peaks.values()),
                     peak_mib_sum=sum(peaks.values()))
        if not recorder.check(f"--workers {workers}: all jobs done", code == 0 and done == len(rows) > 0,
                              f"exit {code}, {done} of {len(rows)} done"):
            recorder.note(tail)


def prepare_data(spec: Path, folder: Path) -> Path:
    """Generate the spec's synthetic data once, so every K measures training, not data generation."""
    from runner.data import load_splits
    from runner.spec.identity import expand
    from runner.spec import read_spec

    config = expand(read_spec(spec))[0].config
    load_splits(config.task, config.data, folder)
    return folder


def worker_peaks(rows: list[dict]) -> dict[str, float]:
    """Each worker's peak memory: the largest of its jobs' peaks (each job's peak is measured from its start)."""
    peaks: dict[str, float] = {}
    for row in rows:
        if _finite(row.get("peak_memory_mb")):
            peaks[row["worker"]] = max(peaks.get(row["worker"], 0.0), row["peak_memory_mb"])
    return peaks
