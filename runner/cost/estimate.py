"""Expected device time of a spec: its work (runner.cost.work) at the rates measured on this device.

Rates live in ROOT/calibration.json, one entry per device (name and CPU threads) and per cost-relevant part of a
configuration (model architecture, batch size, precision, augmentation, patch size): changing the learning rate
or the seed reuses an entry, a wider model or another GPU needs its own. `--dry-run --calibrate` measures what is
missing; a plain `--dry-run` uses what is there and says what is not.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from runner.atomic import write_text
from runner.cost.work import Sizes, Work, cost_key, data_key, end_of_job_images, model_name, spec_work, split_sizes
from runner.spec import Spec

CALIBRATION_FILE = "calibration.json"
_FORMAT = 1
@dataclass(frozen=True)
class Part:
    """One configuration that stands for a row's jobs: its split sizes and measured rate, where known."""

    config: dict[str, Any]
    sizes: Sizes | None
    rate: dict[str, float] | None  # runner.cost.calibrate.Rate as a dict

    def images(self, epochs: float) -> tuple[float, float] | None:
        """(trained, evaluated) images of one job."""
        if self.sizes is None:
            return None
        return epochs * self.sizes.train, epochs * self.sizes.valid + end_of_job_images(self.config, self.sizes.test)

    def seconds(self, epochs: float) -> float | None:
        """Device seconds of one job at the measured rate."""
        if self.rate is None or self.sizes is None:
            return None
        r, s = self.rate, self.sizes
        per_epoch = s.train / r["train_images_per_s"] + s.valid / r["eval_images_per_s"] + r["epoch_seconds"]
        return r["job_seconds"] + epochs * per_epoch + end_of_job_images(self.config, s.test) / r["eval_images_per_s"]


@dataclass(frozen=True)
class Row:
    work: Work
    parts: tuple[Part, ...]

    @property
    def seconds(self) -> float | None:
        """Expected device seconds of all the row's jobs: `count` jobs at the mean cost of its parts."""
        each = [p.seconds(self.work.epochs) for p in self.parts]
        return None if None in each else self.work.count * sum(each) / len(each)

    def images(self) -> tuple[float, float] | None:
        each = [p.images(self.work.epochs) for p in self.parts]
        if None in each:
            return None
        return tuple(self.work.count * sum(e[i] for e in each) / len(each) for i in (0, 1))

    def rates(self) -> str:
        """Training / evaluation images per second over the parts: the harmonic mean, as the time is averaged."""
        if any(p.rate is None for p in self.parts):
            return "-"
        mean = [len(self.parts) / sum(1 / p.rate[key] for p in self.parts)
                for key in ("train_images_per_s", "eval_images_per_s")]
        return f"{mean[0]:,.0f} / {mean[1]:,.0f}"


def device_name(device) -> str:
    import torch

    from runner.training.device import describe

    return f"{describe(device)}, {torch.get_num_threads()} CPU threads"


def estimate(spec: Spec, root: Path, device, calibrate: bool,
             progress: Callable[[str], None] = print) -> tuple[list[Row], str]:
    """One row per kind of job, with its measured rate where one exists (measured now when `calibrate`)."""
    store = read_store(root / CALIBRATION_FILE)
    name = device_name(device)
    rates, sizes = store["rates"].setdefault(name, {}), store["sizes"]
    changed, listed = False, {}
    rows = []
    for work in spec_work(spec):
        parts = []
        for config in work.configs:
            key, dkey = cost_key(config), data_key(config)
            if calibrate and key not in rates:
                from runner.cost.calibrate import calibrate as measure

                progress(f"calibrating {model_name(config)} ({work.stage}) on {name} ...")
                rate, loaded = measure(config, device, root / "data")  # where jobs keep theirs
                rates[key], sizes[dkey], changed = rate.to_dict(), vars(loaded), True
                progress(f"  {rate.train_images_per_s:,.0f} training / {rate.eval_images_per_s:,.0f} evaluation "
                         f"img/s ({rate.calibrated_for:.1f} s)")
            if dkey not in listed:  # own files are counted afresh each time: they may have changed since
                listed[dkey] = split_sizes(config["task"], config["data"]) or listed_sizes(config)
            known = listed[dkey] or (Sizes(**sizes[dkey]) if dkey in sizes else None)
            parts.append(Part(config=config, sizes=known, rate=rates.get(key)))
        rows.append(Row(work=work, parts=tuple(parts)))
    if changed:
        write_store(root / CALIBRATION_FILE, store)
    return rows, name


def listed_sizes(config: dict[str, Any]) -> Sizes | None:
    """A user's own classification source: its split sizes from the file listing; None for other sources (a
    segmentation folder's tile counts are known once calibration has loaded it)."""
    from runner.data import own_split_counts
    from runner.spec.identity import config_from_dict

    counts = own_split_counts(config["task"], config_from_dict(config).data)
    return None if counts is None else Sizes(**counts)


def read_store(path: Path) -> dict[str, Any]:
    """The calibration file, or an empty one when absent or unreadable (a stale file only costs a re-measurement)."""
    empty = {"format": _FORMAT, "rates": {}, "sizes": {}}
    try:
        store = json.loads(path.read_text())
    except (OSError, ValueError):
        return empty
    if not isinstance(store, dict) or store.get("format") != _FORMAT:
        return empty
    return {**empty, **store}


def write_store(path: Path, store: dict[str, Any]) -> None:
    write_text(path, json.dumps(store, indent=1))


# ---- rendering ---------------------------------------------------------------------------------------------------

def table(rows: list[Row], spec_name: str) -> Table:
    out = Table(title=f"{spec_name}: expected work per job kind (epochs per job; images in all its jobs)")
    for column in ("stage", "model", "jobs", "epochs", "trained", "evaluated", "img/s train/eval", "device-h"):
        out.add_column(column, justify="left" if column in ("stage", "model") else "right")
    for row in rows:
        images, seconds = row.images(), row.seconds
        out.add_row(row.work.stage, row.work.model, f"{row.work.count:g}", f"{row.work.epochs:.2f}",
                    _count(images and images[0]), _count(images and images[1]),
                    row.rates(),
                    "-" if seconds is None else f"{seconds / 3600:.3f}")
    return out


def summary(rows: list[Row], device: str, spec_path: str, root: Path) -> str:
    """The total, or what is missing for one and the command that measures it."""
    missing = sorted({r.work.model for r in rows if r.seconds is None})
    if missing:
        return (f"No measured rate on {device} for: {', '.join(missing)}. The same command with --calibrate "
                f"measures each in a few seconds (it prepares the data in {root / 'data'} as a run would) and keeps "
                f"the rates in {root / CALIBRATION_FILE}.")
    seconds = sum(r.seconds for r in rows)
    per_model: dict[str, float] = {}
    for row in rows:
        per_model[row.work.model] = per_model.get(row.work.model, 0.0) + row.seconds
    models = "; ".join(f"{m} {s / 3600:.3f}" for m, s in per_model.items())
    return (f"Expected device time: {seconds / 3600:.3f} device-hours ({_duration(seconds)}) on {device} with one "
            f"worker; per model (device-hours): {models}. Rates from {root / CALIBRATION_FILE}; early stopping can "
            f"only shorten it.")


def _count(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
