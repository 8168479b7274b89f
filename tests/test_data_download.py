"""`python -m runner data pcam` against a loopback HTTP server that serves small PCam-format files.

The files are real HDF5 in PCam's layout (8x8 patches, 40/12/12 per split), gzipped; the test's own checksum
registry replaces the published one. The server misbehaves on request: a connection dropped mid-file, a status code,
or other bytes under a file's name. After every failure the final names hold only verified files.
"""
from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from runner import cli
from runner.cli import data as data_command
from runner.data import check_source, fetch, load_splits
from runner.data.pcam import SPLITS, file_name, write_pcam_pair
from runner.faults import human_bytes
from runner.spec.config import DataSpec

COUNTS = {"train": 40, "valid": 12, "test": 12}
SIDE = 8


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass(frozen=True)
class Dataset:
    """The served bytes by file name, and the registry that describes them."""

    blobs: dict[str, bytes]
    h5: dict[str, bytes]
    registry: fetch.Registry


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    folder = tmp_path_factory.mktemp("source")
    rng = np.random.default_rng(0)
    blobs, h5, entries = {}, {}, []
    for split in SPLITS:
        n = COUNTS[split]
        x, y = folder / file_name(split, "x"), folder / file_name(split, "y")
        write_pcam_pair(x, y, rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8), rng.integers(0, 2, n))
        for kind, path in (("x", x), ("y", y)):
            raw = path.read_bytes()
            packed = gzip.compress(raw, mtime=0)
            blobs[path.name + ".gz"], h5[path.name] = packed, raw
            entries.append(fetch.Published(split, kind, md5(packed), md5(raw), len(packed), len(raw)))
        rows = "".join(f"{i},{i},{i % 2},{i % 2},patient_000_node_0\n" for i in range(n))
        blobs[f"camelyonpatch_level_2_split_{split}_meta.csv"] = (",coord_y,coord_x,tumor_patch,"
                                                                  "center_tumor_patch,wsi\n" + rows).encode()
    registry = fetch.Registry(tuple(entries), COUNTS, image_side=SIDE, url="http://unused.invalid/{name}")
    return Dataset(blobs, h5, registry)


@dataclass
class Behaviour:
    """What the server does: bytes per name, status codes, names whose first response stops halfway."""

    blobs: dict[str, bytes]
    status: dict[str, int] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)
    ignore_range: bool = False
    log: list[tuple[str, str | None]] = field(default_factory=list)

    def requests_for(self, name: str) -> list[str | None]:
        return [rng for logged, rng in self.log if logged == name]


def handler_for(state: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            state.log.append((name, self.headers.get("Range")))
            if name in state.status or name not in state.blobs:
                self.send_error(state.status.get(name, 404))
                return
            data = state.blobs[name]
            asked = self.headers.get("Range") if not state.ignore_range else None
            start = int(asked.split("=")[1].split("-")[0]) if asked else 0
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if name in state.drop_once:  # headers promise the whole file; the socket closes at half
                state.drop_once.discard(name)
                self.wfile.write(data[start:start + (len(data) - start) // 2])
                self.close_connection = True
                return
            self.wfile.write(data[start:])

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture
def server(dataset):
    state = Behaviour(dict(dataset.blobs))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/files", state
    httpd.shutdown()
    httpd.server_close()


def data_pcam(dataset: Dataset, *options: str) -> int:
    """The real command line through the real parser, with the test's registry."""
    args = cli.parser().parse_args(["data", "pcam", *options])
    return data_command.cmd_data(args, dataset.registry)


def error_of(stderr: str) -> str:
    """The error the command printed, without the progress lines before it."""
    return stderr[stderr.index("error: "):]


def assert_only_verified_files(folder: Path, dataset: Dataset) -> None:
    """Every file at a name the runner reads is the published one; no temporary file is left either."""
    for entry in dataset.registry.files:
        for name, wanted in ((entry.h5_name, entry.h5_md5), (entry.gz_name, entry.gz_md5)):
            if (folder / name).exists():
                assert fetch.file_md5(folder / name) == wanted, name
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("tmp")]
    assert leftovers == []


def test_fresh_download_is_verified_decompressed_and_read_without_data_root(dataset, server, tmp_path, monkeypatch,
                                                                         capsys):
    url, state = server
    monkeypatch.setenv("RUNNER_DATA_DIR", str(tmp_path / "data"))
    started = time.perf_counter()
    assert data_pcam(dataset, "--mirror", url) == 0
    elapsed = time.perf_counter() - started
    folder = tmp_path / "data" / "pcam"
    for name, raw in dataset.h5.items():
        assert (folder / name).read_bytes() == raw
    for split in SPLITS:
        assert (folder / f"camelyonpatch_level_2_split_{split}_meta.csv").is_file()
    assert not list(folder.glob(".*"))
    assert_only_verified_files(folder, dataset)
    out = capsys.readouterr().out
    assert "train: 40 patches of 8x8, labels 0/1" in out and f"ready in {folder}" in out
    print(f"download + verify + decompress + check of {len(dataset.blobs)} files: {elapsed:.2f} s")

    data = DataSpec(source="pcam")  # no root: the default folder
    check_source("classification", data)
    splits = load_splits("classification", data, tmp_path / "cache")
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (40, 12, 12)

    state.log.clear()
    assert data_pcam(dataset, "--mirror", url) == 0  # a second run verifies what is there and downloads nothing
    assert state.log == []
    assert "present, md5 verified" in capsys.readouterr().out


def test_a_dropped_connection_is_resumed_with_a_range_request(dataset, server, tmp_path, capsys):
    url, state = server
    name = file_name("train", "x") + ".gz"
    state.drop_once.add(name)
    assert data_pcam(dataset, "--root", str(tmp_path), "--mirror", url) == 0
    first, second = state.requests_for(name)
    half = len(dataset.blobs[name]) // 2
    assert first is None and second == f"bytes={half}-"
    assert "connection dropped" in capsys.readouterr().out
    assert_only_verified_files(tmp_path, dataset)


def test_a_server_without_range_support_gives_the_whole_file_again(dataset, server, tmp_path, capsys):
    url, state = server
    name = file_name("train", "x") + ".gz"
    state.drop_once.add(name)
    state.ignore_range = True
    assert data_pcam(dataset, "--root", str(tmp_path), "--mirror", url) == 0
    assert "ignores HTTP Range: downloading " + name + " from the start" in capsys.readouterr().out
    assert (tmp_path / name).read_bytes() == dataset.blobs[name]
    assert_only_verified_files(tmp_path, dataset)


def test_an_interrupted_run_keeps_its_bytes_and_the_next_run_resumes(dataset, server, tmp_path, capsys):
    url, state = server
    name = file_name("train", "x") + ".gz"
    state.drop_once.add(name)
    assert data_pcam(dataset, "--root", str(tmp_path), "--mirror", url, "--retries", "0") == 2
    err = error_of(capsys.readouterr().err)
    assert name in err and "run the command again to resume" in err
    assert not (tmp_path / name).exists() and not (tmp_path / name[:-3]).exists()
    part, half = tmp_path / f".{name}.part", len(dataset.blobs[name]) // 2
    assert part.stat().st_size == half
    assert_only_verified_files(tmp_path, dataset)

    state.log.clear()
    assert data_pcam(dataset, "--root", str(tmp_path), "--mirror", url) == 0
    assert state.requests_for(name) == [f"bytes={half}-"]
    assert not part.exists()
    assert (tmp_path / name[:-3]).read_bytes() == dataset.h5[name[:-3]]


def _corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


HTML = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>"


@pytest.mark.parametrize(("served", "expected"), [
    ("corrupt", "truncated or damaged gzip"),
    ("truncated", "truncated or damaged gzip"),
    ("swapped", "matches the published checksum of the valid split: the files are swapped"),
    ("html", "it is an HTML page"),
])
def test_a_wrong_file_is_named_with_what_it_is(dataset, server, tmp_path, capsys, served, expected):
    url, state = server
    name = file_name("test", "x") + ".gz"
    good = dataset.blobs[name]
    state.blobs[name] = {"corrupt": _corrupt(good), "truncated": good[: len(good) // 3],
                         "swapped": dataset.blobs[file_name("valid", "x") + ".gz"], "html": HTML}[served]
    assert data_pcam(dataset, "--root", str(tmp_path), "--mirror", url) == 2
    err = error_of(capsys.readouterr().err)
    assert err.startswith(f"error: {name}") and expected in err and err.count("\n") == 1
    assert not (tmp_path / name).exists() and not (tmp_path / name[:-3]).exists()
    assert not (tmp_path / f".{name}.part").exists()  # a complete but wrong file is not worth resuming
    assert_only_verified_files(tmp_path, dataset)


@pytest.mark.parametrize(("code", "expected"), [(404, "HTTP 404 Not Found"), (500, "HTTP 500 Internal Server Error")])
def test_an_http_error_is_one_line_and_exit_2(dataset, server, tmp_path, capsys, code, expected):
    url, state = server
    name = file_name("valid", "y") + ".gz"
    state.status[name] = code
    assert data_pcam(dataset, "--root", str(tmp_path), "--mirror", url) == 2
    err = error_of(capsys.readouterr().err)
    assert err.startswith(f"error: {name}: {expected}") and err.count("\n") == 1
    assert not (tmp_path / name).exists()
    assert_only_verified_files(tmp_path, dataset)


def test_a_wrong_file_already_under_a_published_name_is_replaced(dataset, server, tmp_path, capsys):
    url, _ = server
    wrong = tmp_path / (file_name("test", "x") + ".gz")
    wrong.write_bytes(dataset.blobs[file_name("valid", "x") + ".gz"])
    assert data_pcam(dataset, "--root", str(tmp_path), "--mirror", url) == 0
    assert f"{wrong}: not the published file" in capsys.readouterr().out
    assert_only_verified_files(tmp_path, dataset)
    assert (tmp_path / file_name("test", "x")).read_bytes() == dataset.h5[file_name("test", "x")]


def test_a_source_without_slide_tables_still_gives_the_splits(dataset, server, tmp_path, capsys):
    url, state = server
    state.status["camelyonpatch_level_2_split_train_meta.csv"] = 404
    assert data_pcam(dataset, "--root", str(tmp_path), "--mirror", url) == 0
    assert "camelyonpatch_level_2_split_train_meta.csv: not at the source (404)" in capsys.readouterr().out
    assert not (tmp_path / "camelyonpatch_level_2_split_train_meta.csv").exists()


def test_too_little_free_space_stops_before_any_download(dataset, server, tmp_path, monkeypatch, capsys):
    url, state = server
    monkeypatch.setattr(fetch, "free_bytes", lambda folder: 1000)
    assert data_pcam(dataset, "--root", str(tmp_path / "pcam"), "--mirror", url) == 5
    need = sum(entry.gz_bytes + entry.h5_bytes for entry in dataset.registry.files)
    assert f"needs {human_bytes(need)} free for PatchCamelyon" in error_of(capsys.readouterr().err)
    assert state.log == [] and not (tmp_path / "pcam").exists()


def test_the_published_registry_is_unambiguous():
    """Every md5 names one file in one form, so a wrong file can be named by what it is; sizes add up to the record."""
    md5s = [m for entry in fetch.PCAM.files for m in (entry.gz_md5, entry.h5_md5)]
    assert len(set(md5s)) == len(md5s) == 12
    assert {(e.split, e.kind) for e in fetch.PCAM.files} == {(s, k) for s in SPLITS for k in "xy"}
    assert 8.0e9 < sum(e.gz_bytes for e in fetch.PCAM.files) < 8.1e9
    assert fetch.file_url(fetch.PCAM, "a.h5.gz", None) == "https://zenodo.org/records/2546921/files/a.h5.gz?download=1"
    assert fetch.file_url(fetch.PCAM, "a.h5.gz", "https://lab.example/pcam/") == "https://lab.example/pcam/a.h5.gz"


def test_data_help_stays_light():
    """The parser is built for every command: `data` must not bring torch or h5py into `--help`."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", "data", "--help"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "RUNNER_PCAM_MIRROR" in result.stdout
    modules = {line.split("|")[2].strip().split(".")[0] for line in result.stderr.splitlines()
               if line.startswith("import time:")}
    assert "runner" in modules and not modules & {"torch", "h5py", "escnn", "pooch", "requests"}


def test_check_accepts_a_good_folder_and_names_the_one_wrong_file(dataset, tmp_path, capsys):
    for name, data in dataset.blobs.items():
        if name.endswith(".gz"):
            (tmp_path / name).write_bytes(data)
    (tmp_path / file_name("train", "y")).write_bytes(dataset.h5[file_name("train", "y")])  # an .h5 beside: read first
    assert data_pcam(dataset, "--root", str(tmp_path), "--check") == 0
    assert f"{tmp_path}: every PatchCamelyon file matches" in capsys.readouterr().out

    wrong = tmp_path / (file_name("valid", "y") + ".gz")
    wrong.write_bytes(dataset.blobs[file_name("test", "y") + ".gz"])
    assert data_pcam(dataset, "--root", str(tmp_path), "--check") == 2
    err = error_of(capsys.readouterr().err)
    assert err == (f"error: {wrong} matches the published checksum of the test split: the files are swapped (this is "
                   f"{file_name('test', 'y')}.gz, not {wrong.name}); rename it, or delete it and run "
                   f"`python -m runner data pcam` to download it again\n")


def test_check_names_a_damaged_h5_and_a_missing_file(dataset, tmp_path, capsys):
    for name, data in dataset.h5.items():
        (tmp_path / name).write_bytes(data)
    assert data_pcam(dataset, "--root", str(tmp_path), "--check") == 0
    assert "test: 12 patches of 8x8" in capsys.readouterr().out
    damaged = tmp_path / file_name("train", "x")
    damaged.write_bytes(_corrupt(dataset.h5[damaged.name]))
    (tmp_path / file_name("test", "y")).unlink()
    assert data_pcam(dataset, "--root", str(tmp_path), "--check") == 2
    lines = error_of(capsys.readouterr().err).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: {damaged} does not match the published md5") and "HDF5 file" in lines[0]
    assert f"{file_name('test', 'y')} (or {file_name('test', 'y')}.gz) not found" in lines[1]
