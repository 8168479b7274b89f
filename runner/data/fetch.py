"""PatchCamelyon from its Zenodo record (or a lab's mirror): downloaded, verified, decompressed once, checked.

Every file is verified against its published md5 before it gets its final name, so the runner never reads half a
download: bytes arrive in a hidden `.NAME.part` beside the target (kept across an interruption and resumed with an
HTTP Range request), pooch moves a complete, hash-checked file into place, and the .h5 is decompressed into a hidden
temporary file, checked against the .h5 md5 and renamed. A wrong file is named with what it is instead: the other
split's file (the dataset's README swaps valid and test), an HTML page, a truncated gzip.

pooch's own HTTP downloader writes to a temporary file that it deletes on any failure, so an interrupted 6.4 GB
download would start again from zero; `ResumingDownloader` is the downloader we hand it instead.
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import requests
import urllib3

from runner.data import pcam
from runner.data.errors import DataError
from runner.faults import human_bytes, space_for

ZENODO = "https://zenodo.org/records/2546921/files/{name}?download=1"
BLOCK = 1 << 22
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"


class FetchError(DataError):
    """A file could not be fetched or is not the published one; the message names it, says why and what to do."""


class NotAtSource(FetchError):
    """HTTP 404: the source has no file of that name."""


@dataclass(frozen=True)
class Published:
    """One published split file: md5 of the .h5.gz and of the .h5 inside it, and their sizes in bytes."""

    split: str
    kind: str
    gz_md5: str
    h5_md5: str
    gz_bytes: int
    h5_bytes: int  # an estimate (array bytes plus HDF5 overhead): only the free-space check uses it

    @property
    def h5_name(self) -> str:
        return pcam.file_name(self.split, self.kind)

    @property
    def gz_name(self) -> str:
        return self.h5_name + ".gz"


@dataclass(frozen=True)
class Registry:
    """What a download must produce; tests pass their own, `PCAM` is the real one."""

    files: tuple[Published, ...]
    counts: Mapping[str, int]
    image_side: int = 96
    url: str = ZENODO  # `{name}` is replaced by the file name

    def meta_names(self) -> list[str]:
        """The slide-id tables beside the splits (no published checksum: checked by their row counts)."""
        return [f"camelyonpatch_level_2_split_{split}_meta.csv" for split in pcam.SPLITS]

    def owner(self, md5: str) -> tuple[Published, str] | None:
        """The file and form ('.h5.gz' or '.h5') whose published md5 this is, if any."""
        for entry in self.files:
            for form, published in ((".h5.gz", entry.gz_md5), (".h5", entry.h5_md5)):
                if md5 == published:
                    return entry, form
        return None


def _entry(split: str, kind: str, gz_md5: str, h5_md5: str, gz_bytes: int) -> Published:
    n = pcam.PUBLISHED_SIZES[split]
    h5_bytes = n * (96 * 96 * 3 if kind == "x" else 1) + (1 << 20)
    return Published(split, kind, gz_md5, h5_md5, gz_bytes, h5_bytes)


# md5s: the dataset's README (github.com/basveeling/pcam) with its valid/test swap corrected, as reported in
# basveeling/pcam issues 1 and 4 and fixed the same way in torchvision (pytorch/vision#6643). Sizes of the .gz files:
# TensorFlow Datasets' checksums for the same Zenodo record.
PCAM = Registry(
    files=(
        _entry("train", "x", "1571f514728f59376b705fc836ff4b63", "01844da899645b4d6f84946d417ba453", 6_421_353_462),
        _entry("train", "y", "35c2d7259d906cfc8143347bb8e05be7", "0781386bf6c2fb62d58ff18891466aca", 21_378),
        _entry("valid", "x", "d5b63470df7cfa627aeec8b9dc0c066e", "81cf9680f1724c40673f10dc88e909b1", 805_965_320),
        _entry("valid", "y", "2b85f58b927af9964a4c15b8f7e8f179", "94d8aacc249253159ce2a2e78a86e658", 3_038),
        _entry("test", "x", "d8c2d60d490dbd479f8199bdfa0cf6ec", "2614b2e6717d6356be141d9d6dbfcb7e", 800_875_929),
        _entry("test", "y", "60a7035772fbdb7f34eb86d4420cf66a", "11ed647efe9fe457a4eb45df1dba19ba", 3_040),
    ),
    counts=MappingProxyType(dict(pcam.PUBLISHED_SIZES)),
)

Report = Callable[[str], None]


# ---- what a file is ----------------------------------------------------------------------------------------------

def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


LOCAL_FIX = "delete it and run `python -m runner data pcam` to download it again"
DOWNLOAD_FIX = ("nothing was kept; run the command again, and if it repeats the source serves a wrong file: use "
                "the Zenodo record or another --mirror, or download it by hand and run "
                "`python -m runner data pcam --check`")


def diagnose(path: Path, md5: str, entry: Published, form: str, registry: Registry, downloaded: bool = False) -> str:
    """Why `path` (meant as `entry` in `form`, '.h5.gz' or '.h5') is not the published file, and what to do.

    `downloaded`: `path` is a download in progress (named by its target, and already discarded)."""
    wanted = entry.gz_name if form == ".h5.gz" else entry.h5_name
    label = f"{wanted} as downloaded" if downloaded else str(path)
    fix = DOWNLOAD_FIX if downloaded else LOCAL_FIX
    owner = registry.owner(md5)
    if owner is not None:
        other, other_form = owner
        other_name = other.gz_name if other_form == ".h5.gz" else other.h5_name
        if other == entry:
            return f"{label} is {other_name} under the name {wanted}: rename it to {other_name}"
        return (f"{label} matches the published checksum of the {other.split} split: the files are swapped (this is "
                f"{other_name}, not {wanted}); " + (fix if downloaded else f"rename it, or {fix}"))
    return f"{label} does not match the published md5 of {wanted} ({md5}): {_what_it_is(path, entry, form)}; {fix}"


def _what_it_is(path: Path, entry: Published, form: str) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    if head.lstrip()[:1] == b"<":
        return (f"it is an HTML page ({size:,} bytes, starting {head.lstrip()[:40]!r}), not data: a server sent a web "
                f"page (a sign-in or virus-scan page?) instead of the file")
    if form == ".h5":
        if not head.startswith(HDF5_MAGIC):
            return f"not an HDF5 file (starts with {head[:8]!r})"
        return f"an HDF5 file of {size:,} bytes with other content (damaged, or another version of PCam)"
    if not head.startswith(GZIP_MAGIC):
        return f"not a gzip file (starts with {head[:8]!r})"
    damage = _gzip_damage(path)
    if damage:
        return f"a truncated or damaged gzip file ({size:,} bytes, the published one has {entry.gz_bytes:,}: {damage})"
    return f"a complete gzip file of {size:,} bytes with other content (another version of PCam?)"


def _gzip_damage(path: Path) -> str:
    """'' when the whole gzip stream decompresses with a good CRC, else the decompressor's complaint."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(BLOCK):
                pass
    except (OSError, EOFError, zlib.error) as err:
        return str(err) or type(err).__name__
    return ""


# ---- downloading -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResumingDownloader:
    """A pooch downloader that keeps its bytes in `part` and resumes them with HTTP Range after a dropped connection.

    `verify(part)` returns None or why the complete download is wrong; a wrong file is deleted (resuming it could
    never help), a merely unfinished one is kept for the next run."""

    name: str
    part: Path
    verify: Callable[[Path], str | None]
    retries: int = 3
    timeout: float = 60.0

    def __call__(self, url: str, output_file: str, pooch_obj: object = None) -> None:
        for attempt in range(self.retries + 1):
            try:
                self._attempt(url)
                break
            except DROPPED as err:
                have = self._have()
                if attempt == self.retries:
                    raise self._gave_up(url, have, err) from err
                print(f"  connection dropped after {human_bytes(have)}; resuming (retry {attempt + 1} of "
                      f"{self.retries})", flush=True)
                time.sleep(min(2 * attempt, 10))  # the first retry at once: a dropped connection is usually brief
        problem = self.verify(self.part)
        if problem:
            self.part.unlink(missing_ok=True)
            raise FetchError(problem)
        self.part.replace(output_file)  # same folder: a rename; pooch then checks the hash and renames it again

    def _gave_up(self, url: str, have: int, err: Exception) -> FetchError:
        if not have:
            return FetchError(f"{self.name}: no connection to {_host(url)} ({type(err).__name__}: {err}); check the "
                              f"address and the network, then run the command again")
        return FetchError(f"{self.name}: the connection to {_host(url)} dropped after {human_bytes(have)} "
                          f"({type(err).__name__}); the bytes so far are kept in {self.part}: run the command again "
                          f"to resume")

    def _have(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def _attempt(self, url: str) -> None:
        have = self._have()
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code == 416 and have:  # nothing after what we have: the part is already whole
                return
            _raise_for_status(response, url)
            resumed = have > 0 and response.status_code == 206
            if have and not resumed:
                print(f"  {_host(url)} ignores HTTP Range: downloading {self.name} from the start", flush=True)
            self._stream(response, have if resumed else 0)

    def _stream(self, response: requests.Response, offset: int) -> None:
        total = offset + int(response.headers.get("Content-Length") or 0)
        report = pcam._progress_reporter(f"downloading {self.name}", total)
        done = offset
        try:
            with space_for(self.part.parent, lambda: max(total - done, 0)), \
                    open(self.part, "ab" if offset else "wb") as out:
                # The bytes as sent: a server that labels a .gz `Content-Encoding: gzip` must not get it unpacked.
                for chunk in response.raw.stream(1 << 20, decode_content=False):
                    out.write(chunk)
                    done += len(chunk)
                    report(done)
        finally:
            report(None)


# A connection that broke mid-file (the bytes so far are worth keeping), as requests or urllib3 report it.
DROPPED = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
           urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError, ConnectionError)


def _host(url: str) -> str:
    return url.split("/")[2] if "://" in url else url


def _raise_for_status(response: requests.Response, url: str) -> None:
    if response.status_code < 400:
        return
    name = url.rsplit("/", 1)[-1].split("?")[0]
    if response.status_code == 404:
        raise NotAtSource(f"{name}: HTTP 404 Not Found at {url}; the file is not at this address: a --mirror must "
                         f"hold the published file names in one folder")
    raise FetchError(f"{name}: HTTP {response.status_code} {response.reason} from {_host(url)}; the server failed, "
                     f"not the data: try again later, or use --mirror")


def file_url(registry: Registry, name: str, mirror: str | None) -> str:
    return f"{mirror.rstrip('/')}/{name}" if mirror else registry.url.format(name=name)


def retrieve(url: str, target: Path, md5: str | None, verify: Callable[[Path], str | None], retries: int) -> None:
    """pooch fetches `url` to `target` through our downloader; `target` exists afterwards only if it verified."""
    import pooch

    pooch.get_logger().setLevel("WARNING")  # we print our own lines; pooch's INFO lines would repeat them
    pooch.retrieve(url, known_hash=f"md5:{md5}" if md5 else None, fname=target.name, path=target.parent,
                   downloader=ResumingDownloader(target.name, part_path(target), verify, retries))


def part_path(target: Path) -> Path:
    """Where an unfinished download of `target` waits: hidden, and a name the runner never reads."""
    return target.with_name(f".{target.name}.part")


# ---- one split file ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fetch:
    """One download's settings."""

    folder: Path
    registry: Registry = PCAM
    mirror: str | None = None
    retries: int = 3


def ensure_file(job: Fetch, entry: Published, report: Report) -> None:
    """Leave a verified `entry.h5_name` in the folder: kept if it verifies, else from the .gz, downloaded if needed."""
    h5, gz = job.folder / entry.h5_name, job.folder / entry.gz_name
    if h5.is_file() and file_md5(h5) == entry.h5_md5:
        report(f"{entry.h5_name}: present, md5 verified")
        return
    # A wrong file under a published name would be read by the runner: it is replaced, saying what it was.
    for path, form, published in ((h5, ".h5", entry.h5_md5), (gz, ".h5.gz", entry.gz_md5)):
        if path.is_file() and file_md5(path) != published:
            report(f"{path}: not the published file ({_what_it_is(path, entry, form)}); making it again")
            path.unlink()
    if not gz.is_file():
        url = file_url(job.registry, entry.gz_name, job.mirror)
        report(f"{entry.gz_name}: downloading from {_host(url)} ({human_bytes(entry.gz_bytes)})")
        retrieve(url, gz, entry.gz_md5, lambda part: _verify_gz(part, entry, job.registry), job.retries)
    decompress(gz, h5, entry, job.registry)
    report(f"{entry.h5_name}: md5 verified, decompressed from {entry.gz_name}")


def _verify_gz(part: Path, entry: Published, registry: Registry) -> str | None:
    md5 = file_md5(part)
    if md5 == entry.gz_md5:
        return None
    return diagnose(part, md5, entry, ".h5.gz", registry, downloaded=True)


def decompress(gz: Path, h5: Path, entry: Published, registry: Registry) -> None:
    """gunzip into a hidden temporary file, check the .h5 md5 on the way, then rename: never half an .h5."""
    tmp = h5.with_name(f".{h5.name}.tmp")
    digest = hashlib.md5()
    report = pcam._progress_reporter(f"decompressing {gz.name}", gz.stat().st_size)
    written = 0
    try:
        with space_for(h5.parent, lambda: written, at_least=True), open(gz, "rb") as raw, \
                gzip.GzipFile(fileobj=raw) as f, open(tmp, "wb") as out:
            for chunk in pcam._chunks(gz, f, BLOCK):
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                report(raw.tell())
        if digest.hexdigest() != entry.h5_md5:
            raise FetchError(f"{gz} matched its published md5 but decompressed to an .h5 with md5 "
                             f"{digest.hexdigest()}, not {entry.h5_md5}; the disk or memory may be faulty: "
                             f"delete {gz.name} and run again")
        tmp.replace(h5)
    finally:
        report(None)
        tmp.unlink(missing_ok=True)


# ---- the whole dataset -------------------------------------------------------------------------------------------

def bytes_needed(job: Fetch) -> int:
    """Free space still needed: each missing .gz (less a kept partial download) and each missing .h5."""
    need = 0
    for entry in job.registry.files:
        if (job.folder / entry.h5_name).is_file():
            continue
        need += entry.h5_bytes
        gz = job.folder / entry.gz_name
        if not gz.is_file():
            part = part_path(gz)
            need += entry.gz_bytes - (part.stat().st_size if part.is_file() else 0)
    return max(need, 0)


def free_bytes(folder: Path) -> int:
    for candidate in (folder, *folder.parents):  # the folder may not exist yet
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return 0


def check_space(job: Fetch) -> None:
    need, free = bytes_needed(job), free_bytes(job.folder)
    if need > free:
        from runner.faults import DiskFull

        raise DiskFull(f"{job.folder} needs {human_bytes(need)} free for PatchCamelyon (.h5.gz downloads plus the "
                       f"decompressed .h5), {human_bytes(free)} is free; free space, or choose another --root")


def fetch_pcam(job: Fetch, report: Report = print) -> None:
    """Download, verify, decompress and check every split, then the slide tables; FetchError names what failed."""
    check_space(job)
    job.folder.mkdir(parents=True, exist_ok=True)
    # Smallest first: a wrong mirror or a 404 shows in seconds, not after the 6.4 GB training images.
    for entry in sorted(job.registry.files, key=lambda e: e.gz_bytes):
        ensure_file(job, entry, report)
    for line in check_splits(job.folder, job.registry):
        report(line)
    for name in job.registry.meta_names():
        ensure_meta(job, name, report)


def ensure_meta(job: Fetch, name: str, report: Report) -> None:
    """A split's slide-id table; the source may not have it (the runner does not need it to train)."""
    target = job.folder / name
    rows = job.registry.counts[name.split("_")[-2]]
    if target.is_file() and _verify_meta(target, rows, name) is None:
        report(f"{name}: present, {rows:,} rows")
        return
    target.unlink(missing_ok=True)
    try:
        retrieve(file_url(job.registry, name, job.mirror), target, None,
                 lambda part: _verify_meta(part, rows, name), job.retries)
    except NotAtSource:
        report(f"{name}: not at the source (404); only slide-level statistics need it")
        return
    report(f"{name}: {rows:,} rows")


def _verify_meta(path: Path, rows: int, name: str) -> str | None:
    """None when the table has one line per patch (a header line allowed), else what is wrong."""
    with open(path, "rb") as f:
        head = f.read(512)
        lines, last = head.count(b"\n"), head[-1:]
        for block in iter(lambda: f.read(BLOCK), b""):
            lines, last = lines + block.count(b"\n"), block[-1:]
    lines += last not in (b"", b"\n")  # a last line without its newline
    if head.lstrip()[:1] == b"<":
        return f"{name}: the server sent an HTML page instead of the CSV table; try another --mirror"
    if lines not in (rows, rows + 1):
        return f"{name}: {lines:,} lines, expected {rows:,} (one per patch) and a header; run the command again"
    return None


def check_splits(folder: Path, registry: Registry) -> list[str]:
    """Counts, shapes and label values of the .h5 splits (reusing the loader's own checks)."""
    lines = []
    for split in pcam.SPLITS:
        files = pcam.SplitFiles(folder / pcam.file_name(split, "x"), folder / pcam.file_name(split, "y"))
        pcam.check_dataset(files.x, "x", (registry.image_side, registry.image_side))
        n = pcam.check_pair(files)
        if n != registry.counts[split]:
            raise FetchError(f"{files.x}: {n:,} patches, the published {split} split has {registry.counts[split]:,}; "
                             f"delete the {split} files and download them again")
        lines.append(f"{split}: {n:,} patches of {registry.image_side}x{registry.image_side}, labels 0/1")
    return lines


# ---- a folder the user already has -------------------------------------------------------------------------------

def check_folder(folder: Path, registry: Registry = PCAM) -> list[str]:
    """Verify each split file (the .h5 the runner reads, else the .h5.gz) by md5; FetchError lists every bad one."""
    if not folder.is_dir():
        raise FetchError(f"{folder} is not a folder; `python -m runner data pcam --root {folder}` downloads PCam there")
    problems, lines = [], []
    for entry in registry.files:
        good, line = _verify_one(folder, entry, registry)
        (lines if good else problems).append(line)
    if problems:
        raise FetchError("\n".join(problems))
    if all((folder / e.h5_name).is_file() for e in registry.files):
        lines += check_splits(folder, registry)
    return lines


def _verify_one(folder: Path, entry: Published, registry: Registry) -> tuple[bool, str]:
    """(good, line) for the file the runner would read: the .h5 when present, else the .h5.gz."""
    for name, form, published in ((entry.h5_name, ".h5", entry.h5_md5), (entry.gz_name, ".h5.gz", entry.gz_md5)):
        path = folder / name
        if path.is_file():
            md5 = file_md5(path)
            return (True, f"{name}: md5 verified") if md5 == published else \
                (False, diagnose(path, md5, entry, form, registry))
    return False, (f"{folder / entry.h5_name} (or {entry.gz_name}) not found; `python -m runner data pcam --root "
                   f"{folder}` downloads what is missing")
