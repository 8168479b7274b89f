"""PatchCamelyon loader end to end on small files in the published format, and every kind of bad input."""
from __future__ import annotations

import gzip
import pickle
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from runner.spec.config import DataSpec
from runner.data import DataError, check_source, iterate_batches, load_splits
from runner.data.pcam import file_name, select_rows

SIZES = {"train": 40, "valid": 12, "test": 12}


def write_split(root: Path, split: str, x: np.ndarray, y: np.ndarray, gz: bool = False) -> None:
    for kind, data in (("x", x), ("y", y)):
        path = root / file_name(split, kind)
        with h5py.File(path, "w") as f:
            f.create_dataset(kind, data=data)
        if gz:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()


def write_pcam(root: Path, gz_splits: tuple[str, ...] = (), side: int = 96) -> dict[str, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in SIZES.items():
        x = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        y = (np.arange(n) % 4 == 0).astype(np.uint8).reshape(n, 1, 1, 1)  # 1 in 4 positive
        write_split(root, split, x, y, gz=split in gz_splits)
        data[split] = (x, y.reshape(-1))
    return data


def spec(root: Path, **kw) -> DataSpec:
    return replace(DataSpec(source="pcam", root=str(root), train_size=0, valid_size=0, test_size=0), **kw)


@pytest.mark.parametrize("in_memory", [True, False])
def test_loader_returns_the_file_contents_in_the_requested_order(tmp_path, in_memory):
    data = write_pcam(tmp_path / "pcam")
    splits = load_splits("classification", spec(tmp_path / "pcam", in_memory=in_memory), tmp_path / "cache")
    assert [len(splits.train), len(splits.valid), len(splits.test)] == [40, 12, 12]
    idx = np.array([7, 2, 30, 2, 11])  # unsorted, with a repeat
    x, y = splits.train.get_batch(idx)
    assert x.dtype == torch.uint8 and x.shape == (5, 3, 96, 96) and y.dtype == torch.int64
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), data["train"][0][idx])
    assert np.array_equal(y.numpy(), data["train"][1][idx])
    assert np.array_equal(splits.train.labels, data["train"][1])
    assert "train 40" in splits.description and "\n" not in splits.description


def test_gzip_is_decompressed_once_into_the_cache(tmp_path):
    data = write_pcam(tmp_path / "pcam", gz_splits=("valid", "test"))
    check_source("classification", spec(tmp_path / "pcam"))
    first = load_splits("classification", spec(tmp_path / "pcam", in_memory=False), tmp_path / "cache")
    cached = sorted((tmp_path / "cache").rglob("*.h5"))
    assert len(cached) == 4 and not list((tmp_path / "cache").rglob("*.tmp"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    load_splits("classification", spec(tmp_path / "pcam"), tmp_path / "cache")
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # reused, not rewritten
    x, _ = first.valid.get_batch(np.arange(3))
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), data["valid"][0][:3])


def test_caps_are_stratified_and_fractions_nested():
    labels = (np.arange(400) % 4 == 0).astype(np.uint8)  # 100 positive, 300 negative
    capped = select_rows(labels, 3, "train", cap=200)
    assert len(capped) == 200 and labels[capped].sum() == 50
    rows = [set(select_rows(labels, 3, "train", cap=200, fraction=f)) for f in (0.01, 0.1, 0.5, 1.0)]
    assert all(small <= big for small, big in zip(rows, rows[1:]))
    assert len(rows[1]) == 20 and sum(labels[list(rows[1])]) == 5
    assert set(select_rows(labels, 3, "train", cap=0)) == set(range(400))
    assert set(select_rows(labels, 4, "train", cap=200)) != set(capped)


def test_spec_sizes_and_fraction_apply(tmp_path):
    write_pcam(tmp_path / "pcam")
    s = load_splits("classification", spec(tmp_path / "pcam", train_size=20, valid_size=8, fraction=0.5),
                    tmp_path / "cache")
    assert (len(s.train), len(s.valid), len(s.test)) == (10, 8, 12)


def test_streamed_split_survives_pickling(tmp_path):
    data = write_pcam(tmp_path / "pcam")
    s = load_splits("classification", spec(tmp_path / "pcam", in_memory=False), tmp_path / "cache")
    s.train.get_batch(np.arange(2))  # opens a handle, which must not be pickled
    clone = pickle.loads(pickle.dumps(s.train))
    x, _ = clone.get_batch(np.array([5]))
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), data["train"][0][5])


def corrupt(root: Path, case: str) -> Path:
    """Break one file of a valid PCam folder; returns the file the error must name."""
    x_path, y_path = root / file_name("valid", "x"), root / file_name("valid", "y")
    n = SIZES["valid"]
    if case == "missing":
        x_path.unlink()
    elif case == "wrong_key":
        with h5py.File(x_path, "w") as f:
            f.create_dataset("images", data=np.zeros((n, 96, 96, 3), np.uint8))
    elif case == "wrong_shape":
        with h5py.File(x_path, "w") as f:
            f.create_dataset("x", data=np.zeros((n, 96, 96), np.uint8))
    elif case == "wrong_dtype":
        with h5py.File(x_path, "w") as f:
            f.create_dataset("x", data=np.zeros((n, 96, 96, 3), np.float32))
    elif case == "garbage":
        x_path.write_bytes(b"not an hdf5 file at all" * 100)
    elif case == "labels":
        with h5py.File(y_path, "w") as f:
            f.create_dataset("y", data=np.full((n, 1, 1, 1), 2, np.uint8))
        return y_path
    elif case == "count":
        with h5py.File(y_path, "w") as f:
            f.create_dataset("y", data=np.zeros((n - 1, 1, 1, 1), np.uint8))
        return y_path
    return x_path


@pytest.mark.parametrize("case", ["missing", "wrong_key", "wrong_shape", "wrong_dtype", "garbage", "labels", "count"])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, case):
    write_pcam(tmp_path / "pcam")
    bad = corrupt(tmp_path / "pcam", case)
    with pytest.raises(DataError, match=bad.name):
        check_source("classification", spec(tmp_path / "pcam"))
    assert not (tmp_path / "cache").exists()


def test_truncated_gzip_raises_data_error_and_leaves_no_partial_file(tmp_path):
    write_pcam(tmp_path / "pcam", gz_splits=("train",))
    gz = tmp_path / "pcam" / (file_name("train", "x") + ".gz")
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(DataError, match=gz.name):
        load_splits("classification", spec(tmp_path / "pcam"), tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(gz.name[:20])]
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_garbage_gzip_is_caught_by_check_source(tmp_path):
    write_pcam(tmp_path / "pcam")
    gz = tmp_path / "pcam" / (file_name("test", "y") + ".gz")
    (tmp_path / "pcam" / file_name("test", "y")).unlink()
    gz.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=gz.name):
        check_source("classification", spec(tmp_path / "pcam"))


def test_source_task_mismatch_names_allowed_values(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="allowed for segmentation: synthetic, folder, arrays"):
        check_source("segmentation", DataSpec(source="manifest", path=str(tmp_path)))
    monkeypatch.setenv("RUNNER_DATA_DIR", str(tmp_path / "nothing here"))  # pcam without a root: the default folder
    with pytest.raises(DataError, match="data.root is not set and the default PatchCamelyon folder .*nothing here"):
        check_source("classification", DataSpec(source="pcam"))


class _Range:
    """A split whose samples are their own indices: shows the order iterate_batches produces."""

    labels = None

    def __len__(self) -> int:
        return 23

    def get_batch(self, indices):
        t = torch.as_tensor(indices)
        return t, t


def test_iterate_batches_resumes_exactly_and_keeps_the_last_partial_batch():
    full = [x.tolist() for x, _ in iterate_batches(_Range(), 5, True, seed=1, epoch=2)]
    assert [len(b) for b in full] == [5, 5, 5, 5, 3]
    assert sorted(sum(full, [])) == list(range(23))
    resumed = [x.tolist() for x, _ in iterate_batches(_Range(), 5, True, seed=1, epoch=2, start_batch=3)]
    assert resumed == full[3:]
    prefetched = [x.tolist() for x, _ in iterate_batches(_Range(), 5, True, seed=1, epoch=2, prefetch=True)]
    assert prefetched == full
    other_epoch = [x.tolist() for x, _ in iterate_batches(_Range(), 5, True, seed=1, epoch=3)]
    assert other_epoch != full
    ordered = [x.tolist() for x, _ in iterate_batches(_Range(), 10, False, seed=1, epoch=2)]
    assert sum(ordered, []) == list(range(23))


def test_prefetch_reraises_errors_from_the_reader_thread():
    class Broken(_Range):
        def get_batch(self, indices):
            raise DataError("disk gone")

    with pytest.raises(DataError, match="disk gone"):
        list(iterate_batches(Broken(), 4, True, seed=0, epoch=0, prefetch=True))


def test_a_small_in_memory_subset_is_copied_and_converts_nothing(tmp_path):
    from runner.data.batches import ArraySplit
    from runner.data.shared import PRIVATE_MAX_BYTES
    assert SIZES["train"] * 96 * 96 * 3 <= PRIVATE_MAX_BYTES  # small enough for a private copy
    write_pcam(tmp_path / "pcam")
    splits = load_splits("classification", spec(tmp_path / "pcam", in_memory=True), tmp_path / "cache")
    assert all(isinstance(s, ArraySplit) for s in (splits.train, splits.valid, splits.test))
    assert not list((tmp_path / "cache").rglob("*.npy"))
    assert splits.description.endswith("; in memory")


def write_meta(root: Path, split: str, slides: list[str]) -> None:
    """PCam's _meta.csv layout: an unnamed index, coordinates, tumour flags and the slide (`wsi`) per patch."""
    lines = [",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi"]
    lines += [f"{i},0,0,False,False,{slide}" for i, slide in enumerate(slides)]
    (root / f"camelyonpatch_level_2_split_{split}_meta.csv").write_text("\n".join(lines) + "\n")


def test_the_test_splits_slide_ids_come_from_its_meta_table(tmp_path):
    write_pcam(tmp_path)
    n = SIZES["test"]
    slides = [f"camelyon16_test_{i % 5:03d}" for i in range(n)]
    write_meta(tmp_path, "test", slides)
    splits = load_splits("classification", spec(tmp_path, test_size=n // 2), tmp_path / "cache")
    test = splits.test
    rows = select_rows((np.arange(n) % 4 == 0).astype(np.int64), 0, "test", n // 2)
    assert list(test.groups) == [slides[r] for r in rows]  # the selected rows' own slides, in order
    count = len({slides[r] for r in rows})
    assert f"test slides from camelyonpatch_level_2_split_test_meta.csv ({count})" in splits.description
    assert splits.train.groups is None


@pytest.mark.parametrize("meta", ["absent", "short", "no wsi column"])
def test_a_missing_or_unfit_meta_table_only_leaves_the_slides_unknown(tmp_path, meta):
    write_pcam(tmp_path)
    if meta == "short":
        write_meta(tmp_path, "test", ["a", "b"])
    elif meta == "no wsi column":
        (tmp_path / "camelyonpatch_level_2_split_test_meta.csv").write_text("a,b\n" * (SIZES["test"] + 1))
    splits = load_splits("classification", spec(tmp_path), tmp_path / "cache")
    assert splits.test.groups is None and "test slides" not in splits.description
