"""Three classes through export, predict (patches, TTA, slides) and serve; binary models keep their columns.

The jobs are registered in a results database as a runner records them (claimed, finished with test metrics) and
given a checkpoint with the keys the training loop writes, including `classes` and `image_size`: a plain CNN and a
small D4 G-CNN, 3 outputs each, on 64x64 patches of the user's own folder data (which export must not read).
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

import equiv
from equiv.checks import smooth_images
from runner.inference.artifact import D4_ELEMENTS, load, read_meta, transform
from runner.inference.predict import probability_columns
from runner.inference.serve import create_app
from runner.spec.config import DataSpec, JobConfig, ModelSpec, TrainSpec
from runner.spec.identity import job_key
from runner.store import Database
from runner.training import checkpoint
from tests.inference.conftest import run_cli
from tests.inference.slide_fixtures import write_slide

CLASSES = ["adipose", "stroma (loose)", "tumour"]
COLUMNS = ["p_adipose", "p_stroma_loose", "p_tumour"]
SIZE = 64
WORKER = "test-worker"
MODELS = {"cnn": ModelSpec(family="cnn", width=4, depth=2, kernel_size=3),
          "gcnn": ModelSpec(family="gcnn", group="D4", width=4, depth=2, kernel_size=3)}


@dataclass(frozen=True)
class ThreeClass:
    root: Path
    cnn: Path
    gcnn: Path
    networks: dict[str, torch.nn.Module]  # the trained networks the checkpoints hold, in eval mode


def network(spec: ModelSpec, outputs: int) -> torch.nn.Module:
    return equiv.build_model(spec.family, spec.group, 3, outputs, width=spec.width, depth=spec.depth,
                             kernel_size=spec.kernel_size, dropout=spec.dropout, match=spec.match,
                             max_frequency=spec.max_frequency, pool=spec.pool)


def trained_state(config: JobConfig) -> tuple[torch.nn.Module, dict]:
    """A few optimiser steps on random patches, and the checkpoint dict the training loop's `save` writes."""
    torch.manual_seed(0)
    model = network(config.model, len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    model.train()
    for step in range(4):
        optimizer.zero_grad()
        F.cross_entropy(model(smooth_images(6, SIZE, seed=step)), torch.arange(6) % 3).backward()
        optimizer.step()
    model.eval()  # as after the validation pass whose weights the loop keeps as the best
    state = {"config": config.to_dict(), "model": model.state_dict(), "best_model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(),
             "rng": {"torch": torch.get_rng_state(), "augment": torch.Generator().manual_seed(1).get_state(),
                     "cuda": []},
             "progress": {"epoch": 1, "batch": 0, "loss_sum": 0.0, "seen": 0, "best_metric": 0.5, "best_epoch": 0,
                          "bad_epochs": 0, "train_seconds": 1.0, "images_trained": 24, "history": []},
             "classes": CLASSES, "image_size": SIZE}
    return model, state


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> ThreeClass:
    base = tmp_path_factory.mktemp("three")
    root = base / "runs"
    db = Database(f"sqlite:///{root / 'results.db'}")
    data = DataSpec(source="folder", root=str(base / "gone"))  # export must not need the user's files
    networks = {}
    for name, spec in MODELS.items():
        config = JobConfig(experiment="tri", task="classification", seed=0, data=data, model=spec,
                           train=TrainSpec(epochs=1))
        key = job_key(config)
        networks[name], state = trained_state(config)
        checkpoint.save(checkpoint.checkpoint_path(root, config.experiment, key), state)
        experiment_id, _ = db.sync_experiment("tri", "classification", "tri.toml", "", [(key, name, config.to_dict())])
        job = db.claim(experiment_id, [key], WORKER)
        db.finish(job.job_id, WORKER, {"test_accuracy": 0.5}, rotation=[], artifacts={},
                  params=equiv.count_params(networks[name]))
        assert run_cli("export", "--root", root, "--job", key[:8], "--out", base / name) == 0
    db.engine.dispose()
    return ThreeClass(root, base / "cnn", base / "gcnn", networks)


def patches(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(90, 230, (count, 1, 1, 3))
    return (base + rng.integers(-60, 60, (count, SIZE, SIZE, 3))).clip(0, 255).astype(np.uint8)


def reference(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """The trained network's own softmax on uint8 patches, normalised as in training."""
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        return model(x).softmax(1).double().numpy()


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- export ----------------------------------------------------------------------------------------------------

def test_export_describes_three_classes_at_the_checkpoints_size(three):
    for folder in (three.cnn, three.gcnn):
        meta = read_meta(folder)
        assert meta["class_names"] == CLASSES and meta["input"]["size"] == [SIZE, SIZE]
        assert meta["output"] == "logits (N, 3): softmax gives P(class) in class_names order"
        check = meta["verification"]
        assert check["pt2_max_relative_difference"] <= 1e-5 and check["onnx_max_relative_difference"] <= 1e-5
        assert check["inputs"] == ("16 seeded random tissue-like images (equiv.checks.smooth_images, seed 0) of "
                                   "64x64 pixels: data.source = 'folder': the user's own files are not read at export")
    gcnn = read_meta(three.gcnn)["symmetry"]
    assert gcnn["own_group_error"] <= 1e-5 and len(gcnn["exact_elements"]) == 8
    assert read_meta(three.cnn)["symmetry"]["exact_elements"] == ["rot0"]


def test_artifact_probabilities_are_the_trained_networks_softmax(three):
    images = patches(5)
    for name, folder in (("cnn", three.cnn), ("gcnn", three.gcnn)):
        expected = reference(three.networks[name], images)
        for backend in ("onnx", "pt2"):
            model = load(folder, backend=backend)
            p = model.probabilities(images)
            assert p.shape == (5, 3) and not model.binary
            np.testing.assert_allclose(p, expected, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
            np.testing.assert_array_equal(model.class_probabilities(images), p)
    assert np.ptp(reference(three.networks["cnn"], images).argmax(1)) > 0  # not one class for everything


def test_a_checkpoint_naming_one_class_is_refused(three, tmp_path, capsys):
    from runner.inference.export import load_trained, ExportError
    from runner.spec.identity import config_from_dict

    meta = read_meta(three.cnn)
    config = config_from_dict(meta["config"])
    path = checkpoint.checkpoint_path(tmp_path, config.experiment, meta["job"]["key"])
    state = checkpoint.load(checkpoint.checkpoint_path(three.root, config.experiment, meta["job"]["key"]))
    checkpoint.save(path, state | {"classes": ["only"]})
    with pytest.raises(ExportError, match=r"names the classes \['only'\]: a classifier needs two or more"):
        load_trained(tmp_path, meta["job"]["key"], config)


# ---- predict ---------------------------------------------------------------------------------------------------

def test_predict_writes_one_column_per_class_and_the_argmax(three, tmp_path):
    images = patches(7, seed=1)
    np.savez(tmp_path / "x.npz", x=images)
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    assert run_cli("predict", three.cnn, tmp_path / "x.npz", tmp_path / "a.png", "--out", tmp_path / "p.csv") == 0
    rows = read_rows(tmp_path / "p.csv")
    assert list(rows[0]) == ["source", "index", *COLUMNS, "label"]
    p = np.array([[float(r[c]) for c in COLUMNS] for r in rows])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=3e-6)  # six decimals each
    expected = reference(three.networks["cnn"], np.concatenate([images, images[:1]]))
    np.testing.assert_allclose(p, expected, atol=1e-5)
    assert [r["label"] for r in rows] == [CLASSES[k] for k in expected.argmax(1)]


def test_tta_averages_the_class_probabilities(three, tmp_path, capsys):
    images = patches(4, seed=2)
    np.savez(tmp_path / "x.npz", x=images)
    assert run_cli("predict", three.cnn, tmp_path / "x.npz", "--tta", "d4", "--out", tmp_path / "p.csv") == 0
    model = load(three.cnn)
    expected = np.mean([model.class_probabilities(np.ascontiguousarray(transform(images, k, f)))
                        for k, f in D4_ELEMENTS], axis=0)
    rows = read_rows(tmp_path / "p.csv")
    np.testing.assert_allclose([[float(r[c]) for c in COLUMNS] for r in rows], expected, atol=1e-6)
    assert [r["label"] for r in rows] == [CLASSES[k] for k in expected.argmax(1)]
    assert np.abs(expected - model.class_probabilities(images)).max() > 1e-4  # so the averaging did something
    assert run_cli("predict", three.gcnn, tmp_path / "x.npz", "--tta", "d4", "--out", tmp_path / "g.csv") == 0
    assert "--tta d4 skipped: the model is invariant to all eight rot90/flips" in capsys.readouterr().out


def test_column_names_are_safe_and_unique():
    assert probability_columns(["normal", "tumour"]) == ["p_tumour"]
    assert probability_columns(CLASSES) == COLUMNS
    assert probability_columns(["a,b", "A b", "", "x\ny", "tumour", "Tumour"]) == [
        "p_a_b", "p_A_b_2", "p_class2", "p_x_y", "p_tumour", "p_Tumour_2"]


# ---- serve -----------------------------------------------------------------------------------------------------

def test_serve_answers_class_probabilities_and_the_label(three, tmp_path):
    images = patches(3, seed=3)
    for index, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"p{index}.png")
    assert run_cli("predict", three.cnn, tmp_path, "--out", tmp_path / "p.csv") == 0
    expected = {Path(r["source"]).name: r for r in read_rows(tmp_path / "p.csv")}
    client = TestClient(create_app(three.cnn))
    response = client.post("/predict", files=[("files", (f"p{i}.png", png(image), "image/png"))
                                              for i, image in enumerate(images)])
    assert response.status_code == 200
    for prediction in response.json()["predictions"]:
        assert list(prediction) == ["file", "label", "probabilities"]
        assert list(prediction["probabilities"]) == CLASSES
        row = expected[prediction["file"]]
        assert prediction["label"] == row["label"]
        for name, column in zip(CLASSES, COLUMNS):
            assert abs(prediction["probabilities"][name] - float(row[column])) <= 5e-7  # the CSV's rounding
        assert math.isclose(sum(prediction["probabilities"].values()), 1.0, abs_tol=1e-9)


def test_openapi_names_the_models_classes(three, trained):
    schema = TestClient(create_app(three.cnn)).get("/openapi.json").json()["components"]["schemas"]
    item = schema["ClassPrediction"]
    assert list(item["properties"]) == ["file", "label", "probabilities"]
    assert item["properties"]["label"]["enum"] == CLASSES
    assert "P(class) for adipose, stroma (loose), tumour" in item["properties"]["probabilities"]["description"]
    binary = TestClient(create_app(trained.cnn)).get("/openapi.json").json()["components"]["schemas"]
    assert list(binary["ClassPrediction"]["properties"]) == ["file", "p_tumour", "label", "probabilities"]
    assert binary["ClassPrediction"]["properties"]["label"]["enum"] == ["normal", "tumour"]


def test_binary_answers_keep_p_tumour_and_add_the_class_dictionary(trained):
    image = patches(1)[0]
    big = np.zeros((96, 96, 3), np.uint8)
    big[16:80, 16:80] = image
    prediction = TestClient(create_app(trained.cnn)).post(
        "/predict", files=[("files", ("a.png", png(big), "image/png"))]).json()["predictions"][0]
    assert list(prediction) == ["file", "p_tumour", "label", "probabilities"]
    assert prediction["probabilities"]["tumour"] == prediction["p_tumour"]
    assert prediction["probabilities"]["normal"] == pytest.approx(1 - prediction["p_tumour"], abs=1e-12)
    assert prediction["label"] == ("tumour" if prediction["p_tumour"] >= 0.5 else "normal")


# ---- slides ----------------------------------------------------------------------------------------------------

def test_a_slide_gets_every_class_and_no_heatmap(three, tmp_path, capsys):
    slide = write_slide(tmp_path / "s.tif", rows=6, cols=6)
    model = tmp_path / "model"  # own data has no known scale: the user states it in model.json
    shutil.copytree(three.cnn, model)
    (model / "model.json").write_text(json.dumps(read_meta(three.cnn) | {"microns_per_pixel": 0.972}))
    out = tmp_path / "heat"
    assert run_cli("predict", model, slide.path, "--wsi", "--out", out) == 0
    rows = read_rows(out / "tiles.csv")
    assert rows and list(rows[0]) == ["x", "y", "size", "tissue", *COLUMNS, "label"]
    p = np.array([[float(r[c]) for c in COLUMNS] for r in rows])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=3e-6)
    assert [r["label"] for r in rows] == [CLASSES[k] for k in p.argmax(1)]
    assert not (out / "heatmap.png").exists()
    features = json.loads((out / "tiles.geojson").read_text())["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == [
        {"tumour": "Tumor"}.get(r["label"], r["label"]) for r in rows]
    assert set(features[0]["properties"]["measurements"]) == {*COLUMNS, "tissue"}
    summary = capsys.readouterr().out
    assert "no heatmap.png: a 3-class model has no single probability to map" in summary
    counts = {name: sum(r["label"] == name for r in rows) for name in CLASSES}
    assert "predicted " + ", ".join(f"{name} {n}" for name, n in counts.items()) in summary


# ---- the real training loop, end to end -------------------------------------------------------------------------

OWN_SPEC = """
[experiment]
name = "tri-own"
task = "classification"
seeds = [0]
[data]
source = "manifest"
path = "manifest.csv"
[train]
epochs = 1
batch_size = 8
[eval]
rotation_angles = [0]
rotation_samples = 4
[[model]]
family = "gcnn"
group = "D4"
width = 2
depth = 2
kernel_size = 3
"""
OWN_COLOURS = {"adipose": (235, 225, 225), "stroma": (220, 120, 170), "tumour": (110, 60, 150)}


def test_a_job_trained_on_own_three_class_patches_exports_predicts_and_serves(tmp_path, monkeypatch):
    """41x41 patches (odd: the pooling's other window) of three classes listed in a manifest, through the CLI."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for name, colour in OWN_COLOURS.items():
        (tmp_path / name).mkdir()
        for i in range(8):
            image = (np.array(colour) + rng.integers(-30, 30, (41, 41, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / name / f"{i}.png")
            lines.append(f"{name}/{i}.png,{name}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "spec.toml").write_text(OWN_SPEC)
    assert run_cli("spec.toml", "--root", "runs") == 0
    assert run_cli("export", "--root", "runs", "--experiment", "tri-own", "--best", "--out", "exported") == 0
    meta = read_meta(tmp_path / "exported")
    assert meta["class_names"] == list(OWN_COLOURS) and meta["input"]["size"] == [41, 41]
    assert meta["verification"]["inputs"].endswith("data.source = 'manifest': the user's own files are not read "
                                                   "at export")
    assert meta["symmetry"]["own_group_error"] <= 1e-5
    assert run_cli("predict", "exported", "adipose", "stroma", "tumour", "--out", "p.csv") == 0
    rows = read_rows(tmp_path / "p.csv")
    assert len(rows) == 24 and list(rows[0]) == ["source", "index", "p_adipose", "p_stroma", "p_tumour", "label"]
    p = np.array([[float(r[f"p_{c}"]) for c in OWN_COLOURS] for r in rows])
    assert [r["label"] for r in rows] == [list(OWN_COLOURS)[k] for k in p.argmax(1)]
    first = next(r for r in rows if r["source"].endswith("adipose/0.png"))
    answer = TestClient(create_app(tmp_path / "exported")).post(
        "/predict", files=[("files", ("0.png", (tmp_path / "adipose" / "0.png").read_bytes(), "image/png"))])
    prediction = answer.json()["predictions"][0]
    assert prediction["label"] == first["label"]
    assert all(abs(prediction["probabilities"][c] - float(first[f"p_{c}"])) <= 5e-7 for c in OWN_COLOURS)
