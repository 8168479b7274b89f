"""Serving and prediction throughput of an exported model: HTTP under bounded load vs calling the model directly.

    uv run python tests/benchmarks/bench_serve.py [--requests 500] [--concurrency 8] [--artifact DIR]

Without --artifact, a small plain CNN (the default width 16, depth 3) is trained for one epoch on 64 synthetic
patches and exported. Prints p50/p95 request latency and images/s of `serve` (one 96x96 PNG per request, a real
uvicorn on 127.0.0.1), of the ONNX model called in-process one image at a time and in batches of 64, and of
`predict` on an .npz of patches.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from runner.cli import main as runner_main  # noqa: E402
from runner.inference.artifact import load  # noqa: E402
from runner.inference.predict import predict  # noqa: E402

SPEC = """
[experiment]
name = "bench-serve"
task = "classification"
seeds = [0]
[data]
train_size = 64
valid_size = 32
test_size = 32
[train]
epochs = 1
[eval]
rotation_angles = [0]
rotation_samples = 8
invariance = false
[[model]]
family = "cnn"
"""


def trained_artifact(scratch: Path) -> Path:
    (scratch / "spec.toml").write_text(SPEC)
    assert runner_main([str(scratch / "spec.toml"), "--root", str(scratch / "runs")]) == 0
    assert runner_main(["export", "--root", str(scratch / "runs"), "--experiment", "bench-serve", "--best",
                        "--out", str(scratch / "model")]) == 0
    return scratch / "model"


def percentiles(seconds: list[float]) -> str:
    p50, p95 = np.percentile(np.array(seconds) * 1e3, [50, 95])
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"


def direct(model, images: np.ndarray) -> tuple[float, list[float]]:
    latencies = []
    start = time.perf_counter()
    for image in images:
        t = time.perf_counter()
        model.probabilities(image[None])
        latencies.append(time.perf_counter() - t)
    return len(images) / (time.perf_counter() - start), latencies


def batched(model, images: np.ndarray, size: int = 64) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), size):
        model.probabilities(images[i:i + size])
    return len(images) / (time.perf_counter() - start)


async def load_test(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    gate, latencies = asyncio.Semaphore(concurrency), []
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(body: bytes) -> None:
            async with gate:
                t = time.perf_counter()
                response = await client.post(f"{url}/predict", files=[("files", ("p.png", body, "image/png"))])
                response.raise_for_status()
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
    return len(bodies) / (time.perf_counter() - start), latencies


def start_server(artifact: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "runner", "serve", str(artifact), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/health", timeout=2)
            return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError("the server did not start within 60 s")


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--artifact", type=Path, default=None, help="an exported model folder (default: train one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        artifact = args.artifact or trained_artifact(Path(scratch))
        model = load(artifact)
        images = np.random.default_rng(0).integers(0, 256, (args.requests, 96, 96, 3), dtype=np.uint8)
        one_rate, one_latencies = direct(model, images)
        batch_rate = batched(model, np.concatenate([images] * 4))
        print(f"direct ONNX, one image per call: {one_rate:,.0f} images/s ({percentiles(one_latencies)}); "
              f"batches of 64: {batch_rate:,.0f} images/s")
        np.savez(Path(scratch) / "x.npz", x=np.concatenate([images] * 4))
        result = predict(model, [Path(scratch) / "x.npz"], Path(scratch) / "p.csv")
        print(f"predict on .npz ({result.predicted} patches, read + infer + CSV): "
              f"{result.predicted / result.seconds:,.0f} images/s")
        server, url = start_server(artifact)
        try:
            rate, latencies = asyncio.run(load_test(url, [png(i) for i in images], args.concurrency))
        finally:
            server.terminate()
            server.wait(timeout=30)
        print(f"serve, {args.requests} requests x 1 image, {args.concurrency} concurrent: {rate:,.0f} images/s "
              f"({percentiles(latencies)}); {rate / one_rate:.2f}x the direct one-image rate")


if __name__ == "__main__":
    main()
