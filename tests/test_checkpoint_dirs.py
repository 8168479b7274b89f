"""Each experiment owns its checkpoints: the same configuration in two experiments never shares weights, --force in
one never touches the other's, and roots from before (checkpoints/<job key>/) still resume and export."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from runner import cli
from runner.data.pcam import SPLITS, file_name, write_pcam_pair
from runner.data.synthetic import generate
from runner.inference.export import trained_model
from runner.spec.identity import config_from_dict
from runner.training import checkpoint, loop

SIZES = {"train": 64, "valid": 32, "test": 32}
SPEC = """
[experiment]
name = "{name}"
seeds = [0]
[data]
{data}
train_size = 64
valid_size = 32
test_size = 32
[train]
epochs = {epochs}
batch_size = 16
[eval]
invariance = false
rotation_angles = [0]
rotation_samples = 8
[[model]]
family = "cnn"
width = 4
depth = 2
"""


def write_spec(tmp_path: Path, name: str, data: str = "", epochs: int = 1) -> Path:
    spec = tmp_path / f"{len(list(tmp_path.glob('*.toml')))}.toml"
    spec.write_text(SPEC.format(name=name, data=data, epochs=epochs))
    return spec


def pcam_folder(folder: Path, seed: int) -> Path:
    """PCam-format files of synthetic patches: data.root is not part of a job's key, so two experiments that only
    differ in their data folder have jobs with the same key and different weights."""
    for split in SPLITS:
        images, labels = generate("classification", seed, split, SIZES[split], 96)
        write_pcam_pair(folder / file_name(split, "x"), folder / file_name(split, "y"), images, labels)
    return folder


def jobs(root: Path) -> list[tuple[int, str, str, str]]:
    with sqlite3.connect(root / "results.db") as con:
        return con.execute("select j.job_id, e.name, j.key, j.config_json from jobs j join experiments e "
                           "using (experiment_id) order by j.job_id").fetchall()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["best_model"]


def model_from(path: Path, config) -> torch.nn.Module:
    model = loop.build(config)
    model.load_state_dict(weights(path))
    return model.eval()


def test_experiment_folders_are_safe_and_never_shared():
    assert checkpoint.experiment_folder("d4_grid") == "d4_grid"  # a safe name is kept as it is
    names = ["Beta run/2", "beta run/2", "beta-run-2", "../..", "", "0123456789abcdef", "tumour ε"]
    folders = [checkpoint.experiment_folder(name) for name in names]
    assert len(set(folders)) == len(names)
    assert all(f and f not in (".", "..") and "/" not in f and f == f.lower() for f in folders)
    assert folders[0].startswith("beta-run-2-") and folders[2] == "beta-run-2"
    assert folders[5] != "0123456789abcdef"  # never mistaken for a legacy job folder


def test_two_experiments_keep_their_own_weights_through_force_and_export(tmp_path):
    root = tmp_path / "runs"
    first = write_spec(tmp_path, "alpha", f'source = "pcam"\nroot = "{pcam_folder(tmp_path / "d0", 0)}"')
    second = write_spec(tmp_path, "Beta run/2", f'source = "pcam"\nroot = "{pcam_folder(tmp_path / "d1", 1)}"')
    assert cli.main([str(first), "--root", str(root)]) == 0
    assert cli.main([str(second), "--root", str(root)]) == 0
    (a_id, _, key, config_json), (_, _, b_key, _) = jobs(root)
    assert b_key == key  # the same configuration: the job key leaves the experiment and the data folder out
    a_path, b_path = (checkpoint.checkpoint_path(root, name, key) for name in ("alpha", "Beta run/2"))
    assert a_path.parent != b_path.parent and a_path.is_file() and b_path.is_file()
    # Before: the second experiment resumed from the first's finished checkpoint and never trained on its data.
    assert any(not torch.equal(a, b) for a, b in zip(weights(a_path).values(), weights(b_path).values()))

    a_bytes = a_path.read_bytes()
    assert cli.main([str(second), "--root", str(root), "--force"]) == 0
    assert a_path.read_bytes() == a_bytes  # before: --force deleted the shared folder and wrote the second's weights

    out = tmp_path / "export"
    assert cli.main(["export", "--root", str(root), "--job", str(a_id), "--out", str(out)]) == 0
    shipped = torch.export.load(str(out / "model.pt2")).module()
    config = config_from_dict(json.loads(config_json))
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, own, other = shipped(x), model_from(a_path, config)(x), model_from(b_path, config)(x)
    torch.testing.assert_close(got, own, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, other, rtol=1e-4, atol=1e-5)


def test_a_legacy_root_resumes_exports_and_survives_force(tmp_path, monkeypatch):
    root, spec = tmp_path / "runs", write_spec(tmp_path, "legacy", epochs=2)
    validations = []
    real_validate = loop.validate

    def validate(*args, **kwargs):
        validations.append(1)
        if len(validations) == 2 and interrupt:  # the epoch-1 checkpoint is written: stop during epoch 2's check
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    interrupt = True
    monkeypatch.setattr(loop, "validate", validate)
    assert cli.main([str(spec), "--root", str(root)]) == 130
    ((_, _, key, config_json),) = jobs(root)
    # Make the root look like one written before per-experiment folders: checkpoints/<job key>/state.pt.
    new = checkpoint.checkpoint_path(root, "legacy", key)
    legacy = checkpoint.legacy_path(root, key)
    new.parent.rename(legacy.parent)
    new.parent.parent.rmdir()
    legacy_bytes = legacy.read_bytes()
    config = config_from_dict(json.loads(config_json))
    # export's lookup on a root no run has synced since: the legacy checkpoint
    torch.testing.assert_close(trained_model(root, key, config).state_dict(), weights(legacy))

    interrupt, validations[:] = False, []
    assert cli.main([str(spec), "--root", str(root)]) == 0
    assert len(validations) == 1  # resumed at epoch 2 from the copied checkpoint, not restarted
    assert new.is_file() and legacy.read_bytes() == legacy_bytes  # a copy: another experiment may own the legacy file
    torch.testing.assert_close(trained_model(root, key, config).state_dict(), weights(new))

    validations[:] = []
    assert cli.main([str(spec), "--root", str(root), "--force"]) == 0
    assert len(validations) == 2  # from scratch: neither the old copy nor the legacy file was picked up again
    assert legacy.read_bytes() == legacy_bytes


@pytest.mark.parametrize("name", ["alpha", "Beta run/2"])
def test_force_empties_only_the_experiments_own_folders(tmp_path, name):
    from runner.executors.worker import forget_checkpoints

    key = "0123456789abcdef"
    mine, other = checkpoint.checkpoint_path(tmp_path, name, key), checkpoint.checkpoint_path(tmp_path, "x", key)
    for path in (mine, other, checkpoint.legacy_path(tmp_path, key)):
        checkpoint.save(path, {"w": torch.ones(2)})
    forget_checkpoints(tmp_path, name, [key])
    assert not mine.exists() and mine.parent.is_dir()
    assert other.is_file() and checkpoint.legacy_path(tmp_path, key).is_file()
    assert checkpoint.adopt_legacy(tmp_path, name, [key]) == 0  # forced: the emptied folder is not refilled
