"""Draws reports/examples/slide_heatmap.png: the README's whole-slide picture, end to end through the CLI.

    uv run python reports/examples/slide_heatmap.py [--keep DIR]

Trains a plain CNN on synthetic PCam-like patches (about a minute on 2 CPU cores), exports it, writes a pyramidal
TIFF slide with a planted tumour region (tests/inference/slide_fixtures.py) and runs `predict --wsi` on it; the
planted region is framed in green.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root

from PIL import Image, ImageDraw  # noqa: E402

from runner.cli import main  # noqa: E402
from tests.inference.slide_fixtures import PlantedSlide, write_slide  # noqa: E402

SPEC = """
[experiment]
name = "slide-example"
task = "classification"
seeds = [0]
[data]
train_size = 1024
valid_size = 128
test_size = 128
[train]
epochs = 4
lr = 3e-3
[eval]
rotation_angles = [0]
rotation_samples = 16
[[model]]
family = "cnn"
width = 16
depth = 3
"""


def run(*argv: object) -> None:
    code = main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(code)


def draw(folder: Path, out: Path) -> None:
    if not (folder / "model").exists():
        (folder / "spec.toml").write_text(SPEC)
        run(folder / "spec.toml", "--root", folder / "runs")
        run("export", "--root", folder / "runs", "--experiment", "slide-example", "--best", "--out", folder / "model")
    slide = write_slide(folder / "slide.tif", upscale=2)
    run("predict", folder / "model", slide.path, "--wsi", "--out", folder / "heat")
    summarise(slide, folder / "heat" / "tiles.csv")
    with Image.open(folder / "heat" / "heatmap.png") as image:
        picture = image.resize((640, round(640 * image.height / image.width)), Image.Resampling.LANCZOS)
    outline(picture, slide, picture.width / (slide.upscale * 96 * 12))
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)  # a small file for git
    print(f"wrote {out}")


def summarise(slide: PlantedSlide, tiles_csv: Path) -> None:
    with open(tiles_csv, newline="") as handle:
        rows = [(int(r["x"]), int(r["y"]), float(r["p_tumour"])) for r in csv.DictReader(handle)]
    inside = [p for x, y, p in rows if slide.in_region(slide.tumour, x, y)]
    outside = [p for x, y, p in rows if not slide.in_region(slide.tumour, x, y)]
    print(f"mean p_tumour: planted tumour {sum(inside) / len(inside):.2f} ({len(inside)} tiles), "
          f"other tissue {sum(outside) / len(outside):.2f} ({len(outside)} tiles)")


def outline(picture: Image.Image, slide: PlantedSlide, scale: float) -> None:
    """A dashed-looking frame around the planted tumour region, so a reader can check the heatmap by eye."""
    side = 96 * slide.upscale * scale
    rows, cols = slide.tumour
    box = [cols.start * side, rows.start * side, cols.stop * side, rows.stop * side]
    ImageDraw.Draw(picture).rectangle(box, outline=(0, 160, 0), width=3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (and reuse its trained model)")
    parser.add_argument("--out", type=Path, default=HERE / "slide_heatmap.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        draw(work, args.out)
