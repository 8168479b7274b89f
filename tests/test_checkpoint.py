"""Checkpoints are replaced atomically and loaded safely."""
from __future__ import annotations

import os

import pytest
import torch

from runner.training import checkpoint


def test_round_trip_and_replace(tmp_path):
    path = tmp_path / "job" / "state.pt"
    assert checkpoint.load(path) is None
    checkpoint.save(path, {"epoch": 1, "w": torch.ones(3)})
    checkpoint.save(path, {"epoch": 2, "w": torch.zeros(3)})
    state = checkpoint.load(path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.zeros(3))
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]


def test_a_crash_during_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    checkpoint.save(path, {"epoch": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"epoch": 2})
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # the temporary file is gone


def test_stray_temporary_files_are_cleaned(tmp_path):
    (tmp_path / ".state-abc.tmp").write_bytes(b"half a file")
    checkpoint.save(tmp_path / "state.pt", {"epoch": 3})
    assert checkpoint.load(tmp_path / "state.pt")["epoch"] == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_checkpoint_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match=r"state\.pt.*--force"):
        checkpoint.load(path)


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "state.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(path)
