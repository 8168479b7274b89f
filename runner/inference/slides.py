"""Whole-slide tumour heatmaps: tissue mask, patches at the model's scale, batched inference, CSV/PNG/GeoJSON.

A binary model's outputs are P(class 1) per patch (p_tumour for PCam) and a heatmap of it. A model of K > 2 classes
writes one probability column per class and the predicted class into tiles.csv and tiles.geojson, and no
heatmap.png: no one probability says where each class is, and a map of the winning class's probability would show
confidence, not the class; the summary line says so.

The slide is opened with OpenSlide (any format it reads, including generic tiled pyramidal TIFF). Tissue is found
on a thumbnail by Otsu's threshold on colour saturation (glass is white or grey, stained tissue is coloured);
patches with less tissue than `min_tissue` are skipped. Each patch covers the model's input at the model's microns
per pixel: read from the pyramid level just finer than needed and resized, so a 0.25 um/px slide and a PCam
model at 0.972 um/px read 4x4-downsampled patches. Coordinates in every output are level-0 pixels.

OpenSlide reads lazily, so a slide's header can declare far more pixels than its file holds (missing tiles read as
glass). Before anything is read, the region read at once (the thumbnail's pyramid level, one patch) must stay
within `max_pixels`, and the patch grid within MAX_PATCHES, so a lying header is refused instead of allocated.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner import atomic as files
from runner.inference.artifact import Artifact
from runner.inference.images import DEFAULT_MAX_PIXELS
from runner.inference.predict import class_values, predicted_class, probabilities, probability_columns, tta_note

THUMBNAIL_SIDE = 1024  # longest side of the thumbnail the tissue mask and heatmap are drawn on
MIN_SATURATION = 0.05  # below this, a pixel is glass even when Otsu's threshold falls lower (an all-glass slide)
TUMOUR_COLOUR, NORMAL_COLOUR = [220, 40, 40], [60, 120, 220]
# QuPath's own class names and colours for PCam's two classes; other classes keep their names and take a colour of
# matplotlib's tab10 palette by label.
QUPATH_CLASSES = {"tumour": ("Tumor", TUMOUR_COLOUR), "normal": ("Normal", NORMAL_COLOUR)}
# Candidate patches per slide: a 200k x 100k scan at 0.25 um/px gives 135,000 for a PCam model (540,000 at half
# stride); the grid is held in memory, so a header declaring a billion-pixel side is refused here.
MAX_PATCHES = 1_000_000


class SlideError(ValueError):
    """A slide that cannot be processed as asked; the message says what to pass or fix."""


@dataclass(frozen=True)
class SlideRequest:
    slide: Path
    out: Path  # a folder: tiles.csv, heatmap.png, tiles.geojson
    mpp: float | None = None  # the slide's microns per pixel, when the file does not say
    stride: int | None = None  # model pixels between patch origins (default: the patch side)
    min_tissue: float = 0.5
    batch_size: int = 64
    tta: str = "none"
    max_pixels: int = DEFAULT_MAX_PIXELS  # the largest region read at once: the thumbnail's level, one patch


@dataclass(frozen=True)
class Tile:
    x: int
    y: int
    size: int
    tissue: float
    probabilities: tuple[float, ...] = ()  # per class, in the model's class order; empty until scored

    @property
    def p(self) -> float:
        """P(class 1): a binary model's positive class (tumour for PCam)."""
        return self.probabilities[1] if self.probabilities else math.nan


@dataclass(frozen=True)
class SlideResult:
    out: Path
    tiles: list[Tile]
    skipped: int
    seconds: float
    class_names: tuple[str, ...] = ("normal", "tumour")

    @property
    def summary(self) -> str:
        rate = len(self.tiles) / max(self.seconds, 1e-9)
        scored = (f"{len(self.tiles)} tissue patches scored, {self.skipped} background patches skipped, in "
                  f"{self.seconds:.1f} s ({rate:,.0f} patches/s)")
        names = list(self.class_names)
        if len(names) == 2:
            top = max((t.p for t in self.tiles), default=math.nan)
            return (f"{scored}; highest {probability_columns(names)[0]} {top:.3f}; "
                    f"wrote tiles.csv, heatmap.png and tiles.geojson to {self.out}")
        counts = {name: 0 for name in names}
        for t in self.tiles:
            counts[predicted_class(names, np.asarray(t.probabilities))] += 1
        return (f"{scored}; predicted {', '.join(f'{name} {n}' for name, n in counts.items())}; wrote tiles.csv and "
                f"tiles.geojson to {self.out}; no heatmap.png: a {len(names)}-class model has no single probability "
                "to map (tiles.csv has each class's)")


def predict_slide(model: Artifact, request: SlideRequest,
                  progress: Callable[[int], Callable[[int], None]] | None = None) -> SlideResult:
    start = time.monotonic()
    _check(model, request)
    slide = open_slide(request.slide)
    factor = model.microns_per_pixel / slide_mpp(slide, request.mpp, request.slide)
    patch = model.input_size[0]
    size, stride = round(patch * factor), round((request.stride or patch) * factor)
    check_extent(slide, request, size, stride, patch)
    with _reading(request.slide):
        thumbnail = np.asarray(slide.get_thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE)).convert("RGB"))
        scale = thumbnail.shape[1] / slide.dimensions[0]
        candidates = grid(slide.dimensions, size, stride)
        mask = tissue_mask(thumbnail)
        tiles = [t for t in (measure_tissue(mask, t, scale) for t in candidates) if t.tissue >= request.min_tissue]
        scored = score(model, slide, tiles, request, progress)
    write_outputs(request.out, scored, thumbnail, scale, model.class_names)
    return SlideResult(request.out, scored, len(candidates) - len(scored), time.monotonic() - start,
                       tuple(model.class_names))


def score(model: Artifact, slide, tiles: list[Tile], request: SlideRequest,
          progress: Callable[[int], Callable[[int], None]] | None) -> list[Tile]:
    """The tiles with their class probabilities, read and predicted batch by batch."""
    advance = progress(len(tiles)) if progress else (lambda n: None)
    tta = "none" if tta_note(model, request.tta) else request.tta
    scored = []
    for batch in _batches(tiles, request.batch_size):
        images = np.stack([read_patch(slide, t, model.input_size[0]) for t in batch])
        scored += [Tile(t.x, t.y, t.size, t.tissue, tuple(float(v) for v in p))
                   for t, p in zip(batch, probabilities(model, images, tta))]
        advance(len(batch))
    return scored


def _check(model: Artifact, request: SlideRequest) -> None:
    if model.task != "classification":
        raise SlideError("whole-slide heatmaps need a classification model; this artifact is "
                         f"{model.task}: predict its tiles as images instead")
    if model.meta.get("microns_per_pixel") is None:
        raise SlideError("the model's microns per pixel is unknown (model.json microns_per_pixel is null)")
    if request.stride is not None and request.stride < 1:
        raise SlideError(f"--stride {request.stride}: must be >= 1 (model pixels)")
    if not 0.0 <= request.min_tissue <= 1.0:
        raise SlideError(f"--min-tissue {request.min_tissue}: must be in [0, 1]")


# ---- reading the slide -----------------------------------------------------------------------------------------

def check_extent(slide, request: SlideRequest, size: int, stride: int, patch: int) -> None:
    """Refuse, from the header alone, a slide whose thumbnail level, patch grid or patch reads are too large."""
    width, height = slide.dimensions
    downsample = max(width / THUMBNAIL_SIDE, height / THUMBNAIL_SIDE)
    level = slide.get_best_level_for_downsample(downsample)  # the level get_thumbnail reads whole
    level_w, level_h = slide.level_dimensions[level]
    if level_w * level_h > request.max_pixels:
        raise SlideError(
            f"{request.slide}: its thumbnail would be read whole from pyramid level {level} of {level_w}x{level_h} "
            f"pixels ({level_w * level_h:,}), more than the {request.max_pixels:,}-pixel limit: the slide lacks a "
            "coarse pyramid level, or its header declares more pixels than the file holds; add pyramid levels "
            "(e.g. vips tiffsave IN OUT --tile --pyramid) or raise --max-pixels")
    patches = _grid_count(width, size, stride) * _grid_count(height, size, stride)
    if patches > MAX_PATCHES:
        raise SlideError(
            f"{request.slide}: {width}x{height} level-0 pixels give {patches:,} candidate patches of {size} pixels "
            f"every {stride}, more than {MAX_PATCHES:,}: check the slide's size (its header may declare more than "
            "the file holds) and its scale (--mpp), or pass a larger --stride")
    read = round(size / slide.level_downsamples[slide.get_best_level_for_downsample(size / patch)])
    if read * read > request.max_pixels:
        raise SlideError(
            f"{request.slide}: each patch would be read as {read}x{read} pixels, more than the "
            f"{request.max_pixels:,}-pixel limit: the slide has no pyramid level near the model's scale; check "
            "--mpp, add pyramid levels or raise --max-pixels")


def _grid_count(extent: int, size: int, stride: int) -> int:
    return max(0, (extent - size) // max(stride, 1) + 1)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """OpenSlide's read errors (a damaged or truncated file) as a SlideError naming the file."""
    import openslide

    try:
        yield
    except openslide.OpenSlideError as exc:
        raise SlideError(f"{path}: OpenSlide failed while reading it ({exc}); the file may be damaged or "
                         "truncated: export or copy it again") from exc


def open_slide(path: Path):
    import openslide

    if not path.is_file():
        raise SlideError(f"slide {path} not found")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as exc:
        raise SlideError(f"{path} is not a slide OpenSlide can read ({exc})") from exc


def slide_mpp(slide, override: float | None, path: Path) -> float:
    """Level-0 microns per pixel: --mpp, else the file's openslide.mpp-x."""
    if override is not None:
        if not override > 0:
            raise SlideError(f"--mpp {override}: must be > 0")
        return float(override)
    value = slide.properties.get("openslide.mpp-x")
    if value is None:
        raise SlideError(f"{path} does not record its microns per pixel; pass --mpp (e.g. 0.25 for 40x scans)")
    return float(value)


def grid(dimensions: tuple[int, int], size: int, stride: int) -> list[Tile]:
    """Whole patches of `size` level-0 pixels every `stride` pixels, row by row."""
    width, height = dimensions
    return [Tile(x, y, size, 0.0) for y in range(0, height - size + 1, max(stride, 1))
            for x in range(0, width - size + 1, max(stride, 1))]


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """Tissue pixels of an RGB thumbnail: saturation above Otsu's threshold (and above glass's faint tint)."""
    from skimage.filters import threshold_otsu

    rgb = thumbnail.astype(np.float32) / 255.0
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    threshold = threshold_otsu(saturation) if np.ptp(saturation) > 0 else 1.0
    return saturation > max(threshold, MIN_SATURATION)


def measure_tissue(mask: np.ndarray, tile: Tile, scale: float) -> Tile:
    """The tile with the share of its thumbnail window that is tissue."""
    top, left = int(tile.y * scale), int(tile.x * scale)
    bottom = max(int(math.ceil((tile.y + tile.size) * scale)), top + 1)
    right = max(int(math.ceil((tile.x + tile.size) * scale)), left + 1)
    window = mask[top:bottom, left:right]
    return Tile(tile.x, tile.y, tile.size, float(window.mean()) if window.size else 0.0)


def read_patch(slide, tile: Tile, side: int) -> np.ndarray:
    """The tile as a side x side RGB patch at the model's scale."""
    from PIL import Image

    level = slide.get_best_level_for_downsample(tile.size / side)
    downsample = slide.level_downsamples[level]
    read = max(1, round(tile.size / downsample))
    region = slide.read_region((tile.x, tile.y), level, (read, read)).convert("RGB")
    if read != side:
        region = region.resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(region)


def _batches(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    for start in range(0, len(tiles), size):
        yield tiles[start:start + size]


# ---- outputs ---------------------------------------------------------------------------------------------------

def write_outputs(out: Path, tiles: list[Tile], thumbnail: np.ndarray, scale: float, names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "tiles.csv", tiles_csv(tiles, names))
    if len(names) == 2:
        files.write_bytes(out / "heatmap.png", heatmap_png(thumbnail, tiles, scale))
    files.write_text(out / "tiles.geojson", json.dumps(geojson(tiles, names)))


def tiles_csv(tiles: list[Tile], names: list[str]) -> str:
    """x, y, size, tissue, then p_tumour (binary) or p_<class> per class and the predicted label (K > 2)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    label = [] if len(names) == 2 else ["label"]
    writer.writerow(["x", "y", "size", "tissue", *probability_columns(names), *label])
    for t in tiles:
        p = np.asarray(t.probabilities)
        writer.writerow((t.x, t.y, t.size, f"{t.tissue:.3f}", *(f"{v:.6f}" for v in class_values(names, p)),
                         *([predicted_class(names, p)] if label else [])))
    return buffer.getvalue()


def heat_grid(shape: tuple[int, int], tiles: list[Tile], scale: float) -> np.ndarray:
    """Mean p_tumour of the tiles covering each thumbnail pixel; NaN where none does (background)."""
    total, count = np.zeros(shape), np.zeros(shape)
    for t in tiles:
        top, left = int(t.y * scale), int(t.x * scale)
        bottom, right = int(math.ceil((t.y + t.size) * scale)), int(math.ceil((t.x + t.size) * scale))
        total[top:bottom, left:right] += t.p
        count[top:bottom, left:right] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def heatmap_png(thumbnail: np.ndarray, tiles: list[Tile], scale: float) -> bytes:
    """The thumbnail with p_tumour over scored tissue: yellow to red, more opaque the higher p (low p stays clear)."""
    from matplotlib import colormaps
    from PIL import Image

    heat = heat_grid(thumbnail.shape[:2], tiles, scale)
    p = np.nan_to_num(heat)[..., None]
    colours = colormaps["YlOrRd"](p[..., 0])[..., :3] * 255.0
    alpha = np.where(np.isnan(heat)[..., None], 0.0, 0.1 + 0.75 * p)
    blended = (1 - alpha) * thumbnail + alpha * colours
    buffer = io.BytesIO()
    Image.fromarray(blended.round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def geojson(tiles: list[Tile], names: list[str]) -> dict[str, Any]:
    """Tiles as QuPath detections (File > Import objects): square polygons in level-0 pixels, classified by the
    predicted class, its probabilities as measurements."""
    return {"type": "FeatureCollection", "features": [_feature(t, names) for t in tiles]}


def qupath_class(names: list[str], label: int) -> tuple[str, list[int]]:
    """QuPath's name and colour for class `label`."""
    from matplotlib import colormaps

    known = QUPATH_CLASSES.get(names[label].lower())
    if known:
        return known
    return names[label], [round(255 * c) for c in colormaps["tab10"](label % 10)[:3]]


def _feature(t: Tile, names: list[str]) -> dict[str, Any]:
    p = np.asarray(t.probabilities)
    name, colour = qupath_class(names, names.index(predicted_class(names, p)))
    ring = [[t.x, t.y], [t.x + t.size, t.y], [t.x + t.size, t.y + t.size], [t.x, t.y + t.size], [t.x, t.y]]
    measurements = {c: round(v, 6) for c, v in zip(probability_columns(names), class_values(names, p))}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "detection", "classification": {"name": name, "color": colour},
                           "measurements": {**measurements, "tissue": round(t.tissue, 3)}}}
