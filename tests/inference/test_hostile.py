"""Decompression bombs for `predict`: refused from their headers, fast, without the memory they declare.

Every refusal runs under an address-space cap a little above what the process already holds, so code that started
decoding a bomb fails here with MemoryError instead of taking gigabytes from the machine running the tests.
"""
from __future__ import annotations

import resource
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.inference import images, inputs
from runner.inference.slides import MAX_PATCHES
from tests.inference import bombs
from tests.inference.conftest import run_cli

HEADROOM = 2 * 2**30  # address space allowed beyond the process's own; a decoded bomb needs 7.5 GB or more
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning",
                                        "ignore:.*series shape does not match page shape")


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextmanager
def bounded_memory(headroom: int = HEADROOM) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def measured(step: Callable[[], object]) -> tuple[object, float, int]:
    """step()'s result (or the exception it raised), its seconds and the peak Python-visible allocation in bytes."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        with bounded_memory():
            result: object = step()
    except Exception as exc:  # noqa: BLE001 - the caller asserts on what was raised
        result = exc
    seconds = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


BOMBS = {"tiff": ("bomb.tif", bombs.tiff_bomb, "50000x50000"),
         "lying tiff": ("liar.tif", bombs.lying_tiff, "50000x50000"),
         "png": ("bomb.png", bombs.png_bomb, "10000x10000")}


@pytest.mark.parametrize("kind", BOMBS)
def test_an_image_bomb_is_refused_from_its_header(tmp_path, kind):
    name, write, declared = BOMBS[kind]
    path = write(tmp_path / name)
    error, seconds, peak = measured(lambda: images.read(path))
    assert isinstance(error, images.TooLarge), error
    assert f"declares {declared} pixels" in str(error) and "67,108,864-pixel limit" in str(error)
    assert "raise --max-pixels" in str(error)
    assert seconds < 1.0
    assert peak < 3 * path.stat().st_size + 16 * 2**20  # the file's bytes (and imports), not its pixels


def test_a_stack_declaring_huge_images_is_refused_before_reading(tmp_path):
    path = bombs.h5_bomb(tmp_path / "bomb_x.h5")
    found, seconds, peak = measured(lambda: list(inputs.items(path)))
    assert [type(x) for x in found] == [inputs.Problem], found
    assert "declares 50000x50000 pixels" in found[0].reason
    assert seconds < 1.0 and peak < 2**20


def test_a_stack_in_an_npz_is_checked_from_its_header(tmp_path):
    np.savez_compressed(tmp_path / "wide.npz", x=np.zeros((2, 100, 200, 3), np.uint8))
    found = list(inputs.items(tmp_path / "wide.npz", max_pixels=100 * 199))
    assert [f.reason for f in found] == [
        "declares 100x200 pixels (20,000), more than the 19,900-pixel limit; crop or tile it, or raise --max-pixels"]
    assert [f.index for f in inputs.items(tmp_path / "wide.npz", max_pixels=100 * 200)] == [0, 1]


def test_the_limit_lets_real_images_through(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    np.testing.assert_array_equal(images.read(tmp_path / "a.png", max_pixels=300 * 400), image)
    with pytest.raises(images.TooLarge, match="declares 300x400 pixels"):
        images.read(tmp_path / "a.png", max_pixels=300 * 400 - 1)


def test_predict_lists_a_bomb_and_predicts_the_rest(trained, tmp_path, capsys):
    bomb = bombs.tiff_bomb(tmp_path / "bomb.tif")
    Image.fromarray(np.full((96, 96, 3), 180, np.uint8)).save(tmp_path / "ok.png")
    with bounded_memory():
        code = run_cli("predict", trained.cnn, bomb, tmp_path / "ok.png", "--out", tmp_path / "p.csv")
    assert code == 1
    err = capsys.readouterr().err
    assert f"{bomb}: declares 50000x50000 pixels (2,500,000,000), more than the 67,108,864-pixel limit" in err
    assert [line.split(",")[0] for line in (tmp_path / "p.csv").read_text().splitlines()[1:]] == [
        str(tmp_path / "ok.png")]


def test_max_pixels_is_an_option_of_predict(trained, tmp_path, capsys):
    image, out = tmp_path / "ok.png", tmp_path / "p.csv"
    Image.fromarray(np.full((96, 96, 3), 180, np.uint8)).save(image)
    assert run_cli("predict", trained.cnn, image, "--max-pixels", "9e3", "--out", out) == 2
    assert "declares 96x96 pixels (9,216), more than the 9,000-pixel limit" in capsys.readouterr().err
    assert run_cli("predict", trained.cnn, image, "--max-pixels", "9216", "--out", out) == 0
    with pytest.raises(SystemExit):
        run_cli("predict", trained.cnn, image, "--max-pixels", "many")
    assert "'many' is not a number of pixels" in capsys.readouterr().err


SLIDES = {
    "one huge level": (bombs.tiff_bomb, "its thumbnail would be read whole from pyramid level 0 of 50000x50000"),
    "lying level 0": (bombs.lying_tiff, "its thumbnail would be read whole from pyramid level 0 of 50000x50000"),
    "lying pyramid": (bombs.lying_pyramid, f"200000x200000 level-0 pixels give 4,338,889 candidate patches of 96 "
                                           f"pixels every 96, more than {MAX_PATCHES:,}"),
}


@pytest.mark.parametrize("kind", SLIDES)
def test_a_slide_whose_header_declares_too_much_is_refused(trained, tmp_path, capsys, kind):
    write, message = SLIDES[kind]
    slide = write(tmp_path / "slide.tif")
    code, seconds, peak = measured(lambda: run_cli("predict", trained.cnn, slide, "--wsi", "--out", tmp_path / "o"))
    assert code == 2, code  # an exception here (MemoryError from the cap) means the slide was being read
    err = capsys.readouterr().err
    assert f"error: {slide}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert seconds < 5.0 and peak < 64 * 2**20


def test_a_slide_without_a_pyramid_is_read_once_the_limit_allows(trained, tmp_path, capsys):
    slide = bombs.lying_tiff(tmp_path / "slide.tif", side=4096)  # 4096^2 declared, 512^2 held: the rest is glass
    assert run_cli("predict", trained.cnn, slide, "--wsi", "--max-pixels", "4e6", "--out", tmp_path / "o") == 2
    assert "of 4096x4096 pixels (16,777,216), more than the 4,000,000-pixel limit" in capsys.readouterr().err
    assert run_cli("predict", trained.cnn, slide, "--wsi", "--out", tmp_path / "o") == 0
    assert "0 tissue patches scored" in capsys.readouterr().out
