"""Where a job runs: CUDA when present (workers share GPUs round-robin), then Apple's MPS, else the CPU; and how
many CPU threads each of several workers on one machine may use."""
from __future__ import annotations

import os

import torch

from runner.training import DEVICES  # noqa: F401  defined torch-free, where the CLI reads it


def pick_device(worker_index: int = 0, requested: str = "auto") -> torch.device:
    """`auto`: CUDA, then MPS, then CPU. An explicit request that this machine cannot honour is an error."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("--device mps: Apple's MPS backend is not available on this machine")
    if requested == "mps":
        return torch.device("mps")
    if torch.cuda.is_available():
        return torch.device("cuda", worker_index % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return device.type


def reset_peak_memory(device: torch.device) -> None:
    """Start a job's peak from here: a worker runs several jobs, and each job reports its own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: the GPU allocator's peak since `reset_peak_memory` on CUDA, else the process's resident peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
    except ImportError:  # Windows
        return float("nan")


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask (which taskset and containers narrow), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """N workers on one machine divide its cores; each starting a full set of threads costs 1.6x the CPU time (two
    runners of their own, 1.8x: each worker counts the host's live workers, runner/executors/registry.py)."""
    return max(1, usable_cores() // max(1, workers))


def share_cores(live_workers: int, cap: int) -> int:
    """At a job's start: this worker's share of the cores among the `live_workers` workers of this host (its own
    pool's and other runners'), never above `cap` (the --workers share, or torch's own default). Intra-op threads
    only: torch allows changing them between jobs, the inter-op pool only before the first parallel operation."""
    threads = max(1, min(cap, threads_per_worker(live_workers)))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def limit_threads(threads: int) -> None:
    """Cap this process's torch threads (intra-op and inter-op); call it before the first parallel operation."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already started (e.g. in-process reuse): the intra-op cap still holds
        pass
