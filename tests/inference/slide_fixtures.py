"""A whole-slide image written the way scanners' generic TIFFs are: tiled, zlib, a pyramid of halved levels.

The tissue is a block of synthetic PCam-like patches (the training data's renderer, another seed) on glass, with a
planted region of tumour-positive patches; each patch sits on the 96-pixel grid the model reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from runner.data.synthetic import generate

PATCH = 96


@dataclass(frozen=True)
class PlantedSlide:
    path: Path
    mpp: float
    upscale: int  # level-0 pixels per synthetic patch pixel
    tissue: tuple[slice, slice]  # grid rows, cols (in patches) holding tissue
    tumour: tuple[slice, slice]  # grid rows, cols holding tumour-positive patches

    def cell(self, x: int, y: int) -> tuple[int, int]:
        """Grid (row, col) of a tile whose level-0 origin is (x, y)."""
        side = PATCH * self.upscale
        return y // side, x // side

    def in_region(self, region: tuple[slice, slice], x: int, y: int) -> bool:
        row, col = self.cell(x, y)
        return region[0].start <= row < region[0].stop and region[1].start <= col < region[1].stop


def write_slide(path: Path, rows: int = 10, cols: int = 12, upscale: int = 1, seed: int = 7) -> PlantedSlide:
    """A slide of rows x cols patches at 0.972/upscale um/px: glass around, tissue inside, tumour in its middle."""
    tissue, tumour = (slice(2, rows - 2), slice(2, cols - 2)), (slice(4, 6), slice(5, 8))
    images, labels = generate("classification", seed, "test", 4 * rows * cols, PATCH)
    positives, negatives = iter(images[labels == 1]), iter(images[labels == 0])
    rng = np.random.default_rng(seed)
    canvas = rng.normal(238, 3, (rows * PATCH, cols * PATCH, 3)).clip(0, 255).astype(np.uint8)  # glass
    for row in range(tissue[0].start, tissue[0].stop):
        for col in range(tissue[1].start, tissue[1].stop):
            planted = tumour[0].start <= row < tumour[0].stop and tumour[1].start <= col < tumour[1].stop
            canvas[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = next(
                positives if planted else negatives)
    level = np.repeat(np.repeat(canvas, upscale, axis=0), upscale, axis=1)
    mpp = 0.972 / upscale
    with tifffile.TiffWriter(path) as tif:
        for index in range(3):
            pixels_per_cm = 1e4 / (mpp * 2**index)
            tif.write(level, tile=(128, 128), compression="zlib", photometric="rgb", subfiletype=int(index > 0),
                      resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER")
            level = level[::2, ::2]
    return PlantedSlide(path, mpp, upscale, tissue, tumour)
