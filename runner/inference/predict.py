"""Predict with an exported model on patches: batched, with optional D4 test-time augmentation.

Classification centre-crops each image to the model's input and writes one CSV row per image: source, index, the
probability of class 1 for a binary model (p_tumour for PCam's normal/tumour) or one probability per class for K > 2
(p_<class name>, see `probability_columns`), and the predicted class name (label). Segmentation tiles each image (mirror-padded to whole tiles), writes a mask PNG per image and a
CSV of object counts. Inputs that cannot be predicted are returned as problems; the rest are still predicted.
"""
from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runner import atomic as files
from runner.inference import inputs
from runner.inference.artifact import D4_ELEMENTS, Artifact, element_name, transform, untransform
from runner.inference.images import DEFAULT_MAX_PIXELS, BadImage, centre_crop, check_size, encode_png

TTA_MODES = ("none", "d4")
THRESHOLD = 0.5


@dataclass(frozen=True)
class PredictResult:
    out: Path
    predicted: int
    seconds: float
    problems: list[inputs.Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- test-time augmentation ------------------------------------------------------------------------------------

def tta_note(model: Artifact, tta: str) -> str | None:
    """Why --tta d4 is skipped: the exported model already has all eight rot90/flips as exact symmetries."""
    if tta != "d4":
        return None
    exact = set(model.invariant_elements())
    if all(element_name(k, f) in exact for k, f in D4_ELEMENTS):
        kind = model.meta["symmetry"]["kind"]
        worst = max(model.meta["symmetry"]["grid_errors"].values())
        return (f"--tta d4 skipped: the model is {kind} to all eight rot90/flips (measured error {worst:.1e}), "
                "so averaging over them changes nothing")
    return None


def probabilities(model: Artifact, images: np.ndarray, tta: str) -> np.ndarray:
    """Class probabilities (N, K) or P(foreground) (N, H, W), averaged over the D4 elements when tta == 'd4'."""
    run = model.class_probabilities if model.task == "classification" else model.probabilities
    if tta != "d4":
        return run(images)
    total = None
    for k, flip in D4_ELEMENTS:
        p = run(np.ascontiguousarray(transform(images, k, flip)))
        p = p if model.task == "classification" else untransform(p, k, flip)
        total = p if total is None else total + p
    return total / len(D4_ELEMENTS)


# ---- classification --------------------------------------------------------------------------------------------

def batches(stream: Iterable[inputs.Item], size: int) -> Iterator[list[inputs.Item]]:
    batch: list[inputs.Item] = []
    for item in stream:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def cropped(stream: Iterable[inputs.Item | inputs.Problem], size: tuple[int, int],
            problems: list[inputs.Problem]) -> Iterator[inputs.Item]:
    """Items centre-cropped to the model's input; unreadable or too small ones go to `problems`."""
    for item in stream:
        if isinstance(item, inputs.Problem):
            problems.append(item)
            continue
        try:
            yield inputs.Item(item.source, item.index, centre_crop(item.image, size))
        except BadImage as exc:
            problems.append(inputs.Problem(_name(item), str(exc)))


def classify(model: Artifact, stream: Iterable[inputs.Item | inputs.Problem], tta: str, batch_size: int,
             problems: list[inputs.Problem], advance: Callable[[int], None]) -> list[tuple[str, int, np.ndarray]]:
    """(source, index, class probabilities (K,)) per predictable image."""
    rows = []
    tta = "none" if tta_note(model, tta) else tta
    for batch in batches(cropped(stream, model.input_size, problems), batch_size):
        p = probabilities(model, np.stack([item.image for item in batch]), tta)
        rows += [(item.source, item.index, pi) for item, pi in zip(batch, p)]
        advance(len(batch))
    return rows


def predicted_class(names: list[str], p: np.ndarray) -> str:
    """The class name for one image's probabilities: P(class 1) >= THRESHOLD for two classes, else the argmax."""
    return names[int(p[1] >= THRESHOLD)] if len(names) == 2 else names[int(np.argmax(p))]


def probability_columns(names: list[str]) -> list[str]:
    """The CSV's probability columns: `p_<class 1>` for two classes (`p_tumour` for PCam), one per class for more.

    A name is made CSV- and identifier-safe (runs of anything but letters, digits and _ become one _); an empty
    result becomes class<k>, and a name that would repeat an earlier one (ignoring case) gets _2, _3, ...
    """
    safe, seen = [], set()
    for k, name in enumerate(names):
        base = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or f"class{k}"
        column, n = f"p_{base}", 1
        while column.lower() in seen:
            n += 1
            column = f"p_{base}_{n}"
        seen.add(column.lower())
        safe.append(column)
    return safe[1:] if len(names) == 2 else safe


def class_values(names: list[str], p: np.ndarray) -> list[float]:
    """The values under `probability_columns(names)` for one image."""
    return [float(p[1])] if len(names) == 2 else [float(v) for v in p]


def classification_csv(names: list[str], rows: list[tuple[str, int, np.ndarray]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "index", *probability_columns(names), "label"])
    writer.writerows((s, i, *(f"{v:.6f}" for v in class_values(names, p)), predicted_class(names, p))
                     for s, i, p in rows)
    return buffer.getvalue()


# ---- segmentation ----------------------------------------------------------------------------------------------

def segment_image(model: Artifact, image: np.ndarray, tta: str, batch_size: int) -> np.ndarray:
    """P(foreground) (H, W) for an image of any size >= the model's tile: mirror-padded whole tiles, stitched."""
    tile_h, tile_w = model.input_size
    check_size(image, (tile_h, tile_w))
    height, width = image.shape[:2]
    rows, cols = -(-height // tile_h), -(-width // tile_w)
    padded = np.pad(image, ((0, rows * tile_h - height), (0, cols * tile_w - width), (0, 0)), mode="symmetric")
    tiles = padded.reshape(rows, tile_h, cols, tile_w, 3).transpose(0, 2, 1, 3, 4).reshape(-1, tile_h, tile_w, 3)
    probs = np.concatenate([probabilities(model, tiles[start:start + batch_size], tta)
                            for start in range(0, len(tiles), batch_size)])
    stitched = probs.reshape(rows, cols, tile_h, tile_w).transpose(0, 2, 1, 3).reshape(rows * tile_h, cols * tile_w)
    return stitched[:height, :width]


def object_count(mask: np.ndarray) -> int:
    from skimage.measure import label

    return int(label(mask, connectivity=1).max())


def segment(model: Artifact, stream: Iterable[inputs.Item | inputs.Problem], tta: str, batch_size: int,
            problems: list[inputs.Problem], masks: Path, advance: Callable[[int], None]) -> list[tuple]:
    rows = []
    tta = "none" if tta_note(model, tta) else tta
    for item in stream:
        if isinstance(item, inputs.Problem):
            problems.append(item)
            continue
        try:
            mask = segment_image(model, item.image, tta, batch_size) >= THRESHOLD
        except BadImage as exc:
            problems.append(inputs.Problem(_name(item), str(exc)))
            continue
        name = f"{Path(item.source).name.split('.')[0]}_{item.index}.png"
        files.write_bytes(masks / name, encode_png(mask))
        rows.append((item.source, item.index, f"{masks.name}/{name}", object_count(mask),
                     f"{float(mask.mean()):.6f}"))
        advance(1)
    return rows


def segmentation_csv(rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "index", "mask", "objects", "foreground_fraction"])
    writer.writerows(rows)
    return buffer.getvalue()


# ---- the command -----------------------------------------------------------------------------------------------

def predict(model: Artifact, paths: list[Path], out: Path, tta: str = "none", batch_size: int = 64,
            progress: Callable[[int], Callable[[int], None]] | None = None,
            max_pixels: int = DEFAULT_MAX_PIXELS) -> PredictResult:
    """Predict every image in `paths`; write the CSV to `out` (and masks beside it for segmentation).

    progress(total) returns a callback taking the number of images just done. An image declaring more than
    `max_pixels` pixels is a problem, refused before it is decoded.
    """
    start = time.monotonic()
    found, problems = inputs.expand(paths)
    total = sum(inputs.count(path) for path in found)
    advance = progress(total) if progress else (lambda n: None)
    stream = (entry for path in found for entry in inputs.items(path, max_pixels))
    notes = [note] if (note := tta_note(model, tta)) else []
    # No CSV when nothing could be predicted: an empty file would look like a result.
    if model.task == "classification":
        rows = classify(model, stream, tta, batch_size, problems, advance)
        if rows:
            files.write_text(out, classification_csv(model.class_names, rows))
    else:
        masks = out.with_name(out.stem + "_masks")
        rows = segment(model, stream, tta, batch_size, problems, masks, advance)
        if rows:
            files.write_text(out, segmentation_csv(rows))
            notes.append(f"masks in {masks}")
    return PredictResult(out, len(rows), time.monotonic() - start, problems, notes)


def _name(item: inputs.Item) -> str:
    return item.source if item.index == 0 and not item.source.lower().endswith(inputs.ARRAY_SUFFIXES) \
        else f"{item.source}[{item.index}]"
