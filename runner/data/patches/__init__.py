"""Users' own classification patches: a folder of class folders, a CSV manifest, or one .npz/.h5 array file.

The stages in the order data flows: `layouts` finds the items (id, label, group, predefined split) of a source,
`check` finds every problem before anything trains, `split` assigns train/valid/test without leaking a group
(and records the assignment), `load` decodes once into the cache and builds the Splits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runner.data.batches import Splits
from runner.data.patches import check, layouts, load, split
from runner.data.patches.layouts import Catalog
from runner.data.pcam import SPLITS
from runner.spec.config import DataSpec

__all__ = ["PATCH_SOURCES", "check_patches", "load_patches", "split_counts"]

PATCH_SOURCES = ("folder", "manifest", "arrays")


def check_patches(data: DataSpec) -> Catalog:
    """Every problem of the source in one DataError (files, columns, splits, sizes, class counts); writes nothing."""
    catalog = layouts.find(data)
    check.raise_problems(catalog, check.problems(catalog, data.crop))
    split.assign(catalog, data.seed, None)  # a made split that leaves a class out of a split is an error too
    return catalog


def load_patches(data: DataSpec, cache_dir: Path) -> Splits:
    """Splits of the source: decoded once into `cache_dir`/patches, split recorded in `cache_dir`/splits."""
    catalog = layouts.find(data)
    cached = load.cache_path(catalog, data.crop, cache_dir) if not catalog.problems else None
    if cached is None or not cached.is_file():
        catalog = check_patches(data)
        cached = load.cache_path(catalog, data.crop, cache_dir)
    else:  # decoded before from these very files (same sizes and mtimes): only the cheap checks again
        check.raise_problems(catalog, check.class_problems(catalog))
    images = load.cached_images(catalog, data.crop, cached)
    assignment = split.assign(catalog, data.seed, cache_dir)
    labels = catalog.labels
    rows = {s: load.select(assignment.rows(s), labels, data, s) for s in SPLITS}
    splits = {s: load.build_split(images, labels, rows[s], data.in_memory) for s in SPLITS}
    if catalog.grouped:  # for the test metrics' slide-level bootstrap
        groups = np.array([item.group for item in catalog.items], dtype=object)
        for s in SPLITS:
            splits[s].groups = groups[rows[s]]
    return Splits(splits["train"], splits["valid"], splits["test"],
                  load.describe(catalog, splits, images.shape[1], data), classes=catalog.classes,
                  split_note=assignment.note)


def split_counts(data: DataSpec) -> dict[str, int]:
    """Patches per split a job would train and evaluate on (after the caps and data.fraction), from the listing
    alone: nothing is decoded or written (the dry run's cost estimate)."""
    catalog = layouts.find(data)
    assignment = split.assign(catalog, data.seed, None)
    labels = catalog.labels
    return {s: len(load.select(assignment.rows(s), labels, data, s)) for s in SPLITS}
