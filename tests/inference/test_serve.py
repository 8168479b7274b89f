"""The HTTP API: FastAPI's TestClient for behaviour, one real uvicorn process for the wiring."""
from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from runner.inference.artifact import load
from runner.inference.serve import create_app


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def images(count: int, size: int = 96) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def client(trained):
    return TestClient(create_app(trained.cnn, max_upload_bytes=200_000))


def test_health_and_model(client, trained):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["task"] == "classification"
    assert client.get("/model").json() == load(trained.cnn).meta


def test_predict_several_images(client, trained):
    x = images(2)
    response = client.post("/predict", files=[("files", ("a.png", png(x[0]), "image/png")),
                                              ("files", ("b.png", png(x[1]), "image/png"))])
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["file"] for p in predictions] == ["a.png", "b.png"]
    np.testing.assert_allclose([p["p_tumour"] for p in predictions], load(trained.cnn).probabilities(x), atol=1e-6)


@pytest.mark.parametrize("name, data, status, message", [
    ("junk.png", b"not an image", 422, "junk.png: not a readable PNG, JPEG or TIFF image"),
    ("gray.png", png(images(1)[0][..., 0]), 422, "gray.png: 1 channel(s); the model takes 3 (RGB)"),
    ("small.png", png(images(1, 40)[0]), 422, "small.png: 40x40 pixels is smaller than the model's 96x96 input"),
    ("huge.png", b"\x89PNG" + bytes(300_000), 413, "huge.png: larger than the 200000 byte upload limit"),
])
def test_bad_uploads_are_4xx_with_the_reason(client, name, data, status, message):
    response = client.post("/predict", files=[("files", ("ok.png", png(images(1)[0]), "image/png")),
                                              ("files", (name, data, "image/png"))])
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_missing_files_field_is_422(client):
    assert client.post("/predict").status_code == 422


def test_segmentation_returns_masks(trained):
    client = TestClient(create_app(trained.unet))
    tile = images(1, 32)[0]
    response = client.post("/predict", files=[("files", ("t.png", png(tile), "image/png"))])
    body = response.json()["predictions"][0]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
    expected = load(trained.unet).probabilities(tile[None])[0] >= 0.5
    np.testing.assert_array_equal(mask > 0, expected)
    raw = client.post("/predict?format=png", files=[("files", ("t.png", png(tile), "image/png"))])
    assert raw.headers["content-type"] == "image/png" and raw.content == base64.b64decode(body["mask_png_base64"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_server_answers_over_http(trained):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "runner", "serve", str(trained.cnn), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"{url}/health", timeout=2).json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        x = images(1)
        answer = httpx.post(f"{url}/predict", files=[("files", ("a.png", png(x[0]), "image/png"))], timeout=30)
        assert answer.json()["predictions"][0]["p_tumour"] == pytest.approx(
            float(load(trained.cnn).probabilities(x)[0]), abs=1e-6)
    finally:
        server.terminate()
        server.wait(timeout=30)
