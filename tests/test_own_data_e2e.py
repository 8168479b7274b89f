"""Users' own three-class patch sets, each layout written in its real format and run through the command line:
class folders of PNG and JPEG files, a CSV manifest with slide groups and an extra column, MedMNIST's npz.

Every layout trains a plain CNN and a C4 G-CNN to the end with K-class metrics and a confusion matrix; the grouped
manifest's recorded split keeps every slide in one split; the folder experiment goes on through the report
(classes, split, per-class recall, confusion figure), export (class names), predict (one column per class) and
serve (the same numbers).
"""
from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from runner.cli import main
from runner.inference.serve import create_app

CLASSES = ("adipose", "stroma", "tumour")  # sorted: the folder names' order is the label order
COLOURS = {"adipose": (238, 230, 236), "stroma": (226, 124, 170), "tumour": (112, 62, 150)}
SIDE = 32

SPEC = """
[experiment]
name = "{name}"
task = "classification"
seeds = [0]
[data]
source = "{source}"
{location}
train_size = 0
valid_size = 0
test_size = 0
[train]
epochs = 2
batch_size = 16
lr = 3e-3
[eval]
metric = "balanced_accuracy"
rotation_angles = [0, 90]
rotation_samples = 16
[[model]]
family = "cnn"
width = 4
depth = 2
[[model]]
family = "gcnn"
group = "C4"
width = 4
depth = 2
kernel_size = 3
"""


def tissue(name: str, rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A patch of one class: its stain colour, noise and a few dark nuclei."""
    pixels = np.array(COLOURS[name], float) + rng.normal(0, 20, (side, side, 3))
    yy, xx = np.mgrid[:side, :side]
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = rng.uniform(0, side, 2)
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, 25)] *= 0.6
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_folder(root: Path, per_class: int = 30) -> None:
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(tissue(name, rng)).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}", quality=95)


def write_manifest(folder: Path, slides: int = 6, per_slide: int = 5) -> Path:
    """Patches in one flat folder; the CSV gives each its class, its slide (group) and a scanner column."""
    rng = np.random.default_rng(1)
    (folder / "patches").mkdir(parents=True)
    rows = []
    for name in CLASSES:
        for slide in range(slides):
            for i in range(per_slide):
                path = f"patches/{name}-{slide}-{i}.png"
                Image.fromarray(tissue(name, rng)).save(folder / path)
                rows.append({"path": path, "label": name, "group": f"slide-{name}-{slide}", "scanner": "A"})
    manifest = folder / "patches.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def write_medmnist(path: Path) -> None:
    """MedMNIST's layout: train_/val_/test_ images (N, 28, 28, 3) uint8 and labels (N, 1)."""
    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", 60), ("val", 15), ("test", 15)):
        labels = np.arange(n) % len(CLASSES)
        arrays[f"{split}_images"] = np.stack([tissue(CLASSES[k], rng, 28) for k in labels])
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)


def run(tmp_path: Path, source: str, location: str) -> Path:
    spec = tmp_path / f"{source}.toml"
    spec.write_text(SPEC.format(name=f"own-{source}", source=source, location=location))
    root = tmp_path / "runs"
    assert main([str(spec), "--root", str(root)]) == 0
    return root


def finished(root: Path) -> list[dict]:
    """Each job's final metrics and its confusion artifact."""
    with sqlite3.connect(root / "results.db") as db:
        jobs = db.execute("SELECT job_id, label, status FROM jobs ORDER BY job_id").fetchall()
        out = []
        for job_id, label, status in jobs:
            metrics = dict(db.execute("SELECT name, value FROM final_metrics WHERE job_id = ?", (job_id,)))
            (body,) = db.execute("SELECT data FROM artifacts WHERE job_id = ? AND name = 'confusion.json'",
                                 (job_id,)).fetchone()
            out.append({"label": label, "status": status, "metrics": metrics, "confusion": json.loads(body)})
    return out


def check_three_classes(jobs: list[dict], test_count: int) -> None:
    assert [j["status"] for j in jobs] == ["done", "done"]
    for job in jobs:
        m, confusion = job["metrics"], job["confusion"]
        for name in ("test_accuracy", "test_balanced_accuracy", "test_auc", "test_f1", "test_nll",
                     "test_recall_0", "test_recall_1", "test_recall_2"):
            assert np.isfinite(m[name]), name
        assert confusion["classes"] == list(CLASSES)
        assert np.array(confusion["matrix"]).shape == (3, 3) and np.sum(confusion["matrix"]) == test_count
        recalls = np.diag(confusion["matrix"]) / np.sum(confusion["matrix"], axis=1)
        assert m["test_recall_0"] == pytest.approx(recalls[0])


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("own-folder")
    write_folder(tmp / "patches")
    return run(tmp, "folder", f'root = "{tmp / "patches"}"')


def test_class_folders_train_three_class_models_and_learn(folder_run):
    jobs = finished(folder_run)
    assert "test_auc_groups" not in jobs[0]["metrics"]  # folders name no slides: patches resampled one by one
    check_three_classes(jobs, test_count=round(0.15 * 90))
    assert jobs[0]["metrics"]["test_balanced_accuracy"] > 0.6  # colour alone separates these classes
    assert "stratified by label" in jobs[0]["confusion"]["split_note"]


def test_show_names_each_class_recall_and_prints_the_confusion_matrix(folder_run, capsys):
    assert main(["show", "1", "--root", str(folder_run)]) == 0
    shown = capsys.readouterr().out
    assert all(f"recall[{name}]=" in shown for name in CLASSES) and "recall_0" not in shown
    assert "test confusion (rows true, columns predicted): adipose: " in shown


def test_the_report_names_the_classes_the_split_and_each_class_recall(folder_run):
    assert main(["report", "--root", str(folder_run)]) == 0
    text = (folder_run / "report" / "report.md").read_text()
    assert "adipose, stroma, tumour" in text and "stratified by label" in text
    assert all(f"Recall {name}" in text for name in CLASSES)
    assert (folder_run / "report" / "own-folder" / "confusion.png").stat().st_size > 0


def test_export_predict_and_serve_give_one_probability_per_class(folder_run, tmp_path):
    out = tmp_path / "model"
    assert main(["export", "--root", str(folder_run), "--experiment", "own-folder", "--best", "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["input"]["size"] == [SIDE, SIDE]
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(9)
    for name in CLASSES:
        Image.fromarray(tissue(name, rng)).save(images / f"{name}.png")
    assert main(["predict", str(out), str(images), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert list(rows[0]) == ["source", "index", *(f"p_{c}" for c in CLASSES), "label"]
    p = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    assert np.allclose(p.sum(1), 1, atol=1e-5) and [r["label"] for r in rows] == [CLASSES[k] for k in p.argmax(1)]
    answer = TestClient(create_app(out)).post("/predict", files=[
        ("files", (f"{name}.png", (images / f"{name}.png").read_bytes(), "image/png")) for name in CLASSES])
    assert answer.status_code == 200
    served = {a["file"]: a for a in answer.json()["predictions"]}
    for row in rows:
        answer_row = served[Path(row["source"]).name]
        assert answer_row["label"] == row["label"]
        assert all(abs(answer_row["probabilities"][c] - float(row[f"p_{c}"])) <= 1e-5 for c in CLASSES)


def test_a_manifest_with_slides_keeps_every_slide_in_one_split(tmp_path):
    manifest = write_manifest(tmp_path)
    root = run(tmp_path, "manifest", f'path = "{manifest}"')
    jobs = finished(root)
    note = jobs[0]["confusion"]["split_note"]
    assert "grouped by group (18 groups)" in note
    record = Path(note.rsplit("(", 1)[1].rstrip(")"))
    assignment = list(csv.DictReader(record.open()))
    assert len(assignment) == 90
    splits_of = {}
    for row in assignment:
        splits_of.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values())  # no slide in two splits
    assert {row["class"] for row in assignment if row["split"] == "test"} == set(CLASSES)
    test_count = sum(row["split"] == "test" for row in assignment)
    check_three_classes(jobs, test_count)
    test_slides = {row["group"] for row in assignment if row["split"] == "test"}
    assert jobs[0]["metrics"]["test_auc_groups"] == len(test_slides)  # the AUC interval resampled whole slides


def test_medmnist_npz_keeps_its_own_splits(tmp_path):
    write_medmnist(tmp_path / "tiny_pathmnist.npz")
    root = run(tmp_path, "arrays", f'path = "{tmp_path / "tiny_pathmnist.npz"}"')
    jobs = finished(root)
    assert "predefined" in jobs[0]["confusion"]["split_note"]
    assert jobs[0]["confusion"]["classes"] == ["0", "1", "2"]  # MedMNIST's npz holds no class names
    for job in jobs:
        assert np.array(job["confusion"]["matrix"]).shape == (3, 3) and np.sum(job["confusion"]["matrix"]) == 15
