"""A full disk stops the runner with exit 5 and gives the job back whole; freeing space and rerunning finishes it.

Each test mounts its own small tmpfs (root only; skipped with the reason elsewhere), so "full" is real ENOSPC from
the kernel, not a mocked exception.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from runner import cli
from runner.training import checkpoint
from runner.data.pcam import gunzip_cached, write_h5_atomic
from runner.faults import DiskFull

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs charges whole pages
# One job, two epochs: the first checkpoint fits on the nearly full disk, the second does not.
SPEC = """
[experiment]
name = "disk-full"
seeds = [0]
[data]
train_size = 64
valid_size = 32
test_size = 32
image_size = 48
[train]
epochs = 2
batch_size = 16
[eval]
invariance = false
rotation_angles = [0, 90]
rotation_samples = 16
[[model]]
family = "cnn"
width = 8
depth = 3
"""


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of `request.param` bytes (default 4 MiB) at tmp_path/disk, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size = getattr(request, "param", 4 << 20)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({(done.stderr or done.stdout).strip()}); needs root")
    yield mount
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # something still holds a file open


def pages(n: int) -> int:
    return math.ceil(n / PAGE) * PAGE


def fill(disk: Path, leave: int) -> Path:
    """Write a filler file so that `leave` bytes stay free (real bytes: a sparse file would take no space)."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        out.write(b"\0" * max(shutil.disk_usage(disk).free - leave, 0))
    return filler


@pytest.mark.parametrize("small_disk", [1 << 20], indirect=True)
def test_a_checkpoint_that_does_not_fit_raises_disk_full_and_keeps_the_old_one(small_disk):
    path = small_disk / "job" / checkpoint.FILENAME
    checkpoint.save(path, {"w": torch.zeros(1000)})
    before = path.read_bytes()
    fill(small_disk, leave=8 * PAGE)
    big = {"w": torch.ones(100_000)}  # 400 kB: cannot fit
    folder = re.escape(str(path.parent))
    with pytest.raises(DiskFull, match=rf"^no space left in {folder} \(needed 40\d kB, \d+ kB free\); free space, then "
                                       "rerun$") as info:
        checkpoint.save(path, big)
    assert info.value.errno == 28
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [checkpoint.FILENAME]  # the partial temporary file is gone


@pytest.mark.parametrize("small_disk", [256 << 10], indirect=True)
def test_data_that_does_not_fit_raises_disk_full_and_leaves_no_partial_file(small_disk, tmp_path):
    with pytest.raises(DiskFull, match=rf"no space left in {re.escape(str(small_disk / 'data'))} \(needed 1\.0 MB, "):
        write_h5_atomic(small_disk / "data" / "x.h5", {"x": np.ones((1 << 20,), np.uint8)})
    assert list((small_disk / "data").iterdir()) == []
    src = tmp_path / "big.h5.gz"
    src.write_bytes(gzip.compress(b"\1" * (4 << 20)))
    # Before: a failed write while decompressing was reported as a damaged download.
    with pytest.raises(DiskFull, match=rf"no space left in {re.escape(str(small_disk / 'cache'))} \(needed more than "):
        gunzip_cached(src, small_disk / "cache")
    assert list((small_disk / "cache").iterdir()) == []


def final_metrics(db: Path) -> dict[str, float]:
    with sqlite3.connect(db) as con:
        return dict(con.execute("select name, value from final_metrics where name like 'test_%' or "
                                "name like 'valid_%'").fetchall())


def job_statuses(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as con:
        return con.execute("select status, attempts from jobs").fetchall()


def only_checkpoint(root: Path) -> Path:
    found = list((root / "checkpoints").rglob(checkpoint.FILENAME))
    assert len(found) == 1, found
    return found[0]


def run_runner(spec: Path, root: Path, db: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "runner", str(spec), "--root", str(root), "--db", f"sqlite:///{db}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_full_disk_mid_job_exits_5_gives_the_job_back_and_a_rerun_finishes_it(tmp_path, small_disk):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    reference = tmp_path / "reference"
    assert cli.main([str(spec), "--root", str(reference)]) == 0
    size = only_checkpoint(reference).stat().st_size
    data = sum(pages(f.stat().st_size) for f in (reference / "data").rglob("*") if f.is_file())
    # Room for the generated data, the first checkpoint and half of another: the epoch-2 checkpoint cannot be
    # written beside the epoch-1 one it would replace.
    filler = fill(small_disk, leave=data + pages(size) + size // 2)
    root, db = small_disk / "runs", tmp_path / "results.db"  # the database elsewhere: only the run root is full

    done = run_runner(spec, root, db)
    out = done.stdout + done.stderr
    assert done.returncode == 5, out  # before: 1, the job `failed` on torch's "unexpected pos" RuntimeError
    kept = only_checkpoint(root)
    named = [line for line in out.splitlines() if "no space left in" in line]
    assert len(named) == 1 and f"no space left in {kept.parent} (needed {checkpoint.human_bytes(size)}" in named[0], out
    assert job_statuses(db) == [("interrupted", 1)]
    assert checkpoint.load(kept)["progress"]["epoch"] == 1  # the last good checkpoint, whole
    assert [p.name for p in kept.parent.iterdir()] == [checkpoint.FILENAME]

    filler.unlink()
    assert cli.main([str(spec), "--root", str(root), "--db", f"sqlite:///{db}"]) == 0
    assert job_statuses(db) == [("done", 2)]
    assert final_metrics(db) == final_metrics(reference / "results.db")


@pytest.mark.parametrize("small_disk", [256 << 10], indirect=True)
def test_data_generation_on_a_full_disk_exits_5_not_failed(tmp_path, small_disk, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    db = tmp_path / "results.db"
    assert cli.main([str(spec), "--root", str(small_disk / "runs"), "--db", f"sqlite:///{db}"]) == 5
    out = capsys.readouterr().out
    named = [line for line in out.splitlines() if "no space left in" in line]
    assert len(named) == 1 and f"no space left in {small_disk / 'runs' / 'data'}" in named[0], out
    assert job_statuses(db) == [("interrupted", 1)]
    assert not [p for p in (small_disk / "runs").rglob("*") if p.is_file()]  # no partial data file left
