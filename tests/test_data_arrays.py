"""Segmentation data from user folders and array files: conversion, tiling, splitting, errors."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from skimage.io import imsave

from runner.spec.config import DataSpec
from runner.data import DataError, check_source, load_splits
from runner.data.arrays import tile_starts, to_instances


def blobs(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and a 0/255 mask with a few separate squares."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for y, x in rng.integers(0, min(h, w) - 6, (4, 2)):
        mask[y:y + 4, x:x + 4] = 255
    return image, mask


def write_folder(root: Path, count: int, h: int = 70, w: int = 100) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image, mask = blobs(h, w, i)
        imsave(root / "images" / f"img{i}.png", image, check_contrast=False)
        imsave(root / "masks" / f"img{i}.png", mask, check_contrast=False)


def seg(source: str, **kw) -> DataSpec:
    return DataSpec(source=source, image_size=32, train_size=0, valid_size=0, test_size=0, **kw)


def test_folder_with_one_image_is_tiled_and_split_by_tile(tmp_path):
    write_folder(tmp_path, 1)
    s = load_splits("segmentation", seg("folder", root=str(tmp_path)), tmp_path / "cache")
    assert len(s.train) + len(s.valid) + len(s.test) == 3 * 4  # rows 0, 32, 38; cols 0, 32, 64, 68
    assert min(len(s.valid), len(s.test)) >= 1
    x, m = s.train.get_batch(np.arange(len(s.train)))
    assert x.shape[1:] == (3, 32, 32) and m.shape[1:] == (32, 32)
    assert set(np.unique(m.numpy())) <= set(range(10)) and m.max() >= 1  # 0/255 became instance ids


def test_folder_with_several_images_is_split_by_image(tmp_path):
    write_folder(tmp_path, 5, h=32, w=32)
    s = load_splits("segmentation", seg("folder", root=str(tmp_path)), tmp_path / "cache")
    assert (len(s.train), len(s.valid), len(s.test)) == (3, 1, 1)


def test_npz_and_h5_arrays(tmp_path):
    images = np.random.default_rng(0).random((4, 40, 40)).astype(np.float32)  # grey floats in [0, 1]
    masks = np.zeros((4, 40, 40), np.int32)
    masks[:, 5:9, 5:9], masks[:, 20:25, 20:25] = 1, 2
    np.savez(tmp_path / "a.npz", image=images, mask=masks)
    s = load_splits("segmentation", seg("arrays", path=str(tmp_path / "a.npz")), tmp_path / "cache")
    x, m = s.train.get_batch(np.arange(len(s.train)))
    assert x.shape[1] == 3 and x.dtype.is_floating_point is False and set(np.unique(m.numpy())) == {0, 1, 2}
    with h5py.File(tmp_path / "b.h5", "w") as f:  # a single (H, W, 3) image
        f["image"] = np.zeros((64, 96, 3), np.uint8)
        f["mask"] = np.zeros((64, 96), np.uint8)
    s = load_splits("segmentation", seg("arrays", path=str(tmp_path / "b.h5")), tmp_path / "cache")
    assert len(s.train) + len(s.valid) + len(s.test) == 6


def test_colour_coded_masks_become_instances():
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[1:3, 1:3] = (255, 0, 0)
    mask[5:7, 5:7] = (0, 255, 0)
    ids = to_instances(mask, "m")
    assert len(np.unique(ids)) == 3 and ids[0, 0] == 0


@pytest.mark.parametrize("case", ["size", "missing_mask", "keys", "small", "no_masks_dir"])
def test_bad_segmentation_sources_raise(tmp_path, case):
    if case in ("size", "missing_mask", "no_masks_dir"):
        write_folder(tmp_path, 2)
        if case == "size":
            imsave(tmp_path / "masks" / "img1.png", np.zeros((10, 10), np.uint8), check_contrast=False)
            expected = "img1.png"
        elif case == "missing_mask":
            (tmp_path / "masks" / "img1.png").unlink()
            expected = "no mask for img1.png"
        else:
            for p in (tmp_path / "masks").iterdir():
                p.unlink()
            (tmp_path / "masks").rmdir()
            expected = "masks"
        data = seg("folder", root=str(tmp_path))
    else:
        path = tmp_path / "x.npz"
        if case == "keys":
            np.savez(path, images=np.zeros((2, 40, 40, 3)), mask=np.zeros((2, 40, 40)))
            expected = "missing key"
        else:
            np.savez(path, image=np.zeros((2, 20, 20, 3)), mask=np.zeros((2, 20, 20)))
            expected = "smaller than data.image_size"
        data = seg("arrays", path=str(path))
    with pytest.raises(DataError, match=expected):
        check_source("segmentation", data)
        load_splits("segmentation", data, tmp_path / "cache")


@given(length=st.integers(1, 500), tile=st.integers(1, 120))
def test_tiles_cover_the_axis_and_stay_inside(length, tile):
    if tile > length:
        return
    starts = tile_starts(length, tile)
    covered = np.zeros(length, bool)
    for s in starts:
        assert 0 <= s and s + tile <= length
        covered[s:s + tile] = True
    assert covered.all()
