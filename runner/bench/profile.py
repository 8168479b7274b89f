"""Where a training step's time goes: convolution, basis expansion, pooling, normalisation, nonlinearity, head,
loss, backward bookkeeping, optimiser, data.

Forward: each module of a known kind runs inside a profiler range named by its kind. Backward: an autograd node
carries the sequence number of the forward op that created it, so its time goes to that op's kind. Inside a
convolution module, the convolution itself is "convolution" and everything else (escnn expanding its filter
from the basis coefficients, in training mode) is "basis expansion".
"""
from __future__ import annotations

import os
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

import equiv
from equiv.cnn import BlurPool2d, GridAvgPool2d
from runner.data.batches import to_batch
from runner.training.predict import normalise, prepare

KINDS = ("convolution", "basis expansion", "pooling", "normalisation", "nonlinearity", "head", "loss",
         "backward bookkeeping", "optimiser", "data")
_CONVOLUTION_OPS = ("aten::conv2d", "aten::convolution", "aten::_convolution")
_BACKWARD = "autograd::engine::evaluate_function: "
_WHOLE = ("loss", "optimiser", "data")  # ranges counted whole: the ops inside them must not count a second time


def module_kinds() -> dict[type, str]:
    """Module classes (torch and escnn) -> the kind of work they do."""
    from equiv.build_cache import load_escnn
    from equiv.gcnn import FieldPool

    enn = load_escnn().nn
    return {
        nn.Conv2d: "conv", enn.R2Conv: "conv",
        BlurPool2d: "pooling", GridAvgPool2d: "pooling", FieldPool: "pooling", nn.AvgPool2d: "pooling",
        enn.PointwiseAvgPoolAntialiased2D: "pooling",
        nn.BatchNorm2d: "normalisation", enn.InnerBatchNorm: "normalisation", enn.IIDBatchNorm2d: "normalisation",
        nn.ReLU: "nonlinearity", enn.ReLU: "nonlinearity", enn.FourierELU: "nonlinearity",
        enn.GroupPooling: "head", enn.NormPool: "head", nn.AdaptiveAvgPool2d: "head", nn.Linear: "head",
    }


def annotate(model: nn.Module) -> list:
    """Wrap every module of a known kind in a profiler range named `kind`; returns the hook handles."""
    kinds, handles = module_kinds(), []
    for module in model.modules():
        kind = next((k for cls, k in kinds.items() if isinstance(module, cls)), None)
        if kind is None:
            continue

        def enter(mod, _args, kind=kind):
            mod._profile_range = record_function(kind)
            mod._profile_range.__enter__()

        def leave(mod, _args, _output):
            mod._profile_range.__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def _scope(event) -> str | None:
    """The innermost named range around an event."""
    parent = event.cpu_parent
    while parent is not None and parent.name not in ("conv", *KINDS):
        parent = parent.cpu_parent
    return None if parent is None else parent.name


def _forward_kind(event) -> str | None:
    scope = _scope(event)
    if scope == "conv":
        return "convolution" if event.name in _CONVOLUTION_OPS else "basis expansion"
    return scope


def breakdown(events) -> dict[str, float]:
    """Milliseconds per kind from the profiler's events (top-level ops only, so nothing is counted twice)."""
    kinds_by_sequence: dict[int, str] = {}
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name.startswith(_BACKWARD) or event.name in ("conv", *KINDS):
            continue
        kind = _forward_kind(event)
        parent_is_scope = event.cpu_parent is not None and event.cpu_parent.name in ("conv", *KINDS)
        if kind and event.sequence_nr >= 0:
            kinds_by_sequence.setdefault(event.sequence_nr, kind)
        if kind and parent_is_scope and kind not in _WHOLE:
            totals[kind] += event.cpu_time_total / 1e3
    for event in events:
        if event.name in _WHOLE:
            totals[event.name] += event.cpu_time_total / 1e3
        elif event.name.startswith(_BACKWARD) and event.cpu_parent is None:
            totals[kinds_by_sequence.get(event.sequence_nr, "backward bookkeeping")] += event.cpu_time_total / 1e3
    return dict(totals)


KINETO_SILENT = "6"  # above libkineto's highest level (VERBOSE 0 .. ERROR 4, USDT 5): it prints nothing


def quiet_kineto() -> None:
    """Silence torch's profiler backend (Kineto) unless the user chose a level: it logs to stderr at every profile,
    and on a machine without a GPU an ERROR "gpuGetDeviceCount failed with code 35" even for a CPU-only profile.
    Kineto reads KINETO_LOG_LEVEL when it starts, at the first profile of the process, so this comes before it.
    What we report comes from the profiler's events, never from its log."""
    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_SILENT)


def profile_step(family: str, group: str, batch: int = 64, image: int = 96, steps: int = 2,
                 **hparams) -> dict[str, float]:
    """Share of a training step's wall time per kind (and 'other'), for one model (default hparams unless given)."""
    torch.manual_seed(0)
    model = equiv.build_model(family, group, 3, 2, **hparams).train()
    annotate(model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = np.random.default_rng(0).integers(0, 256, (batch, image, image, 3), dtype=np.uint8)
    labels = np.arange(batch) % 2
    device = torch.device("cpu")

    def step() -> None:
        with record_function("data"):  # the runner's path: HWC uint8 -> contiguous CHW -> float, normalised
            x, y = to_batch(images, labels)
            x = normalise(prepare(x, device))
        logits = model(x)
        with record_function("loss"):
            loss = F.cross_entropy(logits, y)
        loss.backward()
        with record_function("optimiser"):
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)

    step()  # warm-up
    quiet_kineto()
    # CPU activity only (the step runs on the CPU); CUDA is never requested, so no device is probed for it.
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        wall_ms = (time.perf_counter() - started) * 1e3
    totals = breakdown(profiler.events())
    shares = {kind: totals.get(kind, 0.0) / wall_ms for kind in KINDS}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    return shares
