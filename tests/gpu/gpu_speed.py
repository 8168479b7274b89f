"""The GPU check's speed parts: training img/s per family and setting, and torch.compile against eager.

A step is the runner's: autocast forward, loss in fp32, GradScaler backward, AdamW step, on a fixed batch already
on the device (this measures the model, not the loader). img/s = batch * timed steps / wall time, synchronised.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gpu_parts import Sizes
from gpu_report import Recorder


@dataclass(frozen=True)
class Setting:
    name: str
    amp: bool
    channels_last: bool
    benchmark: bool


SETTINGS = (
    Setting("fp32", False, False, False),
    Setting("amp", True, False, False),
    Setting("amp+channels_last", True, True, False),
    Setting("amp+cudnn.benchmark", True, False, True),
    Setting("amp+both", True, True, True),
)
COMPILED = Setting("amp+cudnn.benchmark", True, False, True)  # what torch.compile is compared on


def synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def batch_for(family: str, sizes: Sizes) -> tuple[torch.Tensor, torch.Tensor]:
    from equiv.checks import smooth_images

    x = smooth_images(sizes.batch, sizes.image, seed=1).to(sizes.device)
    generator = torch.Generator().manual_seed(2)
    if family in ("unet", "gunet"):
        target = (torch.rand(sizes.batch, 1, sizes.image, sizes.image, generator=generator) > 0.5).float()
    else:
        target = torch.randint(0, 2, (sizes.batch,), generator=generator)
    return x, target.to(sizes.device)


def loss_of(family: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if family in ("unet", "gunet"):
        return F.binary_cross_entropy_with_logits(output.float(), target)
    return F.cross_entropy(output.float(), target)


def build(family: str, group: str, sizes: Sizes) -> torch.nn.Module:
    import equiv

    torch.manual_seed(0)
    outputs = 1 if family in ("unet", "gunet") else 2
    return equiv.build_model(family, group, 3, outputs, **sizes.hparams).to(sizes.device).train()


def images_per_second(model, family: str, setting: Setting, sizes: Sizes, forward=None) -> float:
    """Warm-up steps, then up to `sizes.steps` timed steps or `sizes.seconds` (at least 2 steps)."""
    torch.backends.cudnn.benchmark = setting.benchmark
    memory_format = torch.channels_last if setting.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    forward = model if forward is None else forward
    x, target = batch_for(family, sizes)
    x = x.contiguous(memory_format=memory_format)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(sizes.device, enabled=setting.amp and sizes.device == "cuda")
    autocast = torch.autocast(sizes.device) if setting.amp else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = loss_of(family, forward(x), target)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()

    for _ in range(sizes.warmup):
        step()
    synchronise(sizes.device)
    started, steps = time.perf_counter(), 0
    while steps < 2 or (steps < sizes.steps and time.perf_counter() - started < sizes.seconds):
        step()
        steps += 1
    synchronise(sizes.device)
    return sizes.batch * steps / (time.perf_counter() - started)


def peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def throughput(recorder: Recorder, sizes: Sizes, work: Path) -> None:
    import equiv

    recorder.note(f"batch {sizes.batch}, {sizes.image}x{sizes.image}, AMP = autocast "
                  f"{'fp16 + GradScaler' if sizes.device == 'cuda' else 'bf16'}, TF32 convolutions "
                  f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'} (torch's default)")
    for family, group in sizes.families:
        started = time.monotonic()
        model = build(family, group, sizes)
        row = {"model": f"{family} {group}", "params": equiv.count_params(model),
               "build_s": round(time.monotonic() - started, 1)}
        reset_peak(sizes.device)
        for setting in SETTINGS:
            try:
                row[setting.name] = images_per_second(model, family, setting, sizes)
            except Exception as exc:  # noqa: BLE001 - one setting failing is a result, not the end
                row[setting.name] = None
                recorder.note(f"{family} {group} {setting.name}: {type(exc).__name__}: {exc}")
            print(f"   {family} {group} {setting.name}: {row[setting.name]}", flush=True)
        measured = [row[s.name] for s in SETTINGS if row.get(s.name)]
        row["best_vs_fp32"] = max(measured) / row["fp32"] if row.get("fp32") and measured else None
        row["peak_mib"] = peak_mib(sizes.device)
        recorder.row(**row)


def compiled_speed(recorder: Recorder, sizes: Sizes, family: str, group: str) -> None:
    """Eager img/s, then torch.compile: the first compiled step's time (compiling), then compiled img/s."""
    model = build(family, group, sizes)
    eager = images_per_second(model, family, COMPILED, sizes)
    row = recorder.row(model=f"{family} {group}", setting=COMPILED.name, backend=sizes.compile_backend,
                       eager=eager, compiled=None, speedup=None, compile_s=None)
    compiled = torch.compile(model, backend=sizes.compile_backend)
    x, target = batch_for(family, sizes)
    started = time.monotonic()
    with torch.autocast(sizes.device) if COMPILED.amp else contextlib.nullcontext():
        loss = loss_of(family, compiled(x), target)
    loss.backward()
    synchronise(sizes.device)
    row["compile_s"] = round(time.monotonic() - started, 1)
    recorder.flush()
    row["compiled"] = images_per_second(model, family, COMPILED, sizes, forward=compiled)
    row["speedup"] = row["compiled"] / eager
    recorder.flush()


def compile_cnn(recorder: Recorder, sizes: Sizes, work: Path) -> None:
    compiled_speed(recorder, sizes, "cnn", "trivial")


def compile_d4(recorder: Recorder, sizes: Sizes, work: Path) -> None:
    compiled_speed(recorder, sizes, "gcnn", "D4")
