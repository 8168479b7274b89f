"""export: verified, self-describing folders; the loader needs neither escnn nor the training code."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import reports
from runner.spec.config import JobConfig, ModelSpec
from runner.inference.artifact import ArtifactError, load, read_meta, transform
from runner.inference.export import VerificationError, staged_folder, symmetry_of
from runner.inference.selection import best_job_id
from tests.inference.conftest import run_cli


def test_best_export_describes_the_selected_job(trained):
    meta = read_meta(trained.cnn)
    jobs = reports.load(trained.db, experiment="tiny-cls")
    best = jobs.sort_values("valid_auc", ascending=False).iloc[0]
    assert meta["job"]["key"] == best["key"] and meta["family"] == best["family"]
    assert meta["test_metrics"]["test_auc"] == pytest.approx(best["test_auc"])
    assert meta["task"] == "classification" and meta["class_names"] == ["normal", "tumour"]
    assert meta["input"]["size"] == [96, 96] and meta["microns_per_pixel"] == 0.972
    assert meta["normalisation"] == {"scale": 1 / 255, "mean": 0.5, "std": 0.25, "formula": "(x / 255 - 0.5) / 0.25"}
    assert meta["config"]["model"]["width"] == 8 and meta["torch_version"] == torch.__version__
    check = meta["verification"]
    assert check["patches"] == 16
    assert check["pt2_max_relative_difference"] <= 1e-5 and check["onnx_max_relative_difference"] <= 1e-5
    assert sorted(p.name for p in trained.cnn.iterdir()) == ["model.json", "model.onnx", "model.pt2"]


def test_gcnn_export_keeps_its_d4_invariance(trained):
    model = load(trained.gcnn)
    symmetry = model.meta["symmetry"]
    assert model.meta["group"] == "D4" and symmetry["own_group_error"] <= 1e-4
    assert len(symmetry["exact_elements"]) == 8
    images = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    p = model.probabilities(images)
    for k, flip in ((1, False), (3, True)):
        np.testing.assert_allclose(model.probabilities(np.ascontiguousarray(transform(images, k, flip))), p,
                                   rtol=0, atol=1e-5)


def test_plain_cnn_is_not_invariant_and_claiming_d4_fails_verification(trained):
    meta = read_meta(trained.cnn)
    assert max(meta["symmetry"]["grid_errors"].values()) > 1e-3
    assert meta["symmetry"]["exact_elements"] == ["rot0"]
    plain = torch.export.load(str(trained.cnn / "model.pt2")).module()
    claimed = JobConfig(experiment="x", task="classification", seed=0, model=ModelSpec(family="gcnn", group="D4"))
    with pytest.raises(VerificationError, match="lost its D4 symmetry"):
        symmetry_of(plain, claimed, torch.randn(2, 3, 96, 96))


LOADER_WITHOUT_TRAINING_CODE = """
import sys
for name in ("escnn", "equiv", "runner.training", "runner.data", "runner.store", "sqlalchemy", "reports"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
from runner.inference.artifact import load
images = np.load(sys.argv[2])
for backend in ("onnx", "pt2"):
    print(*load(sys.argv[1], backend=backend).probabilities(images).tolist())
"""


def test_loader_needs_neither_escnn_nor_training_code(trained, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    result = subprocess.run([sys.executable, "-c", LOADER_WITHOUT_TRAINING_CODE, str(trained.gcnn),
                             str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # The reference: the trained G-CNN itself, rebuilt from its checkpoint with escnn.
    from runner.spec.identity import config_from_dict
    from runner.inference.export import trained_model

    meta = read_meta(trained.gcnn)
    model = trained_model(trained.root, meta["job"]["key"], config_from_dict(meta["config"]))
    with torch.no_grad():
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        expected = model(x).softmax(1)[:, 1].numpy()
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:  # onnx, then pt2
        np.testing.assert_allclose([float(v) for v in line.split()], expected, rtol=1e-4, atol=1e-6)


def test_another_format_version_is_refused(trained, tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    for name in ("model.onnx", "model.pt2"):
        (folder / name).write_bytes((trained.cnn / name).read_bytes())
    meta = read_meta(trained.cnn) | {"format_version": 99}
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format_version 99; this loader reads version 1"):
        load(folder)
    assert run_cli("predict", folder, trained.cnn, "--out", tmp_path / "p.csv") == 2
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--job", "1", "--experiment", "tiny-cls", "--best"], "either --job"),
    (["--best"], "--best needs --experiment"),
    (["--job", "1", "--family", "cnn"], "with --best"),
    (["--job", "zzz"], "matches none"),
    (["--experiment", "tiny-cls", "--best", "--group", "C8"], "available (family/group): cnn/trivial, gcnn/D4"),
])
def test_bad_export_requests_exit_2_and_write_nothing(trained, tmp_path, capsys, arguments, message):
    assert run_cli("export", "--root", trained.root, *arguments, "--out", tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_out_folder_is_not_touched(trained, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert run_cli("export", "--root", trained.root, "--job", "1", "--out", tmp_path / "out") == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_selection_prefers_final_evaluation_jobs(trained):
    jobs = reports.load(trained.db, experiment="tiny-cls")
    winner = best_job_id(jobs, "classification")
    assert winner == int(jobs.sort_values("valid_auc", ascending=False)["job_id"].iloc[0])
    other = int(jobs.loc[jobs["job_id"] != winner, "job_id"].iloc[0])
    roles = jobs.assign(role=np.where(jobs["job_id"] == other, "final", "search"))
    assert best_job_id(roles, "classification") == other
    assert best_job_id(jobs, "classification", group="D4") == int(jobs.loc[jobs["group"] == "D4", "job_id"].iloc[0])


def test_a_failed_export_leaves_nothing_behind(tmp_path):
    with pytest.raises(VerificationError):
        with staged_folder(tmp_path / "out") as staging:
            (staging / "model.onnx").write_bytes(b"half")
            raise VerificationError("outputs differ")
    assert list(tmp_path.iterdir()) == []
    with staged_folder(tmp_path / "out") as staging:
        (staging / "model.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "model.json").exists()


def test_the_exported_seed_follows_the_experiments_metric(trained):
    """Two seeds of one configuration: by AUC one wins, by log loss (eval.metric = "nll", lowest best) the other."""
    jobs = reports.load(trained.db, experiment="tiny-cls")
    first = jobs[jobs["family"] == "cnn"].iloc[[0]]
    second = first.assign(job_id=first["job_id"] + 1000, seed=first["seed"] + 1,
                          valid_auc=first["valid_auc"] + 0.01, valid_nll=first["valid_nll"] + 0.1)
    two = pd.concat([first, second], ignore_index=True)
    assert best_job_id(two, "classification") == int(second["job_id"].iloc[0])
    assert best_job_id(two.assign(**{"eval.metric": "nll"}), "classification") == int(first["job_id"].iloc[0])
