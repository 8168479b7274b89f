"""predict on patches: every input format, bad inputs listed, D4 test-time augmentation, segmentation masks."""
from __future__ import annotations

import csv
import gzip
import shutil

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from runner.inference.artifact import D4_ELEMENTS, load, transform
from tests.inference.conftest import run_cli


def patches(count: int, seed: int = 0, size: int = 96) -> np.ndarray:
    """Test-split-like RGB patches (random but tissue-coloured) as (N, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    base = rng.integers(120, 230, (count, 1, 1, 3))
    return (base + rng.integers(-40, 40, (count, size, size, 3))).clip(0, 255).astype(np.uint8)


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_input_format_gives_the_models_probability(trained, tmp_path, capsys):
    images = patches(6)
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(images[0]).save(folder / "a.png")
    tifffile.imwrite(folder / "b.tif", images[1])
    np.savez(tmp_path / "stack.npz", x=images[2:4])
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_test_x.h5", "w") as handle:
        handle["x"] = images[4:6]
    with open(tmp_path / "camelyonpatch_level_2_split_test_x.h5", "rb") as src, \
            gzip.open(tmp_path / "copy_x.h5.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    big = np.full((130, 140, 3), 200, np.uint8)
    big[17:113, 22:118] = images[0]  # its centre crop is image 0
    Image.fromarray(big).save(tmp_path / "big.png")
    Image.fromarray(images[0]).save(tmp_path / "c.jpg", quality=95)
    inputs = [folder, tmp_path / "stack.npz", tmp_path / "camelyonpatch_level_2_split_test_x.h5",
              tmp_path / "copy_x.h5.gz", tmp_path / "big.png", tmp_path / "c.jpg"]
    assert run_cli("predict", trained.cnn, *inputs, "--out", tmp_path / "p.csv", "--batch-size", "3") == 0
    rows = read_rows(tmp_path / "p.csv")
    expected = load(trained.cnn).probabilities(images)
    got = [float(r["p_tumour"]) for r in rows]
    np.testing.assert_allclose(got[:8], [*expected[:6], *expected[4:6]], atol=1e-6)
    assert got[8] == pytest.approx(expected[0], abs=1e-6)  # big.png, centre-cropped
    assert got[9] == pytest.approx(expected[0], abs=0.05)  # JPEG: lossy
    assert [(r["source"].split("/")[-1], r["index"]) for r in rows][:4] == [
        ("a.png", "0"), ("b.tif", "0"), ("stack.npz", "0"), ("stack.npz", "1")]
    assert all(r["label"] == ("tumour" if float(r["p_tumour"]) >= 0.5 else "normal") for r in rows)
    assert "10 image(s) predicted" in capsys.readouterr().out


def test_bad_inputs_are_listed_and_the_others_still_predicted(trained, tmp_path, capsys):
    good = patches(1)[0]
    Image.fromarray(good).save(tmp_path / "good.png")
    Image.fromarray(good[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(good[:40, :40]).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    np.savez(tmp_path / "keys.npz", labels=np.zeros(3))
    inputs = ["good.png", "gray.png", "small.png", "broken.png", "keys.npz", "missing.png"]
    code = run_cli("predict", trained.cnn, *[tmp_path / name for name in inputs], "--out", tmp_path / "p.csv")
    assert code == 1
    assert [r["source"].split("/")[-1] for r in read_rows(tmp_path / "p.csv")] == ["good.png"]
    err = capsys.readouterr().err
    assert "5 input(s) not predicted" in err
    for reason in ("gray.png: 1 channel(s); the model takes 3 (RGB)",
                   "small.png: 40x40 pixels is smaller than the model's 96x96 input",
                   "broken.png: not a readable PNG, JPEG or TIFF image",
                   "keys.npz: holds ['labels']; expected an image array named one of x, images, image",
                   "missing.png: no such file or folder"):
        assert reason in err


def test_nothing_predictable_exits_2_without_output(trained, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"nope")
    assert run_cli("predict", trained.cnn, tmp_path / "broken.png", "--out", tmp_path / "p.csv") == 2
    assert not (tmp_path / "p.csv").exists()


def test_d4_tta_averages_the_eight_elements_for_a_plain_cnn(trained, tmp_path):
    images = patches(3, seed=2)
    np.savez(tmp_path / "x.npz", x=images)
    assert run_cli("predict", trained.cnn, tmp_path / "x.npz", "--tta", "d4", "--out", tmp_path / "p.csv") == 0
    model = load(trained.cnn)
    expected = np.mean([model.probabilities(np.ascontiguousarray(transform(images, k, f))) for k, f in D4_ELEMENTS],
                       axis=0)
    got = [float(r["p_tumour"]) for r in read_rows(tmp_path / "p.csv")]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(expected - model.probabilities(images)).max() > 1e-4  # so the averaging did something


def test_d4_tta_is_skipped_for_an_invariant_model(trained, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=patches(2))
    assert run_cli("predict", trained.gcnn, tmp_path / "x.npz", "--tta", "d4", "--out", tmp_path / "p.csv") == 0
    assert "--tta d4 skipped: the model is invariant to all eight rot90/flips" in capsys.readouterr().out


def test_segmentation_writes_masks_and_object_counts(trained, tmp_path):
    from skimage.measure import label

    from runner.data.synthetic import generate

    tiles, _ = generate("segmentation", 5, "test", 2, 32)
    wide = np.concatenate([tiles[0], tiles[1][:, :18]], axis=1)  # 32 x 50: padded to two tiles
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(tiles[0]).save(tmp_path / "tile.png")
    assert run_cli("predict", trained.unet, tmp_path / "tile.png", tmp_path / "wide.png", "--tta", "d4",
                   "--out", tmp_path / "seg.csv") == 0
    rows = read_rows(tmp_path / "seg.csv")
    assert [r["mask"] for r in rows] == ["seg_masks/tile_0.png", "seg_masks/wide_0.png"]
    masks = [np.asarray(Image.open(tmp_path / r["mask"])) for r in rows]
    assert masks[0].shape == (32, 32) and masks[1].shape == (32, 50)
    for row, mask in zip(rows, masks):
        assert int(row["objects"]) == label(mask > 0, connectivity=1).max()
        assert float(row["foreground_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
    model = load(trained.unet)
    expected = np.mean([np.rot90(model.probabilities(np.ascontiguousarray(transform(tiles[:1], k, f))), -k,
                                 axes=(1, 2))[:, :, ::-1 if f else 1] for k, f in D4_ELEMENTS], axis=0)[0]
    np.testing.assert_array_equal(masks[0] > 0, expected >= 0.5)
    np.testing.assert_array_equal(masks[1][:, :32] > 0, masks[0] > 0)  # the left tile is the same image
