"""PatchCamelyon in its published HDF5 format: validation, one-time gunzip into the cache, stratified subsets.

Files in `root`: camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 (or .h5.gz). `x`: (N, 96, 96, 3) uint8,
`y`: (N, 1, 1, 1) uint8 with labels in {0, 1}. The full train split is 7 GB: a small subset is read row by row
into the worker; a larger one is mapped from a .npy copy in the cache that every worker on the node shares.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from runner.data import shared
from runner.data.batches import ArraySplit, H5Split, MappedSplit, Split, Splits, read_rows
from runner.data.errors import DataError
from runner.faults import space_for

SPLITS = ("train", "valid", "test")
PUBLISHED_SIZES = {"train": 262_144, "valid": 32_768, "test": 32_768}
PCAM_CLASSES = ("normal", "tumour")  # label 0 and 1 of PatchCamelyon (and of the synthetic PCam-like set)
DOWNLOAD_HINT = ("`python -m runner data pcam [--root DIR]` downloads, verifies and decompresses PatchCamelyon "
                 "(Zenodo record 2546921); or use data.source = \"synthetic\"")
DATA_DIR_ENV = "RUNNER_DATA_DIR"


def default_root() -> Path:
    """The PCam folder when data.root is unset: $RUNNER_DATA_DIR/pcam, else the user's cache folder.

    Not under the run root: the runner's checks do not see `--root`, one 16 GB copy serves every run root and
    checkout, and deleting a run root to start afresh should not cost a 7.7 GB download again."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "equivariant-pathology-runner"
    return Path(os.environ.get(DATA_DIR_ENV) or cache).expanduser() / "pcam"


def file_name(split: str, kind: str) -> str:
    return f"camelyonpatch_level_2_split_{split}_{kind}.h5"


@dataclass(frozen=True)
class SplitFiles:
    """The x and y files of one split, after decompression when the published .h5.gz was given."""

    x: Path
    y: Path


def find_file(root: Path, split: str, kind: str) -> Path:
    """The .h5 if present, else the .h5.gz; DataError naming both candidates when neither exists."""
    plain = root / file_name(split, kind)
    for candidate in (plain, plain.with_name(plain.name + ".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{plain} (or {plain.name}.gz) not found; expected the PatchCamelyon {split} {kind} file "
                    f"in data.root; {DOWNLOAD_HINT}")


# ---- validation --------------------------------------------------------------------------------------------------

def check_dataset(path: Path, kind: str, spatial: tuple[int, ...] | None = None) -> int:
    """Open one PCam file and check key, shape and dtype; returns N. `spatial` pins (H, W) for x files."""
    try:
        with h5py.File(path, "r") as f:
            if kind not in f:
                raise DataError(f"{path}: expected dataset key '{kind}', found keys {sorted(f.keys())}; "
                                f"is this a PatchCamelyon {kind} file?")
            ds = f[kind]
            shape, dtype = tuple(ds.shape), ds.dtype
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err}); delete it and download it again") from err
    ok = dtype == np.uint8 and (
        (kind == "x" and len(shape) == 4 and shape[3] == 3 and shape[1] == shape[2]
         and (spatial is None or shape[1:3] == spatial))
        or (kind == "y" and len(shape) >= 1 and int(np.prod(shape[1:])) == 1))
    if not ok:
        want = "(N, 96, 96, 3) uint8" if kind == "x" else "(N, 1, 1, 1) uint8"
        raise DataError(f"{path}: dataset '{kind}' has shape {shape} dtype {dtype}, expected {want}")
    return shape[0]


def read_labels(path: Path) -> np.ndarray:
    """All labels of a y file as (N,) uint8, checked to lie in {0, 1} (262,144 bytes for the full train split)."""
    with h5py.File(path, "r") as f:
        y = np.asarray(f["y"][...]).reshape(-1)
    bad = np.setdiff1d(np.unique(y), [0, 1])
    if len(bad):
        raise DataError(f"{path}: labels must be 0 or 1, found {bad[:10].tolist()}; is this a PatchCamelyon y file?")
    return y


def check_pair(files: SplitFiles) -> int:
    """Check an x/y pair (keys, shapes, dtypes, equal counts, labels); returns N."""
    n_x = check_dataset(files.x, "x")
    n_y = check_dataset(files.y, "y")
    if n_x != n_y:
        raise DataError(f"{files.x} has {n_x} images but {files.y} has {n_y} labels; the counts must match "
                        f"(a partial download? re-download both files)")
    read_labels(files.y)
    return n_x


def check_gzip(path: Path) -> None:
    """Cheap check of a .h5.gz: the gzip header and first block decompress (truncation shows at full gunzip)."""
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(8)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip file ({err}); download it again") from err
    if head != b"\x89HDF\r\n\x1a\n":
        raise DataError(f"{path}: decompresses to something that is not HDF5 (starts with {head!r}); "
                        f"expected a gzipped PatchCamelyon .h5 file")


def check_pcam(root: Path) -> None:
    """Validate every PCam file in `root` without decompressing or loading images."""
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder; {DOWNLOAD_HINT}")
    for split in SPLITS:
        paths = {kind: find_file(root, split, kind) for kind in ("x", "y")}
        if all(p.suffix == ".h5" for p in paths.values()):
            check_pair(SplitFiles(paths["x"], paths["y"]))
            continue
        for kind, p in paths.items():
            if p.suffix == ".gz":
                check_gzip(p)
            else:
                check_dataset(p, kind)


# ---- decompression -----------------------------------------------------------------------------------------------

def plain_progress() -> bool:
    return os.environ.get("CI", "").lower() == "true" or not sys.stderr.isatty()


def gunzip_cached(src: Path, cache: Path) -> Path:
    """Decompress `src` once into `cache` (keyed on its path, size and mtime), atomically; reuse when present."""
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = cache / f"{src.name[:-3].removesuffix('.h5')}-{key}.h5"
    if dest.is_file():
        return dest
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with space_for(cache, src.stat().st_size, at_least=True):  # the folder itself may not fit
            cache.mkdir(parents=True, exist_ok=True)
        _gunzip(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _gunzip(src: Path, dest: Path, block: int = 1 << 22) -> None:
    total = src.stat().st_size
    report = _progress_reporter(f"decompressing {src.name}", total)
    written = 0
    try:
        # The decompressed size is only known at the end (gzip stores it modulo 4 GiB): a full disk reports what
        # had been written, a lower bound of what was needed.
        with space_for(dest.parent, lambda: written, at_least=True), open(src, "rb") as raw, \
                gzip.GzipFile(fileobj=raw) as f, open(dest, "wb") as out:
            for chunk in _chunks(src, f, block):
                out.write(chunk)
                written += len(chunk)
                report(raw.tell())
    finally:
        report(None)


def _chunks(src: Path, f: gzip.GzipFile, block: int) -> Iterator[bytes]:
    """The decompressed stream; reading errors are a damaged file (a write error is not: it is the disk's)."""
    try:
        while chunk := f.read(block):
            yield chunk
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{src}: gzip stream is damaged or truncated ({err}); download it again") from err


def _progress_reporter(label: str, total: int):
    """A callable(done_bytes | None): a rich bar on a terminal, a plain line every 10 % otherwise."""
    if plain_progress():
        state = {"next": 0.1}

        def plain(done: int | None) -> None:
            if done is None:
                print(f"{label}: done", file=sys.stderr, flush=True)
            elif done / max(total, 1) >= state["next"]:
                print(f"{label}: {100 * done / max(total, 1):.0f} %", file=sys.stderr, flush=True)
                state["next"] += 0.1
        return plain
    from rich.progress import Progress
    bar = Progress(transient=True)
    task = bar.add_task(label, total=total)
    bar.start()

    def fancy(done: int | None) -> None:
        if done is None:
            bar.stop()
        else:
            bar.update(task, completed=done)
    return fancy


def resolve_files(root: Path, cache: Path) -> dict[str, SplitFiles]:
    """Per split, the .h5 files to read: given ones, or decompressed copies of the .h5.gz in `cache`."""
    files = {}
    for split in SPLITS:
        found = {kind: find_file(root, split, kind) for kind in ("x", "y")}
        plain = {k: gunzip_cached(p, cache) if p.suffix == ".gz" else p for k, p in found.items()}
        files[split] = SplitFiles(plain["x"], plain["y"])
    return files


# ---- subsets -----------------------------------------------------------------------------------------------------

def class_orders(labels: np.ndarray, seed: int, split: str) -> list[np.ndarray]:
    """Per class, a seeded permutation of its rows. Taking prefixes of these gives nested stratified subsets."""
    rng = np.random.default_rng([seed, SPLITS.index(split), 0xCA3])
    return [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]


def stratified_counts(sizes: list[int], n: int) -> list[int]:
    """Split n across classes in proportion to their sizes (largest remainder); n >= total means all."""
    total = sum(sizes)
    if n <= 0 or n >= total:
        return list(sizes)
    exact = np.array(sizes, dtype=float) * n / total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def select_rows(labels: np.ndarray, seed: int, split: str, cap: int, fraction: float = 1.0) -> np.ndarray:
    """Sorted rows of a stratified, seeded subset: at most `cap` rows (0 = all), then `fraction` of those.

    Both steps take prefixes of the same per-class permutations, so for one seed a smaller cap or fraction always
    gives a subset of a larger one (1 % inside 10 % inside 100 %).
    """
    orders = class_orders(labels, seed, split)
    capped = stratified_counts([len(o) for o in orders], cap)
    kept = [max(1, round(fraction * c)) if c else 0 for c in capped]
    return np.sort(np.concatenate([o[:k] for o, k in zip(orders, kept)]))


# ---- loading -----------------------------------------------------------------------------------------------------

def load_split(files: SplitFiles, rows: np.ndarray, labels: np.ndarray, in_memory: bool, cache: Path) -> Split:
    """Streamed from HDF5, or in memory: a small subset copied into this worker, a large one mapped and shared."""
    if not in_memory:
        return H5Split((files.x, "x"), (files.y, "y"), rows, labels[rows])
    if not shared.worth_mapping(len(rows) * _row_bytes(files.x)):
        return private_split(files, rows, labels)
    images = shared.mapped_array(files.x, "x", cache, _progress_reporter)
    return MappedSplit(images, labels.astype(np.int64), rows, labels[rows])


def private_split(files: SplitFiles, rows: np.ndarray, labels: np.ndarray) -> ArraySplit:
    """The selected rows read into this process's memory (the only in-memory path before the shared one)."""
    with h5py.File(files.x, "r") as f:
        images = read_rows(f["x"], rows)
    return ArraySplit(images, labels[rows].astype(np.int64), labels[rows])


def _row_bytes(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(np.prod(f["x"].shape[1:])) * f["x"].dtype.itemsize


def load_pcam(root: Path, cache: Path, caps: dict[str, int], fraction: float, seed: int, in_memory: bool,
              name: str = "PatchCamelyon") -> Splits:
    """PCam-format files in `root` -> Splits. `caps` maps split -> max rows (0 = all); `fraction` thins train."""
    files = resolve_files(root, cache)
    splits, parts, selected = {}, [], {}
    for split in SPLITS:
        n = check_pair(files[split])
        labels = read_labels(files[split].y)
        rows = selected[split] = select_rows(labels, seed, split, caps[split], fraction if split == "train" else 1.0)
        splits[split] = load_split(files[split], rows, labels, in_memory, cache)
        parts.append(f"{split} {len(rows):,}" + (f" of {n:,}" if len(rows) < n else ""))
    size = _image_side(files["train"].x)
    mode = _mode(splits["train"])
    text = f"{name} ({root}): {', '.join(parts)}; fraction {fraction:g}; {size}x{size}; {mode}"
    slides = slide_ids(root, "test", len(read_labels(files["test"].y)))
    if slides is not None:  # the test metrics' bootstrap resamples whole slides then
        splits["test"].groups = slides[selected["test"]]
        text += f"; test slides from {meta_name('test')} ({len(set(splits['test'].groups))})"
    return Splits(splits["train"], splits["valid"], splits["test"], text, classes=PCAM_CLASSES)


def meta_name(split: str) -> str:
    return f"camelyonpatch_level_2_split_{split}_meta.csv"


def slide_ids(root: Path, split: str, rows: int) -> np.ndarray | None:
    """The `wsi` column of the split's _meta.csv (one line per patch, in file order), or None when the table is
    absent or does not fit (it only refines the statistics, so it never stops a run)."""
    path = Path(root) / meta_name(split)
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            column = next(reader).index("wsi")
            ids = np.array([line[column] for line in reader], dtype=object)
    except (OSError, StopIteration, ValueError, IndexError, csv.Error):
        return None
    return ids if len(ids) == rows else None


def _mode(split: Split) -> str:
    return {MappedSplit: "in memory, mapped and shared", H5Split: "streamed"}.get(type(split), "in memory")


def _image_side(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["x"].shape[1])


def write_pcam_pair(x_path: Path, y_path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split in PCam's format, atomically (temp file + rename) and byte-reproducibly (no timestamps)."""
    write_h5_atomic(x_path, {"x": images})
    write_h5_atomic(y_path, {"y": labels.astype(np.uint8).reshape(-1, 1, 1, 1)})


def write_h5_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` through a temporary file; a full disk raises DiskFull and leaves no partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with space_for(path.parent, sum(value.nbytes for value in arrays.values())):
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(tmp, "w", track_order=False) as f:
                for key, value in arrays.items():
                    f.create_dataset(key, data=value, track_times=False)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
