"""Users' own classification patches: class folders, predefined split folders, CSV manifests, npz/h5 arrays
(MedMNIST's layout too); every problem reported at once; grouped splits that never leak; the recorded split and
the decoded cache reused."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from runner.data import DataError, check_source, load_splits
from runner.data.patches import load as patch_load
from runner.data.patches.layouts import find
from runner.data.patches.split import make_split
from runner.spec.config import DataSpec

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("adipose", "stroma", "tumour")


def patch(seed: int, side: int = 32, height: int | None = None) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height or side, side, 3), dtype=np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_classes(root: Path, per_class: int = 10, side: int = 32) -> dict[str, np.ndarray]:
    """PNG and JPEG files in three class folders; returns the PNGs' pixels by path relative to root."""
    written = {}
    for k, name in enumerate(CLASSES):
        for i in range(per_class):
            pixels = patch(100 * k + i, side)
            suffix = ".png" if i % 2 else ".jpg"
            save(root / name / f"{i}{suffix}", pixels)
            if suffix == ".png":
                written[f"{name}/{i}.png"] = pixels
    return written


def spec(source: str, **kw) -> DataSpec:
    return DataSpec(source=source, **{"train_size": 0, "valid_size": 0, "test_size": 0, **kw})


def all_of(split) -> tuple[np.ndarray, np.ndarray]:
    x, y = split.get_batch(np.arange(len(split)))
    return x.permute(0, 2, 3, 1).numpy(), y.numpy()


def record_of(note: str) -> Path:
    return Path(note.rsplit("(", 1)[1].rstrip(")"))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:120])


def test_class_folders_of_png_and_jpeg(tmp_path):
    pngs = write_classes(tmp_path / "data")
    save(tmp_path / "data" / "stroma" / "grey.png", patch(7)[..., 0])  # grey -> three channels
    save(tmp_path / "data" / "tumour" / "alpha.png", np.dstack([patch(8), np.full((32, 32), 9, np.uint8)]))
    s = load_splits("classification", spec("folder", root=str(tmp_path / "data")), tmp_path / "cache")
    assert s.classes == CLASSES
    sizes = [len(s.train), len(s.valid), len(s.test)]
    assert sum(sizes) == 32 and sizes[0] >= 20 and min(sizes[1:]) >= 3
    for part in (s.train, s.valid, s.test):
        x, y = all_of(part)
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
        assert set(y) == {0, 1, 2} and np.array_equal(part.labels, y)
    found = {x.tobytes() for part in (s.train, s.valid, s.test) for x in all_of(part)[0]}
    assert all(p.tobytes() in found for p in pngs.values())  # PNGs decode bit for bit
    assert np.dstack([patch(7)[..., 0]] * 3).tobytes() in found and patch(8).tobytes() in found
    assert s.split_note.startswith("stratified by label, seed 0, 70/15/15; assignment sha256 ")
    with open(record_of(s.split_note)) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32 and {r["split"] for r in rows} == {"train", "valid", "test"}
    assert {r["class"] for r in rows if r["id"] == "stroma/grey.png"} == {"stroma"}


def test_predefined_split_folders_are_kept_and_val_means_valid(tmp_path):
    counts = {"train": 4, "val": 2, "test": 3}
    for split, n in counts.items():
        for name in CLASSES[:2]:
            for i in range(n):
                save(tmp_path / "data" / split / name / f"{i}.png", patch(i, 20))
    s = load_splits("classification", spec("folder", root=str(tmp_path / "data")), tmp_path / "cache")
    assert (len(s.train), len(s.valid), len(s.test)) == (8, 4, 6)
    assert s.split_note == "predefined (train/valid/test folders)" and s.classes == CLASSES[:2]
    assert not (tmp_path / "cache" / "splits").exists()


def write_manifest(folder: Path, rows: list[dict[str, str]], name: str = "patches.csv") -> Path:
    path = folder / name
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def grouped_rows(folder: Path, groups: int = 14, per_group: int = 6) -> list[dict[str, str]]:
    rows = []
    for g in range(groups):
        for i in range(per_group):
            label = CLASSES[(g + i) % 3]  # every slide holds several classes, as real slides do
            save(folder / "img" / f"s{g}_{i}.png", patch(1000 + 10 * g + i, 24))
            rows.append({"path": f"img/s{g}_{i}.png", "label": label, "group": f"slide{g}", "stain": "HE"})
    return rows


def test_manifest_with_groups_puts_every_group_in_one_split_and_every_class_in_every_split(tmp_path):
    path = write_manifest(tmp_path, grouped_rows(tmp_path))
    s = load_splits("classification", spec("manifest", path=str(path)), tmp_path / "cache")
    assert "grouped by group (14 groups)" in s.split_note and s.classes == CLASSES
    with open(record_of(s.split_note)) as f:
        rows = list(csv.DictReader(f))
    by_group: dict[str, set[str]] = {}
    for row in rows:
        by_group.setdefault(row["group"], set()).add(row["split"])
    assert len(by_group) == 14 and all(len(splits) == 1 for splits in by_group.values())
    for part in (s.train, s.valid, s.test):
        assert set(part.labels) == {0, 1, 2}
    assert len(s.train) > len(s.valid) and len(s.train) > len(s.test)


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 11)), min_size=30, max_size=120), st.integers(0, 3))
def test_a_made_split_never_puts_one_group_in_two_splits(pairs, seed):
    labels = np.array([p[0] for p in pairs])
    groups = np.array([f"g{p[1]}" for p in pairs])
    if len(np.unique(labels)) < 2 or len(np.unique(groups)) < 3:
        return
    split_of = np.array(make_split(labels, groups, seed))
    for g in np.unique(groups):
        assert len(set(split_of[groups == g])) == 1
    assert set(split_of) == {"train", "valid", "test"}
    assert make_split(labels, groups, seed) == tuple(split_of)  # a pure function of its input


def test_manifest_split_column_and_integer_labels(tmp_path):
    rows = []
    for i in range(12):
        save(tmp_path / f"{i}.png", patch(i, 16))
        rows.append({"path": f"{i}.png", "label": str(i % 2 * 10), "split": ("train", "val", "test")[i % 3],
                     "group": f"p{i // 2}"})
    s = load_splits("classification", spec("manifest", path=str(write_manifest(tmp_path, rows))), tmp_path / "c")
    assert s.classes == ("0", "10")
    assert s.split_note == "predefined (manifest split column); warning: 6 group(s) in more than one split (p0, p1, p2 " \
                           "(and 3 more))"
    assert (len(s.train), len(s.valid), len(s.test)) == (4, 4, 4)


def test_medmnist_npz_layout_is_predefined(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("val", 6), ("test", 9)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1).astype(np.uint8)
    np.savez(tmp_path / "pathmnist.npz", **arrays)
    s = load_splits("classification", spec("arrays", path=str(tmp_path / "pathmnist.npz")), tmp_path / "cache")
    assert s.classes == ("0", "1", "2") and s.split_note == "predefined (MedMNIST train/val/test arrays)"
    x, y = all_of(s.valid)
    assert np.array_equal(x, arrays["val_images"]) and np.array_equal(y, arrays["val_labels"].reshape(-1))
    assert len(s.train) == 30 and len(s.test) == 9


def test_plain_npz_and_h5_with_groups_and_class_names(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (60, 20, 20, 3), dtype=np.uint8)
    labels = np.arange(60) % 3
    np.savez(tmp_path / "set.npz", image=images, label=labels, classes=np.array(CLASSES))
    with h5py.File(tmp_path / "set.h5", "w") as f:
        f["image"], f["label"], f["group"] = images[..., 0], labels.reshape(-1, 1), np.arange(60) // 4
    a = load_splits("classification", spec("arrays", path=str(tmp_path / "set.npz")), tmp_path / "cache")
    b = load_splits("classification", spec("arrays", path=str(tmp_path / "set.h5")), tmp_path / "cache")
    assert a.classes == CLASSES and b.classes == ("0", "1", "2")
    assert sum(map(len, (a.train, a.valid, a.test))) == 60 and "grouped by group (15 groups)" in b.split_note
    x, _ = all_of(b.test)
    assert x.shape[1:] == (20, 20, 3) and np.array_equal(x[..., 0], x[..., 2])  # grey -> three channels
    with open(record_of(b.split_note)) as f:
        assert all(len({r["split"] for r in rows}) == 1 for rows in _by(csv.DictReader(f), "group").values())


def _by(rows, key: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        out.setdefault(row[key], []).append(row)
    return out


def test_arrays_with_fewer_labels_than_images(tmp_path):
    np.savez(tmp_path / "bad.npz", image=np.zeros((10, 16, 16, 3), np.uint8), label=np.zeros(9, np.int64))
    with pytest.raises(DataError, match=r"10 images but `label` holds 9 labels") as err:
        check_source("classification", spec("arrays", path=str(tmp_path / "bad.npz")))
    assert "data.path" in str(err.value)


def test_mixed_sizes_are_refused_with_files_and_sizes_then_accepted_with_crop(tmp_path):
    write_classes(tmp_path / "data", per_class=6, side=32)
    big = save(tmp_path / "data" / "tumour" / "big.png", patch(5, 40))
    data = spec("folder", root=str(tmp_path / "data"))
    with pytest.raises(DataError) as err:
        check_source("classification", data)
    text = str(err.value)
    assert "2 different sizes" in text and "32x32: 18" in text and "40x40: 1" in text and str(big) in text
    assert "data.crop" in text and "16 to 32" in text
    with pytest.raises(DataError, match=r"data.crop = 8; allowed: 0 .* or 16 to 32"):
        check_source("classification", data.__class__(**{**vars(data), "crop": 8}))
    s = load_splits("classification", data.__class__(**{**vars(data), "crop": 24}), tmp_path / "cache")
    found = {x.tobytes() for part in (s.train, s.valid, s.test) for x in all_of(part)[0]}
    assert patch(5, 40)[8:32, 8:32].tobytes() in found and "(centre-cropped)" in s.description


def test_non_square_patches_are_named(tmp_path):
    write_classes(tmp_path / "data", per_class=5, side=32)
    oblong = save(tmp_path / "data" / "adipose" / "wide.png", patch(3, 32, height=20))
    with pytest.raises(DataError, match="must be square") as err:
        check_source("classification", spec("folder", root=str(tmp_path / "data")))
    assert str(oblong) in str(err.value) and "32x20" in str(err.value)


def test_every_problem_of_a_manifest_in_one_error(tmp_path):
    rows = grouped_rows(tmp_path, groups=4, per_group=3)
    truncate(tmp_path / rows[0]["path"])
    (tmp_path / "img" / "s1_0.png").write_bytes(b"not an image at all")
    rows.append({"path": "img/gone.png", "label": "stroma", "group": "slide9", "stain": ""})
    rows[2]["split"] = "holdout"
    for row in rows[:2] + rows[3:]:
        row.setdefault("split", "")
    with pytest.raises(DataError) as err:
        check_source("classification", spec("manifest", path=str(write_manifest(tmp_path, rows))))
    text = str(err.value)
    assert str(tmp_path / "img" / "s0_0.png") in text and str(tmp_path / "img" / "s1_0.png") in text
    assert "gone.png" in text and "not found" in text
    assert "split = 'holdout'; allowed: train, valid (or val), test" in text
    assert "data.path" in text and text.rstrip().endswith("then run again.")


def test_truncated_jpeg_in_a_small_set_is_caught(tmp_path):
    write_classes(tmp_path / "data", per_class=6)
    truncate(tmp_path / "data" / "stroma" / "2.jpg")
    with pytest.raises(DataError, match=r"stroma/2\.jpg"):
        check_source("classification", spec("folder", root=str(tmp_path / "data")))


def test_missing_columns_say_which_exist_and_which_are_required(tmp_path):
    path = write_manifest(tmp_path, [{"file": "a.png", "class": "x"}])
    with pytest.raises(DataError, match=r"missing column\(s\) path, label; it has file, class; required: path, "
                                        r"label \(optional: split, group\)"):
        check_source("classification", spec("manifest", path=str(path)))


def test_a_class_with_too_few_images_is_named(tmp_path):
    write_classes(tmp_path / "data", per_class=6)
    for i in range(2):
        save(tmp_path / "data" / "rare" / f"{i}.png", patch(i))
    with pytest.raises(DataError, match=r"class 'rare' \(2 images\).*at least 5 images"):
        check_source("classification", spec("folder", root=str(tmp_path / "data")))


def test_the_recorded_split_is_reused_and_a_new_seed_makes_another(tmp_path):
    write_classes(tmp_path / "data", per_class=8)
    data = spec("folder", root=str(tmp_path / "data"))
    first = load_splits("classification", data, tmp_path / "cache")
    record = record_of(first.split_note)
    assert load_splits("classification", data, tmp_path / "cache").split_note == first.split_note
    # An edited record wins over a fresh computation: the recorded assignment is what every job sees.
    lines = record.read_text().splitlines()
    moved = next(i for i, line in enumerate(lines) if line.endswith(",train"))
    lines[moved] = lines[moved].removesuffix(",train") + ",test"
    record.write_text("\n".join(lines) + "\n")
    again = load_splits("classification", data, tmp_path / "cache")
    assert len(again.test) == len(first.test) + 1 and again.split_note != first.split_note
    other = load_splits("classification", data.__class__(**{**vars(data), "seed": 1}), tmp_path / "cache")
    assert record_of(other.split_note) != record and other.split_note.split("sha256 ")[1][:12] != \
        first.split_note.split("sha256 ")[1][:12]


def test_fraction_is_a_nested_stratified_share_of_train(tmp_path):
    write_classes(tmp_path / "data", per_class=20, side=16)
    data = spec("folder", root=str(tmp_path / "data"))
    full = load_splits("classification", data, tmp_path / "cache")
    half = load_splits("classification", data.__class__(**{**vars(data), "fraction": 0.5}), tmp_path / "cache")
    images = {x.tobytes() for x in all_of(full.train)[0]}
    assert {x.tobytes() for x in all_of(half.train)[0]} < images
    assert np.bincount(half.train.labels).tolist() == [round(c / 2) for c in np.bincount(full.train.labels)]
    assert len(half.test) == len(full.test) and half.split_note == full.split_note


def test_decoded_patches_are_cached_until_a_file_changes(tmp_path, monkeypatch):
    write_classes(tmp_path / "data", per_class=6)
    data = spec("folder", root=str(tmp_path / "data"))
    first = load_splits("classification", data, tmp_path / "cache")

    def no_decoding(path: Path, crop: int) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")
    monkeypatch.setattr(patch_load, "decode", no_decoding)
    again = load_splits("classification", data, tmp_path / "cache")
    assert np.array_equal(all_of(again.train)[0], all_of(first.train)[0])
    changed = tmp_path / "data" / "adipose" / "1.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded"):  # a touched file: decoded again
        load_splits("classification", data, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "patches").glob("*.npy"))) == 1


def test_large_sets_are_mapped_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("runner.data.shared.PRIVATE_MAX_BYTES", 1000)
    write_classes(tmp_path / "data", per_class=6)
    s = load_splits("classification", spec("folder", root=str(tmp_path / "data")), tmp_path / "cache")
    assert type(s.train).__name__ == "MappedSplit" and "mapped" in s.description
    import pickle
    copy = pickle.loads(pickle.dumps(s.train))
    assert np.array_equal(all_of(copy)[0], all_of(s.train)[0])


def test_segmentation_folder_is_unchanged(tmp_path):
    with pytest.raises(DataError, match="images/ and masks/"):
        check_source("segmentation", spec("folder", root=str(tmp_path)))


BROKEN_SPEC = """
[experiment]
name = "own"
seeds = [0]
[data]
source = "{source}"
{key} = "{location}"
[train]
epochs = 1
[[model]]
family = "cnn"
width = 4
depth = 2
"""


@pytest.mark.parametrize("source", ["folder", "manifest"])
def test_the_command_refuses_a_broken_source_with_exit_2_and_writes_nothing(tmp_path, source):
    write_classes(tmp_path / "data", per_class=6)
    broken = tmp_path / "data" / "tumour" / "3.png"
    truncate(broken)
    if source == "folder":
        key, location = "root", tmp_path / "data"
    else:
        rows = [{"path": str(p.relative_to(tmp_path)), "label": p.parent.name}
                for p in sorted((tmp_path / "data").rglob("*.*"))]
        key, location = "path", write_manifest(tmp_path, rows)
    spec_file = tmp_path / "own.toml"
    spec_file.write_text(BROKEN_SPEC.format(source=source, key=key, location=location))
    runs = tmp_path / "runs"
    env = {**os.environ, "CI": "true", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "runner", str(spec_file), "--root", str(runs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert str(broken) in done.stderr and f"data.{key}" in done.stderr
    assert not (runs / "results.db").exists()


def test_a_large_set_reports_damaged_files_when_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr("runner.data.patches.check.DECODE_CHECK_MAX", 0)  # headers only, as for a large set
    write_classes(tmp_path / "data", per_class=6)
    damaged = tmp_path / "data" / "stroma" / "4.jpg"
    damaged.write_bytes(damaged.read_bytes()[:-200])  # its header still reads; its pixels do not
    data = spec("folder", root=str(tmp_path / "data"))
    check_source("classification", data)
    cached = patch_load.cache_path(find(data), 0, tmp_path / "cache")
    stale = save(cached.parent / "x.png", patch(0)).with_name(f".{cached.name}.{socket.gethostname()}.1.tmp")
    stale.write_bytes(b"half a decoded copy of a killed job")
    with pytest.raises(DataError, match=r"1 image file\(s\) under data.root cannot be read.*stroma/4\.jpg"):
        load_splits("classification", data, tmp_path / "cache")
    assert not [p for p in cached.parent.iterdir() if p.suffix in (".npy", ".tmp")]  # the stale one is gone too
