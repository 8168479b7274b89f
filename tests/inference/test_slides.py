"""Whole-slide heatmaps on a pyramidal TIFF with planted tumour: found, background skipped, outputs consistent."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.inference.conftest import run_cli
from tests.inference.slide_fixtures import write_slide


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    # Level 0 at 0.486 um/px: the 0.972 um/px model reads pyramid level 1, so the scale logic is exercised.
    return write_slide(tmp_path_factory.mktemp("slide") / "planted.tif", upscale=2)


def test_heatmap_finds_the_planted_tumour_and_skips_glass(trained, planted, tmp_path, capsys):
    out = tmp_path / "heat"
    assert run_cli("predict", trained.cnn, planted.path, "--wsi", "--out", out) == 0
    with open(out / "tiles.csv", newline="") as handle:
        tiles = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    assert {t["size"] for t in tiles} == {192.0}  # 96 model pixels at 2 slide pixels each
    in_tissue = [planted.in_region(planted.tissue, int(t["x"]), int(t["y"])) for t in tiles]
    in_tumour = np.array([planted.in_region(planted.tumour, int(t["x"]), int(t["y"])) for t in tiles])
    p = np.array([t["p_tumour"] for t in tiles])
    assert all(in_tissue)  # no glass tile was scored
    assert len(tiles) >= 0.9 * 6 * 8 and in_tumour.sum() == 6  # nearly all tissue, every tumour tile
    assert in_tumour[np.argmax(p)]  # the hottest tile is planted tumour
    assert p[in_tumour].mean() > p[~in_tumour].mean() + 0.05
    summary = capsys.readouterr().out
    assert f"{len(tiles)} tissue patches scored, {120 - len(tiles)} background patches skipped" in summary

    features = json.loads((out / "tiles.geojson").read_text())["features"]
    assert len(features) == len(tiles)
    first = features[0]
    x, y = int(tiles[0]["x"]), int(tiles[0]["y"])
    assert first["geometry"]["coordinates"][0] == [[x, y], [x + 192, y], [x + 192, y + 192], [x, y + 192], [x, y]]
    assert first["properties"]["measurements"]["p_tumour"] == pytest.approx(tiles[0]["p_tumour"], abs=1e-6)
    assert {f["properties"]["objectType"] for f in features} == {"detection"}

    heat = np.asarray(Image.open(out / "heatmap.png")).astype(int)
    assert heat.shape[1] == 1024 and heat.shape[0] == round(1024 * 10 / 12)
    corner = heat[:100, :100]  # glass: left as the thumbnail (grey-white), no overlay colour
    assert (corner.max(axis=2) - corner.min(axis=2)).max() < 30


def test_a_slide_without_scale_needs_mpp(trained, tmp_path, capsys):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 240, np.uint8), tile=(128, 128), photometric="rgb")
    assert run_cli("predict", trained.cnn, path, "--wsi", "--out", tmp_path / "o") == 2
    assert "does not record its microns per pixel; pass --mpp" in capsys.readouterr().err
    assert run_cli("predict", trained.cnn, path, "--wsi", "--mpp", "0.972", "--out", tmp_path / "o") == 0
    assert "0 tissue patches scored, 25 background patches skipped" in capsys.readouterr().out


def test_segmentation_models_and_bad_slides_are_refused(trained, planted, tmp_path, capsys):
    assert run_cli("predict", trained.unet, planted.path, "--wsi", "--out", tmp_path / "o") == 2
    assert "whole-slide heatmaps need a classification model" in capsys.readouterr().err
    (tmp_path / "fake.svs").write_bytes(b"nothing")
    assert run_cli("predict", trained.cnn, tmp_path / "fake.svs", "--wsi", "--out", tmp_path / "o") == 2
    assert "is not a slide OpenSlide can read" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
