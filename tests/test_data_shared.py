"""The shared in-memory path: a split mapped from one .npy copy per node gives the same batches and metrics as the
private copy it replaces, and its one-time conversion is safe against a neighbour, a kill and a full disk."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import namedtuple
from pathlib import Path

import h5py
import numpy as np
import pytest

from runner import cli
from runner.data import DataError, iterate_batches, load_splits, shared
from runner.data.batches import ArraySplit, MappedSplit
from runner.faults import DiskFull
from tests.test_data_pcam import spec, write_pcam

FORK = multiprocessing.get_context("fork")  # children inherit the test's monkeypatches


@pytest.fixture
def mapped(monkeypatch):
    """Every in-memory split mapped, however small."""
    monkeypatch.setattr(shared, "PRIVATE_MAX_BYTES", 0)


def private_and_mapped(monkeypatch, tmp_path: Path, **kw):
    """The same folder loaded through the private copy, then through the mapped one."""
    data_spec = spec(tmp_path / "pcam", in_memory=True, **kw)
    monkeypatch.setattr(shared, "PRIVATE_MAX_BYTES", 1 << 60)
    old = load_splits("classification", data_spec, tmp_path / "cache")
    monkeypatch.setattr(shared, "PRIVATE_MAX_BYTES", 0)
    new = load_splits("classification", data_spec, tmp_path / "cache")
    return old, new


@pytest.mark.parametrize("subset", [{}, {"train_size": 30, "valid_size": 9, "fraction": 0.5}])
def test_mapped_splits_give_the_private_copys_batches_bit_for_bit(tmp_path, monkeypatch, subset):
    write_pcam(tmp_path / "pcam")
    old, new = private_and_mapped(monkeypatch, tmp_path, **subset)
    for name in ("train", "valid", "test"):
        a, b = getattr(old, name), getattr(new, name)
        assert isinstance(a, ArraySplit) and isinstance(b, MappedSplit)
        assert np.array_equal(a.labels, b.labels)
        for shuffle in (True, False):
            for (xa, ya), (xb, yb) in zip(iterate_batches(a, 7, shuffle, seed=3, epoch=1),
                                          iterate_batches(b, 7, shuffle, seed=3, epoch=1), strict=True):
                assert xa.dtype == xb.dtype and ya.dtype == yb.dtype
                assert xa.equal(xb) and ya.equal(yb)
    assert len(sorted((tmp_path / "cache").rglob("*.npy"))) == 3  # one copy per split's x, labels stay in memory
    assert "mapped and shared" in new.description


def test_a_second_load_reuses_the_copy(tmp_path, mapped):
    write_pcam(tmp_path / "pcam")
    load_splits("classification", spec(tmp_path / "pcam"), tmp_path / "cache")
    copies = sorted((tmp_path / "cache").rglob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in copies]
    load_splits("classification", spec(tmp_path / "pcam"), tmp_path / "cache")
    assert [p.stat().st_mtime_ns for p in copies] == stamps
    assert not list((tmp_path / "cache").rglob(".*"))  # no temp or lock left


def test_a_mapped_split_pickles_as_its_path(tmp_path, mapped):
    data = write_pcam(tmp_path / "pcam")
    train = load_splits("classification", spec(tmp_path / "pcam"), tmp_path / "cache").train
    blob = pickle.dumps(train)
    assert len(blob) < train.images.nbytes / 4
    x, y = pickle.loads(blob).get_batch(np.array([5, 1]))
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), data["train"][0][[5, 1]])
    assert y.tolist() == data["train"][1][[5, 1]].tolist()


def test_a_copy_that_does_not_match_its_source_is_named(tmp_path, mapped):
    write_pcam(tmp_path / "pcam")
    load_splits("classification", spec(tmp_path / "pcam"), tmp_path / "cache")
    copy = next((tmp_path / "cache").rglob("*train_x*.npy"))
    np.save(copy, np.zeros((3, 96, 96, 3), np.uint8))
    with pytest.raises(DataError, match=f"{copy.name}: cached copy has shape .*delete it"):
        load_splits("classification", spec(tmp_path / "pcam"), tmp_path / "cache")


# ---- end to end --------------------------------------------------------------------------------------------------

TINY_PCAM = """
[experiment]
name = "shared"
seeds = [0]
[data]
source = "pcam"
root = "{root}"
train_size = 0
valid_size = 0
test_size = 0
[train]
epochs = 2
batch_size = 8
[augment]
geometric = "d4"
[eval]
rotation_angles = [0, 90]
rotation_samples = 8
[[model]]
family = "cnn"
width = 4
depth = 2
"""


def run_metrics(tmp_path: Path, name: str) -> dict[str, float]:
    spec_file = tmp_path / f"{name}.toml"
    spec_file.write_text(TINY_PCAM.format(root=tmp_path / "pcam"))
    assert cli.main([str(spec_file), "--root", str(tmp_path / name)]) == 0
    with sqlite3.connect(tmp_path / name / "results.db") as con:
        return dict(con.execute("select name, value from final_metrics").fetchall())


def test_a_tiny_run_has_identical_metrics_either_way(tmp_path, monkeypatch):
    write_pcam(tmp_path / "pcam")
    monkeypatch.setattr(shared, "PRIVATE_MAX_BYTES", 1 << 60)
    old = run_metrics(tmp_path, "private")
    monkeypatch.setattr(shared, "PRIVATE_MAX_BYTES", 0)
    new = run_metrics(tmp_path, "mapped")
    assert list((tmp_path / "mapped" / "data" / "pcam").glob("*.npy"))  # the run did take the mapped path
    timing = {k for k in old if any(word in k for word in ("per_s", "seconds", "memory"))}  # the machine's, not the data's
    assert old.keys() == new.keys() and len(old) > 3
    assert {k: v for k, v in old.items() if k not in timing} == {k: v for k, v in new.items() if k not in timing}


# ---- the one-time conversion -------------------------------------------------------------------------------------

def write_source(path: Path, rows: int = 64) -> np.ndarray:
    x = np.random.default_rng(1).integers(0, 256, (rows, 8, 8, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(16, 8, 8, 3))
    return x


def slow_copies(monkeypatch, seconds: float, log: Path | None = None) -> None:
    """Make each conversion take a while (one row per block, a pause each) and log which process converted."""
    copy = shared._copy_rows

    def slow(dataset, out, report):
        if log is not None:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
        def paused(done):
            time.sleep(seconds)
        copy(dataset, out, paused)
    monkeypatch.setattr(shared, "BLOCK_ROWS", 1)
    monkeypatch.setattr(shared, "_copy_rows", slow)


def convert_and_read(src: Path, cache: Path, out: Path) -> None:
    array = shared.mapped_array(src, "x", cache)
    np.save(out, np.asarray(array))


def test_two_processes_converting_at_once_make_one_file_and_both_read_it(tmp_path, monkeypatch):
    x = write_source(tmp_path / "src.h5")
    log = tmp_path / "converted"
    slow_copies(monkeypatch, 0.005, log)  # ~0.3 s: the second process arrives mid-conversion
    children = [FORK.Process(target=convert_and_read, args=(tmp_path / "src.h5", tmp_path / "cache",
                                                          tmp_path / f"read{i}.npy")) for i in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert len(log.read_text().split()) == 1  # exactly one converted, the other waited
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npy"]  # no temp, no lock
    for i in range(2):
        assert np.array_equal(np.load(tmp_path / f"read{i}.npy"), x)


def test_an_interrupted_conversion_leaves_nothing_at_the_final_name(tmp_path, monkeypatch):
    write_source(tmp_path / "src.h5")
    copy = shared._copy_rows

    def interrupted(dataset, out, report):
        out.write(b"\0" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(shared, "_copy_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        shared.ensure_npy(tmp_path / "src.h5", "x", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(shared, "_copy_rows", copy)
    assert shared.ensure_npy(tmp_path / "src.h5", "x", tmp_path / "cache").is_file()


def test_a_killed_converter_leaves_only_a_temp_which_the_next_one_removes(tmp_path, monkeypatch):
    x = write_source(tmp_path / "src.h5")
    dest = shared.npy_path(tmp_path / "src.h5", "x", tmp_path / "cache")
    slow_copies(monkeypatch, 0.5)
    child = FORK.Process(target=shared.ensure_npy, args=(tmp_path / "src.h5", "x", tmp_path / "cache"))
    child.start()
    deadline = time.monotonic() + 20
    while not list((tmp_path / "cache").glob("*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not dest.exists() and len(list((tmp_path / "cache").glob("*.tmp"))) == 1
    monkeypatch.undo()
    assert np.array_equal(shared.mapped_array(tmp_path / "src.h5", "x", tmp_path / "cache"), x)
    assert not list((tmp_path / "cache").glob(".*"))  # the dead converter's temp is gone


Usage = namedtuple("Usage", "total used free")


def test_too_little_space_is_disk_full_before_writing(tmp_path, monkeypatch):
    write_source(tmp_path / "src.h5")
    monkeypatch.setattr(shared.shutil, "disk_usage", lambda path: Usage(1 << 30, (1 << 30) - 100, 100))
    with pytest.raises(DiskFull, match="no space left in .*cache.*needed"):
        shared.ensure_npy(tmp_path / "src.h5", "x", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped with the reason elsewhere): a real ENOSPC from the kernel."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({(done.stderr or done.stdout).strip()}); needs root")
    yield mount
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_that_fills_during_conversion_gives_disk_full_and_no_file(tmp_path, small_disk, monkeypatch):
    write_source(tmp_path / "src.h5", rows=8192)  # 1.5 MiB of rows for a 1 MiB disk
    real = shutil.disk_usage
    # The check before writing is fooled (another writer filling the disk meanwhile): the write itself fails.
    monkeypatch.setattr(shared.shutil, "disk_usage", lambda path: Usage(1 << 40, 0, 1 << 40))
    with pytest.raises(DiskFull, match="no space left in"):
        shared.ensure_npy(tmp_path / "src.h5", "x", small_disk / "cache")
    assert list((small_disk / "cache").iterdir()) == []
    assert real(small_disk).used < 64 << 10  # the partial temp was removed
