"""The HTTP API: FastAPI's TestClient for behaviour and broken requests, one real uvicorn process for the wiring,
bombs (memory measured on the server process) and 16 concurrent clients."""
from __future__ import annotations

import base64
import csv
import io
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from runner.inference.artifact import load
from runner.inference.serve import create_app
from tests.inference import bombs
from tests.inference.conftest import run_cli


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


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen

    def memory(self, field: str) -> int:
        """VmRSS or VmHWM (the peak resident set) of the server process, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/{self.process.pid}/status")


@pytest.fixture(scope="module")
def server(trained):
    """`python -m runner serve` in its own process; --max-pixels below the default shows the option reaches it."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "runner", "serve", str(trained.cnn), "--port", str(port),
                                "--max-pixels", "5e7"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"{url}/health", timeout=2).json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        yield Server(url, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_real_server_answers_over_http(server, trained):
    x = images(1)
    answer = httpx.post(f"{server.url}/predict", files=[("files", ("a.png", png(x[0]), "image/png"))], timeout=30)
    assert answer.json()["predictions"][0]["p_tumour"] == pytest.approx(
        float(load(trained.cnn).probabilities(x)[0]), abs=1e-6)


# ---- hostile and broken requests -------------------------------------------------------------------------------

def test_a_bomb_upload_is_413_at_once_without_memory_growth(server, tmp_path):
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, images(1)[0])
    for name, data in (("w.png", png(images(1)[0])), ("w.tif", tiff.getvalue())):  # the decoders are imported
        assert httpx.post(f"{server.url}/predict", files=[("files", (name, data, "image/png"))]).status_code == 200
    peak_before = server.memory("VmHWM")
    for path in (bombs.tiff_bomb(tmp_path / "bomb.tif"), bombs.lying_tiff(tmp_path / "liar.tif"),
                 bombs.png_bomb(tmp_path / "bomb.png")):
        start = time.monotonic()
        answer = httpx.post(f"{server.url}/predict", files=[("files", (path.name, path.read_bytes(), "image/tiff"))],
                            timeout=30)
        assert time.monotonic() - start < 1.0
        assert answer.status_code == 413
        assert answer.json()["detail"].startswith(f"{path.name}: declares ")
        assert "more than the 50,000,000-pixel limit" in answer.json()["detail"]
    # Measured: no growth of the peak at all; decoding the first bomb would add 7.5 GB.
    assert server.memory("VmHWM") - peak_before < 32 * 2**20


def test_a_bomb_among_good_images_names_the_bomb(trained, tmp_path):
    client = TestClient(create_app(trained.cnn))
    bomb = bombs.tiff_bomb(tmp_path / "bomb.tif").read_bytes()
    response = client.post("/predict", files=[("files", ("ok.png", png(images(1)[0]), "image/png")),
                                              ("files", ("bomb.tif", bomb, "image/tiff"))])
    assert response.status_code == 413
    assert response.json()["detail"] == ("bomb.tif: declares 50000x50000 pixels (2,500,000,000), more than the "
                                         "67,108,864-pixel limit; crop or tile it, or raise --max-pixels")


def multipart(*parts: bytes, boundary: str = "b0undary") -> dict:
    return {"content": b"".join(parts), "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


def part(field: str, filename: str, data: bytes, boundary: str = "b0undary") -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"


OK_PNG = png(images(1)[0])
BAD_REQUESTS = {
    "wrong field name": (dict(files=[("file", ("a.png", OK_PNG, "image/png"))]), 422),
    "empty multipart body": (multipart(b""), 422),
    "empty body, no content type": (dict(content=b""), 422),
    "json instead of multipart": (dict(json={"files": ["a.png"]}), 422),
    "a text field, not a file": (dict(data={"files": "a.png"}), 422),
    "no closing boundary": (multipart(part("files", "a.png", OK_PNG)), 422),
    "garbage after the boundary header": (multipart(b"garbage, not a multipart body"), 400),
    "no boundary in the content type": (dict(content=b"x", headers={"content-type": "multipart/form-data"}), 400),
    "an empty file": (dict(files=[("files", ("e.png", b"", "image/png"))]), 422),
    "65 files (more than MAX_FILES)": (dict(files=[("files", (f"{i}.png", OK_PNG, "image/png"))
                                                   for i in range(65)]), 413),
    "1001 files (the form parser's limit)": (dict(files=[("files", (f"{i}.png", b"x", "image/png"))
                                                         for i in range(1001)]), 400),
    "an unknown format": (dict(params={"format": "xml"}, files=[("files", ("a.png", OK_PNG, "image/png"))]), 422),
}


@pytest.mark.parametrize("kind", BAD_REQUESTS)
def test_a_broken_request_is_4xx_with_a_detail(client, kind):
    request, status = BAD_REQUESTS[kind]
    response = client.post("/predict", **request)
    assert response.status_code == status
    assert response.json()["detail"]


PAYLOADS = st.sampled_from([OK_PNG, png(images(1, 40)[0]), b"", b"\x89PNG\r\n\x1a\n", b"II*\x00" + bytes(12),
                            bombs.png_bomb_bytes()]) | st.binary(max_size=64)
FIELDS = st.sampled_from(["files", "file", "", "files[]"]) | st.text(max_size=8)
NAMES = st.sampled_from(["a.png", "a.tif", "", "../../etc/passwd", "x\u00e9.png"]) | st.text(max_size=12)


@st.composite
def requests(draw) -> dict:
    """A multipart body, well formed or then cut, its bytes overwritten or its boundary changed."""
    boundary = draw(st.sampled_from(["b0undary", "x", "-" * 70]))
    body = b"".join(part(draw(FIELDS), draw(NAMES), draw(PAYLOADS), boundary)
                    for _ in range(draw(st.integers(0, 3)))) + f"--{boundary}--\r\n".encode()
    cut = draw(st.integers(0, len(body)))
    body = draw(st.sampled_from([body, body[:cut], body[:cut] + draw(st.binary(max_size=16)) + body[cut + 16:]]))
    header = draw(st.sampled_from([boundary, "other", ""]))
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={header}"},
            "params": {"format": draw(st.sampled_from(["json", "png", "xml"]))}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=requests())
def test_no_request_body_makes_the_server_fail(client, body):
    response = client.post("/predict", **body)  # the test client re-raises any exception the app lets out
    assert response.status_code == 200 or 400 <= response.status_code < 500
    assert response.status_code == 200 or response.json()["detail"]


# ---- under load ------------------------------------------------------------------------------------------------

CLIENTS, REPEATS = 16, 10


def post_all(url: str, uploads: list[tuple[str, bytes]]) -> list[tuple[str, int, dict]]:
    """One client's requests, one image each, on one connection: (file, status, answer body)."""
    answers = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, data in uploads:
            response = http.post("/predict", files=[("files", (name, data, "image/png"))])
            answers.append((name, response.status_code, response.json()))
    return answers


def test_sixteen_clients_get_what_predict_writes(server, trained, tmp_path):
    folder = tmp_path / "patches"
    folder.mkdir()
    for index, image in enumerate(images(32)):
        Image.fromarray(image).save(folder / f"p{index:02d}.png")
    assert run_cli("predict", trained.cnn, folder, "--out", tmp_path / "p.csv") == 0
    with open(tmp_path / "p.csv", newline="") as handle:
        expected = {Path(row["source"]).name: row for row in csv.DictReader(handle)}
    uploads = [(path.name, path.read_bytes()) for path in sorted(folder.iterdir())] * REPEATS
    uploads += [(f"junk{i}.png", b"not an image") for i in range(CLIENTS)]  # broken uploads amid the load
    random.Random(0).shuffle(uploads)
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [a for chunk in pool.map(lambda i: post_all(server.url, uploads[i::CLIENTS]), range(CLIENTS))
                   for a in chunk]
    good = [(name, body["predictions"][0]) for name, status, body in answers if status == 200]
    assert len(good) == 32 * REPEATS
    assert sorted(name for name, status, body in answers if status == 422 and body["detail"].startswith(
        f"{name}: not a readable")) == sorted(f"junk{i}.png" for i in range(CLIENTS))
    for name, prediction in good:
        assert prediction["file"] == name and prediction["label"] == expected[name]["label"]
        assert abs(prediction["p_tumour"] - float(expected[name]["p_tumour"])) <= 1e-6  # the CSV keeps 6 decimals
    repeated: dict[str, set[float]] = {}
    for name, prediction in good:
        repeated.setdefault(name, set()).add(prediction["p_tumour"])
    assert all(len(values) == 1 for values in repeated.values())  # no answer depends on the requests beside it
