"""Load an exported model folder and run it: needs numpy and onnxruntime (or torch for `.pt2`), nothing else.

This file imports no other module of this code base, so it works without escnn or the training code; it may even
be copied next to an artifact and used on its own:

    from artifact import load
    model = load("exported/")                  # model.json + model.onnx
    p = model.probabilities(images)            # (N, H, W, 3) uint8 RGB -> (N,) P(class 1) of a binary model,
                                               # (N, K) for K classes, or (N, H, W) masks
    p = model.class_probabilities(images)      # (N, K) for any classifier, columns in model.class_names order

A folder holds `model.json` (what the model expects and how it was made), `model.onnx` and `model.pt2`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
META_FILE, ONNX_FILE, PT2_FILE = "model.json", "model.onnx", "model.pt2"
BACKENDS = ("onnx", "pt2")
# The eight rot90/flip elements, named as model.json's symmetry section names them: mirror the width axis, then
# rotate counter-clockwise by k quarter turns.
D4_ELEMENTS = tuple((k, flip) for flip in (False, True) for k in range(4))


class ArtifactError(ValueError):
    """A folder that is not a usable exported model; the message says which file and what to do."""


def element_name(quarter_turns: int, flip: bool) -> str:
    return f"rot{90 * quarter_turns}" + ("+flip" if flip else "")


def transform(images: np.ndarray, quarter_turns: int, flip: bool) -> np.ndarray:
    """Apply a D4 element to (N, H, W, ...) arrays (images NHWC or masks NHW)."""
    if flip:
        images = images[:, :, ::-1]
    return np.rot90(images, quarter_turns, axes=(1, 2))


def untransform(images: np.ndarray, quarter_turns: int, flip: bool) -> np.ndarray:
    """The inverse of `transform`: rotate back, then mirror."""
    images = np.rot90(images, -quarter_turns, axes=(1, 2))
    return images[:, :, ::-1] if flip else images


def read_meta(folder: str | Path) -> dict[str, Any]:
    """model.json of `folder`, checked for this loader's format version."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} not found; pass the folder written by `python -m runner export`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} cannot be read ({exc}); export the model again") from exc
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {version!r}; this loader reads version {FORMAT_VERSION}: "
                            "export the model again with this version of the code")
    return meta


@dataclass(frozen=True)
class Artifact:
    """An exported model ready to run. `run` maps normalised float32 NCHW batches to raw outputs (logits)."""

    folder: Path
    meta: dict[str, Any]
    backend: str
    run: Callable[[np.ndarray], np.ndarray]

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = self.meta["input"]["size"]
        return int(height), int(width)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["class_names"])

    @property
    def binary(self) -> bool:
        """A two-class classifier, whose results are P(class 1) (P(tumour) for PCam) and a label."""
        return self.task == "classification" and self.num_classes == 2

    @property
    def microns_per_pixel(self) -> float:
        return float(self.meta["microns_per_pixel"])

    def invariant_elements(self) -> list[str]:
        """The D4 elements under which the exported model's output was measured unchanged (equivariant for masks)."""
        return list(self.meta["symmetry"]["exact_elements"])

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> normalised float32 (N, 3, H, W), as the model was trained."""
        norm = self.meta["normalisation"]
        x = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2), dtype=np.float32)
        return (x * np.float32(norm["scale"]) - np.float32(norm["mean"])) / np.float32(norm["std"])

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.run(self.preprocess(images))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Classification: P(class 1) per image (N,) for a binary model (P(tumour) for PCam), the class
        probabilities (N, K) for K > 2 classes. Segmentation: foreground probability (N, H, W)."""
        if self.task != "classification":
            return 1.0 / (1.0 + np.exp(-self.logits(images).astype(np.float64)[:, 0]))
        p = self.class_probabilities(images)
        return p[:, 1] if self.binary else p

    def class_probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, K) softmax of a classifier's logits; column k is P(class_names[k]), rows sum to 1."""
        if self.task != "classification":
            raise ArtifactError(f"class probabilities need a classification model; this one is {self.task}")
        out = self.logits(images).astype(np.float64)
        shifted = np.exp(out - out.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def load(folder: str | Path, backend: str = "onnx", threads: int = 0) -> Artifact:
    """The artifact in `folder`, run by onnxruntime (`onnx`, default) or torch (`pt2`). threads: 0 = runtime default."""
    folder = Path(folder)
    meta = read_meta(folder)
    if backend not in BACKENDS:
        raise ArtifactError(f"backend {backend!r} is not known; allowed: {', '.join(BACKENDS)}")
    file = folder / (ONNX_FILE if backend == "onnx" else PT2_FILE)
    if not file.is_file():
        raise ArtifactError(f"{file} not found; export the model again")
    run = _onnx_runner(file, threads) if backend == "onnx" else _pt2_runner(file, threads)
    return Artifact(folder=folder, meta=meta, backend=backend, run=run)


def _onnx_runner(file: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
    try:
        session = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
        raise ArtifactError(f"{file} cannot be loaded by onnxruntime ({exc}); export the model again") from exc
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _pt2_runner(file: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        module = torch.export.load(str(file)).module()
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
        raise ArtifactError(f"{file} cannot be loaded by torch.export ({exc}); export the model again") from exc

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run
