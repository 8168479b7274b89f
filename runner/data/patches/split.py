"""Train/valid/test assignment of a classification source: predefined, or a seeded 70/15/15 split stratified by
class and grouped by slide/patient, recorded as a CSV so that every job and every rerun sees the same split.

Why scikit-learn: `StratifiedGroupKFold` solves the hard case (keep every group whole, balance class shares across
folds) and `StratifiedShuffleSplit` gives exact stratified shares when there are no groups. Their output may change
between releases; the recorded assignment does not, and a recorded one is always reused.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner.atomic import write_bytes
from runner.data.arrays import SHARES
from runner.data.errors import DataError
from runner.data.patches.layouts import Catalog, few
from runner.data.pcam import SPLITS
from runner.faults import space_for

METHOD = 1  # bump when the way splits are made changes: old records then stay with their old key
RECORD_COLUMNS = ("id", "label", "class", "group", "split")


@dataclass(frozen=True)
class Assignment:
    split_of: tuple[str, ...]  # per catalog item: train | valid | test
    note: str  # how it was split, for the report

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.split_of) == split)


def assign(catalog: Catalog, seed: int, cache_dir: Path | None) -> Assignment:
    """The catalog's split: predefined, else the recorded one under `cache_dir`, else made now (and recorded).

    `cache_dir` None makes the split without recording it (the check before a run writes nothing)."""
    if catalog.predefined:
        note = f"predefined ({catalog.predefined})" + _leaks(catalog)
        return Assignment(tuple(item.split for item in catalog.items), note)
    path = record_path(catalog, seed, cache_dir) if cache_dir is not None else None
    split_of = read_record(path, catalog) if path is not None and path.is_file() else None
    if split_of is None:
        split_of = make_split(catalog.labels, _groups(catalog), seed)
        raise_uncovered(catalog, split_of)
        if path is not None:
            write_record(path, catalog, split_of)
    return Assignment(split_of, _note(catalog, seed, path))


def _leaks(catalog: Catalog) -> str:
    """A warning for the report when the user's own splits share a group (the runner's never do)."""
    splits_of: dict[str, set[str]] = {}
    for item in catalog.items:
        if item.group:
            splits_of.setdefault(item.group, set()).add(item.split)
    shared = sorted(g for g, splits in splits_of.items() if len(splits) > 1)
    return f"; warning: {len(shared)} group(s) in more than one split ({few(shared, 3)})" if shared else ""


def _groups(catalog: Catalog) -> np.ndarray | None:
    return np.array([item.group for item in catalog.items]) if catalog.grouped else None


def _note(catalog: Catalog, seed: int, path: Path | None) -> str:
    by = f", grouped by group ({len({i.group for i in catalog.items})} groups)" if catalog.grouped else ""
    shares = "/".join(f"{round(100 * s)}" for s in SHARES)
    record = f"; assignment sha256 {sha256(path)[:12]} ({path})" if path is not None else ""
    return f"stratified by label{by}, seed {seed}, {shares}{record}"


# ---- making a split ----------------------------------------------------------------------------------------------

def make_split(labels: np.ndarray, groups: np.ndarray | None, seed: int) -> tuple[str, ...]:
    """Per item, its split: ~70/15/15, stratified by label, no group in two splits; a pure function of its input."""
    rows = np.arange(len(labels))
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits": checked after
        warnings.simplefilter("ignore", UserWarning)
        test = _held_out(rows, labels, groups, SHARES[2], seed)
        rest = np.setdiff1d(rows, test)
        valid = rest[_held_out(np.arange(len(rest)), labels[rest], None if groups is None else groups[rest],
                               SHARES[1] / (1 - SHARES[2]), seed)]
    split_of = np.full(len(labels), "train", dtype=object)
    split_of[valid], split_of[test] = "valid", "test"
    return tuple(split_of.tolist())


def _held_out(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, share: float,
              seed: int) -> np.ndarray:
    """Positions of a held-out `share` of `rows`: a stratified shuffle, or one whole-group fold when grouped."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit
    if groups is None:
        try:
            return next(StratifiedShuffleSplit(1, test_size=share, random_state=seed).split(rows, labels))[1]
        except ValueError as err:
            raise DataError(f"cannot make a stratified 70/15/15 split ({err}); add images to the small classes "
                            f"or give predefined splits") from err
    k = max(2, min(round(1 / share), len(np.unique(groups))))
    folds = [fold for _, fold in StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(rows, labels, groups)]
    # Of the k folds, one with every class (then the nearest to the wanted size): a class in few groups may miss
    # some folds, and a held-out split without it could not be evaluated.
    every = [fold for fold in folds if len(np.unique(labels[fold])) == len(np.unique(labels))]
    return min(every or folds, key=lambda fold: abs(len(fold) - share * len(rows)))


def raise_uncovered(catalog: Catalog, split_of: tuple[str, ...]) -> None:
    """DataError naming each class that the made split left out of a split, with its counts per split."""
    counts = {(s, item.label): 0 for s in SPLITS for item in catalog.items}
    for split, item in zip(split_of, catalog.items):
        counts[split, item.label] += 1
    short = [f"class {name!r} ({', '.join(f'{s} {counts.get((s, k), 0)}' for s in SPLITS)})"
             for k, name in enumerate(catalog.classes) if min(counts.get((s, k), 0) for s in SPLITS) == 0]
    if short:
        raise DataError(f"data.source = \"{catalog.source}\", {catalog.key} = {catalog.location}: the 70/15/15 "
                        f"split leaves a class out of a split: {few(short)}; add images (from more groups) to "
                        f"these classes, change data.seed, or give predefined splits")


# ---- the record --------------------------------------------------------------------------------------------------

def record_path(catalog: Catalog, seed: int, cache_dir: Path) -> Path:
    """Keyed on the items (ids, labels, groups), the seed and the method: the same set always finds its record."""
    content = [METHOD, list(SHARES), seed, catalog.classes,
               [(item.id, item.label, item.group) for item in catalog.items]]
    key = hashlib.sha256(json.dumps(content).encode()).hexdigest()[:12]
    return cache_dir / "splits" / f"{catalog.source}-{catalog.location.stem}-{key}.csv"


def record_text(catalog: Catalog, split_of: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RECORD_COLUMNS)
    for item, split in zip(catalog.items, split_of):
        writer.writerow((item.id, item.label, catalog.classes[item.label], item.group, split))
    return out.getvalue()


def write_record(path: Path, catalog: Catalog, split_of: tuple[str, ...]) -> None:
    """Temp file + rename: a crash never leaves half a record, and concurrent writers write the same bytes."""
    data = record_text(catalog, split_of).encode()
    with space_for(path.parent, len(data)):
        write_bytes(path, data)


def read_record(path: Path, catalog: Catalog) -> tuple[str, ...] | None:
    """The recorded split when it lists exactly the catalog's items; None (make it again) otherwise."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    ids = [row.get("id") for row in rows]
    split_of = tuple(row.get("split") or "" for row in rows)
    if ids != [item.id for item in catalog.items] or not set(split_of) <= set(SPLITS):
        return None
    return split_of


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
