"""The embedded synthetic data: determinism, the PCam label rule, balance, caching, segmentation tiles."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from runner.spec.config import DataSpec
from runner.data import DataError, load_splits, sample_figure
from runner.data import synthetic as sy

SMALL = DataSpec(train_size=24, valid_size=8, test_size=8, image_size=64)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*.h5"))}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    load_splits("classification", SMALL, tmp_path / "a")
    load_splits("classification", SMALL, tmp_path / "b")
    load_splits("classification", DataSpec(**{**vars(SMALL), "seed": 1}), tmp_path / "c")
    a, b, c = (file_bytes(tmp_path / k) for k in "abc")
    assert len(a) == 6 and a == b
    assert a[next(iter(a))] != c[next(iter(c))]


def test_label_is_one_iff_a_tumour_nucleus_overlaps_the_centre():
    rendered, labels = sy.classification_rendered(np.random.default_rng(5), 64, 96)
    centre = rendered.tumour[:, 32:64, 32:64].any(axis=(1, 2))
    assert np.array_equal(centre, labels.astype(bool))
    negatives_with_tumour = rendered.tumour[labels == 0].any(axis=(1, 2))
    assert 0 < negatives_with_tumour.mean() < 1  # hard negatives exist, but not everywhere
    assert labels.sum() == 32


def test_patches_look_like_h_and_e():
    rendered, _ = sy.classification_rendered(np.random.default_rng(0), 32, 96)
    mean = rendered.images.reshape(-1, 3).mean(axis=0)
    assert mean[1] < mean[0] and mean[1] < mean[2]  # pink/purple: green absorbed most
    assert rendered.images.std() > 20  # texture, not flat colour
    assert len(np.unique(rendered.instances)) > 5


def test_loaded_splits_are_balanced_and_cached(tmp_path):
    s = load_splits("classification", DataSpec(train_size=32, valid_size=8, test_size=8, image_size=48), tmp_path)
    assert s.train.labels.sum() == 16 and len(s.valid) == 8
    x, y = s.train.get_batch(np.arange(4))
    assert x.shape == (4, 3, 48, 48) and x.dtype == torch.uint8 and set(y.tolist()) <= {0, 1}
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.h5")}
    load_splits("classification", DataSpec(train_size=32, valid_size=8, test_size=8, image_size=48,
                                           fraction=0.5), tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.h5")} == stamps  # fraction reuses the files


def test_segmentation_tiles_have_instance_masks(tmp_path):
    for in_memory in (True, False):
        s = load_splits("segmentation", DataSpec(train_size=6, valid_size=3, test_size=3, image_size=64,
                                                 in_memory=in_memory), tmp_path)
        x, m = s.valid.get_batch(np.array([2, 0]))
        assert x.shape == (2, 3, 64, 64) and m.shape == (2, 64, 64) and m.dtype == torch.int64
        assert s.train.labels is None and m.max() > 1 and m.min() == 0
    assert (tmp_path / sy.cache_folder(tmp_path, "segmentation", 0, 64, {"train": 6, "valid": 3, "test": 3})
            .name / "nuclei_train.h5").is_file()


def test_bad_synthetic_sizes_raise(tmp_path):
    with pytest.raises(DataError, match="at least 2 samples"):
        load_splits("classification", DataSpec(train_size=0), tmp_path)


def test_sample_figure_writes_a_png(tmp_path):
    s = load_splits("classification", SMALL, tmp_path / "cache")
    path = sample_figure(s.train, tmp_path / "fig" / "samples.png", n=8, columns=4, title="synthetic")
    assert path.read_bytes()[:4] == b"\x89PNG"
