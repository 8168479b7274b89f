"""An HTTP API for an exported model (FastAPI): the model is loaded once, when the app is made.

    POST /predict   one or several images as multipart `files` -> JSON per image: the class probabilities
                    ({class: p}) and the predicted class name (label), plus P(class 1) under the CSV's column name
                    for a binary model (p_tumour for PCam); for segmentation a PNG mask (base64) and an object
                    count per image; `?format=png` with one image returns the mask itself as image/png
    GET  /health    liveness and the job key of the loaded model
    GET  /model     model.json

A bad upload (not an image, wrong channel count, smaller than the model's input, too large) is a 4xx whose
`detail` names the file and the reason; the endpoint never answers 500 for a user's image. An image that declares
more than `max_pixels` pixels is a 413 from its header alone, before any pixel is decoded.

The response models are made with the app, from the loaded model's class names, so the OpenAPI schema (/docs,
/openapi.json) names the model's own fields and labels.
"""
from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, create_model

from runner.inference.artifact import Artifact, load
from runner.inference.images import DEFAULT_MAX_PIXELS, BadImage, TooLarge, centre_crop, decode, encode_png
from runner.inference.predict import (THRESHOLD, class_values, object_count, predicted_class, probability_columns,
                                      segment_image)

MAX_UPLOAD_BYTES = 10 * 2**20
MAX_FILES = 64
BATCH = 64  # segmentation tiles per model call


def create_app(folder: Path, max_upload_bytes: int = MAX_UPLOAD_BYTES, backend: str = "onnx",
               max_pixels: int = DEFAULT_MAX_PIXELS) -> FastAPI:
    model = load(folder, backend=backend)
    app = FastAPI(title="equivariant-pathology-runner model", version=str(model.meta["format_version"]))

    @app.middleware("http")
    async def limit_size(request: Request, call_next):
        # Refuse oversized bodies from their header before reading them.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes * MAX_FILES:
            return JSONResponse({"detail": f"request of {int(length)} bytes is too large"}, status_code=413)
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "job": model.meta["job"]["key"], "task": model.task}

    @app.get("/model")
    def metadata() -> dict[str, Any]:
        return model.meta

    @app.post("/predict", response_model=response_model(model), responses=_png_response(model))
    def predict(files: list[UploadFile] = File(...), format: str = Query("json", pattern="^(json|png)$")):
        if len(files) > MAX_FILES:
            raise HTTPException(413, f"{len(files)} files in one request; at most {MAX_FILES}")
        images = [read_upload(upload, max_upload_bytes, max_pixels) for upload in files]
        names = [upload.filename or f"file {i}" for i, upload in enumerate(files)]
        if model.task == "classification":
            return {"predictions": classify(model, names, images)}
        if format == "png":
            if len(images) != 1:
                raise HTTPException(400, "format=png returns one mask: upload exactly one image")
            mask = _checked(names[0], lambda: segment_image(model, images[0], "none", BATCH) >= THRESHOLD)
            return Response(encode_png(mask), media_type="image/png")
        return {"predictions": [segment_upload(model, name, image) for name, image in zip(names, images)]}

    return app


def read_upload(upload: UploadFile, limit: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The upload as an RGB image, or a 4xx naming the file and the reason."""
    name = upload.filename or "upload"
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{name}: larger than the {limit} byte upload limit")
    return _checked(name, lambda: decode(data, name, max_pixels))


def classify(model: Artifact, names: list[str], images: list[np.ndarray]) -> list[dict[str, Any]]:
    batch = np.stack([_checked(name, lambda: centre_crop(image, model.input_size))
                      for name, image in zip(names, images)])
    classes = model.class_names
    columns = probability_columns(classes) if model.binary else []
    return [{"file": name, **dict(zip(columns, class_values(classes, p))), "label": predicted_class(classes, p),
             "probabilities": {c: float(v) for c, v in zip(classes, p)}}
            for name, p in zip(names, model.class_probabilities(batch))]


# ---- the OpenAPI schema ----------------------------------------------------------------------------------------

class SegmentationPrediction(BaseModel):
    file: str = Field(description="the upload's file name")
    objects: int = Field(description="connected foreground regions (4-connectivity) of the mask")
    foreground_fraction: float = Field(description="share of the image's pixels in the mask")
    mask_png_base64: str = Field(description="the mask as an 8-bit PNG (255 = foreground), base64")


class SegmentationPredictions(BaseModel):
    predictions: list[SegmentationPrediction]


def response_model(model: Artifact) -> type[BaseModel]:
    """The JSON answer of POST /predict for this model: its class names and, if binary, its P(class 1) field."""
    if model.task != "classification":
        return SegmentationPredictions
    classes = model.class_names
    fields: dict[str, Any] = {"file": (str, Field(description="the upload's file name"))}
    if model.binary:
        fields[probability_columns(classes)[0]] = (float, Field(description=f"P({classes[1]})"))
    fields["label"] = (Literal[tuple(classes)], Field(description="the predicted class" + (
        f": {classes[1]} when P({classes[1]}) >= {THRESHOLD:g}" if model.binary else ": the most probable")))
    fields["probabilities"] = (dict[str, float], Field(description=f"P(class) for {', '.join(classes)}; sums to 1"))
    prediction = create_model("ClassPrediction", **fields)
    return create_model("ClassPredictions", predictions=(list[prediction], ...))


def _png_response(model: Artifact) -> dict[int | str, dict[str, Any]]:
    if model.task == "classification":
        return {}
    return {200: {"content": {"image/png": {}}, "description": "the mask itself with format=png and one image"}}


def _checked(name: str, step: Callable[[], Any]) -> Any:
    """step(), with a BadImage turned into a 422 naming the file (413 for too many declared pixels)."""
    try:
        return step()
    except TooLarge as exc:
        raise HTTPException(413, f"{name}: {exc}") from exc
    except BadImage as exc:
        raise HTTPException(422, f"{name}: {exc}") from exc


def segment_upload(model: Artifact, name: str, image: np.ndarray) -> dict[str, Any]:
    mask = _checked(name, lambda: segment_image(model, image, "none", BATCH) >= THRESHOLD)
    return {"file": name, "objects": object_count(mask), "foreground_fraction": float(mask.mean()),
            "mask_png_base64": base64.b64encode(encode_png(mask)).decode("ascii")}


def serve(folder: Path, host: str = "127.0.0.1", port: int = 8000, max_upload_bytes: int = MAX_UPLOAD_BYTES,
          max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    import uvicorn

    uvicorn.run(create_app(folder, max_upload_bytes, max_pixels=max_pixels), host=host, port=port, log_level="info")
