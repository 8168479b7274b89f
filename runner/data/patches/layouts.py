"""Where a classification source's patches are: one catalog of items (id, label, group, predefined split) per layout.

Finding items never raises for the user's mistakes: it returns them as problems, so that `check` can report every
problem of a source in one error. Only the file listing and the small label/metadata arrays are read here; image
pixels are read by `check` (headers) and `load` (decoding).
"""
from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from runner.data.arrays import ARRAY_SUFFIXES, IMAGE_SUFFIXES, file_shapes
from runner.data.pcam import SPLITS
from runner.spec.config import DataSpec

# Folder names and manifest values accepted for each split; `val` is MedMNIST's and torchvision's spelling.
SPLIT_NAMES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
MANIFEST_REQUIRED = ("path", "label")
MANIFEST_OPTIONAL = ("split", "group")
MEDMNIST_KEYS = tuple(f"{s}_{kind}" for s in ("train", "val", "test") for kind in ("images", "labels"))


@dataclass(frozen=True)
class Item:
    id: str  # path relative to data.root / the manifest's folder, or `key[row]` in an arrays file
    label: int
    group: str = ""  # slide or patient id ("" when the source has none)
    split: str = ""  # predefined split (train | valid | test), "" when the source has none
    path: Path | None = None  # the image file (None for arrays)
    meta: tuple[tuple[str, str], ...] = ()  # a manifest's extra columns, kept for later use


@dataclass(frozen=True)
class Catalog:
    source: str  # folder | manifest | arrays
    key: str  # the spec key that names the location, for messages
    location: Path
    items: tuple[Item, ...] = ()
    classes: tuple[str, ...] = ()
    predefined: str = ""  # how the predefined splits were given ("" = none: the runner makes them)
    problems: tuple[str, ...] = ()
    image_keys: tuple[str, ...] = ()  # arrays: the datasets holding the images, in item order
    image_shapes: tuple[tuple[int, ...], ...] = ()  # arrays: their shapes

    @property
    def labels(self) -> np.ndarray:
        return np.array([item.label for item in self.items], dtype=np.int64)

    @property
    def grouped(self) -> bool:
        return any(item.group for item in self.items)


def find(data: DataSpec) -> Catalog:
    """The catalog of `data`'s source (folder, manifest or arrays); its problems say what is wrong."""
    if data.source == "folder":
        return find_folder(_path(data.root))
    if data.source == "manifest":
        return find_manifest(_path(data.path))
    return find_arrays(_path(data.path))


def _path(value: str) -> Path:
    return Path(value).expanduser() if value else Path()


def failed(source: str, key: str, location: Path, *problems: str) -> Catalog:
    return Catalog(source, key, location, problems=problems)


# ---- folder ------------------------------------------------------------------------------------------------------

def find_folder(root: Path) -> Catalog:
    """root/<class>/<image> or root/{train,valid,test}/<class>/<image>; classes are the sorted folder names."""
    if root == Path() or not root.is_dir():
        return failed("folder", "data.root", root, f"data.root = {str(root)!r} is not a folder; set it to a folder "
                      f"of class subfolders (<class>/*.png) or of train/, valid/, test/ with class subfolders")
    subdirs = sorted(d.name for d in _subdirs(root))
    named = [d for d in subdirs if d.lower() in SPLIT_NAMES]
    if not named:
        return _folder_catalog(root, {"": root}, "")
    if len(named) < len(subdirs):
        return failed("folder", "data.root", root, f"{root} mixes split folders ({', '.join(named)}) with other "
                      f"folders ({', '.join(d for d in subdirs if d not in named)}); use either class folders only "
                      f"or train/, valid/ (or val/), test/ only, each holding class folders")
    by_split = {SPLIT_NAMES[d.lower()]: root / d for d in named}
    if len(by_split) < len(named) or set(by_split) != set(SPLITS):
        return failed("folder", "data.root", root, f"{root} has split folders {', '.join(named)}; predefined splits "
                      f"need exactly one each of train/, valid/ (or val/) and test/")
    return _folder_catalog(root, by_split, "train/valid/test folders")


def _subdirs(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_catalog(root: Path, by_split: dict[str, Path], predefined: str) -> Catalog:
    per_split = {split: {d.name: _images_in(d) for d in _subdirs(folder)} for split, folder in by_split.items()}
    classes = tuple(sorted({name for folders in per_split.values() for name in folders}))
    if not classes:
        return failed("folder", "data.root", root, f"{root} holds no class folders; expected <class>/ subfolders "
                      f"with images ending in {', '.join(IMAGE_SUFFIXES)}")
    items = tuple(Item(str(path.relative_to(root)), classes.index(name), split=split, path=path)
                  for split in sorted(per_split) for name, paths in sorted(per_split[split].items()) for path in paths)
    problems = () if items else (f"{root}: the class folders hold no images; expected files ending in "
                                 f"{', '.join(IMAGE_SUFFIXES)}",)
    return Catalog("folder", "data.root", root, items, classes, predefined, problems)


# ---- manifest ----------------------------------------------------------------------------------------------------

def find_manifest(path: Path) -> Catalog:
    """A CSV with path (relative to its folder), label, and optional split and group; extra columns are metadata."""
    if path == Path() or not path.is_file():
        return failed("manifest", "data.path", path, f"data.path = {str(path)!r} is not a file; set it to a CSV "
                      f"manifest with columns {', '.join(MANIFEST_REQUIRED)} (optional: {', '.join(MANIFEST_OPTIONAL)})")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns, rows = [c.strip() for c in reader.fieldnames or []], list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return failed("manifest", "data.path", path, f"{path}: cannot read as a CSV file ({err}); save it as UTF-8 CSV")
    missing = [c for c in MANIFEST_REQUIRED if c not in columns]
    if missing:
        return failed("manifest", "data.path", path, f"{path}: missing column(s) {', '.join(missing)}; it has "
                      f"{', '.join(columns) or 'no header'}; required: {', '.join(MANIFEST_REQUIRED)} (optional: "
                      f"{', '.join(MANIFEST_OPTIONAL)})")
    rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in rows]
    return _manifest_catalog(path, columns, rows)


def _manifest_catalog(path: Path, columns: list[str], rows: list[dict[str, str]]) -> Catalog:
    problems: list[str] = []
    classes = class_names(row["label"] for row in rows)
    splits = [_split_value(row.get("split", ""), n, path, problems) for n, row in enumerate(rows, start=2)]
    if "split" in columns and any(splits) and not all(splits):
        empty = [str(n) for n, s in enumerate(splits, start=2) if not s]
        problems.append(f"{path}: column split is empty on line(s) {few(empty)}; fill it on every line "
                        f"(allowed: train, valid, test) or drop the column to let the runner split")
    missing = []
    extra = [c for c in columns if c not in MANIFEST_REQUIRED + MANIFEST_OPTIONAL]
    items = []
    for n, row in enumerate(rows, start=2):
        file = (path.parent / row["path"]).expanduser() if row["path"] else None
        if file is None or not file.is_file():
            missing.append(f"line {n}: {file or '(empty path)'}")
        items.append(Item(row["path"], classes.index(label_text(row["label"])) if row["label"] else -1,
                          row.get("group", ""), splits[n - 2] if all(splits) else "", file,
                          tuple((c, row.get(c, "")) for c in extra)))
    empty_labels = [str(n) for n, row in enumerate(rows, start=2) if not row["label"]]
    if empty_labels:
        problems.append(f"{path}: column label is empty on line(s) {few(empty_labels)}; give every row a class")
    if missing:
        problems.append(f"{path}: {len(missing)} image file(s) named in column path not found (paths are relative "
                        f"to the manifest's folder {path.parent}): {few(missing)}; fix the paths or drop the rows")
    if not rows:
        problems.append(f"{path}: the manifest has a header but no rows; add one row per patch")
    predefined = "manifest split column" if splits and all(splits) else ""
    return Catalog("manifest", "data.path", path, tuple(items), classes, predefined, tuple(problems))


def _split_value(value: str, line: int, path: Path, problems: list[str]) -> str:
    if value and value.lower() not in SPLIT_NAMES:
        problems.append(f"{path}: line {line}: split = {value!r}; allowed: train, valid (or val), test")
        return "?"
    return SPLIT_NAMES.get(value.lower(), "")


def label_text(value: object) -> str:
    """A label as its class name: integers (also 3.0, b'3', numpy ints) as their decimal digits."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def class_names(labels: Iterable[object]) -> tuple[str, ...]:
    """Sorted unique labels as strings; when all are integers, in numeric order (so "10" comes after "9")."""
    names = {label_text(v) for v in labels if label_text(v)}
    if names and all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def few(values: list[str], most: int = 10) -> str:
    """The first `most` values, then how many were left out."""
    shown = ", ".join(values[:most])
    return shown + (f" (and {len(values) - most} more)" if len(values) > most else "")


# ---- arrays ------------------------------------------------------------------------------------------------------

def find_arrays(path: Path) -> Catalog:
    """An .npz/.h5 with `image` and `label` (optional `group`, `classes`), or MedMNIST's train_/val_/test_ arrays."""
    wanted = "an .npz or .h5 file with `image` (N, H, W, 3) uint8 and `label` (N,), or MedMNIST's npz"
    if path == Path() or not path.is_file():
        return failed("arrays", "data.path", path, f"data.path = {str(path)!r} is not a file; set it to {wanted}")
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        return failed("arrays", "data.path", path, f"data.path = {path}: unsupported suffix {path.suffix!r}; "
                      f"allowed: {', '.join(ARRAY_SUFFIXES)}")
    try:
        shapes = file_shapes(path)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        return failed("arrays", "data.path", path, f"{path}: cannot read ({err}); expected {wanted}")
    if all(k in shapes for k in MEDMNIST_KEYS):
        parts = [(f"{s}_images", f"{s}_labels", SPLIT_NAMES[s]) for s in ("train", "val", "test")]
        return _arrays_catalog(path, shapes, parts, "MedMNIST train/val/test arrays")
    if "image" in shapes and "label" in shapes:
        return _arrays_catalog(path, shapes, [("image", "label", "")], "")
    return failed("arrays", "data.path", path, f"{path}: found arrays {', '.join(sorted(shapes)) or 'none'}; "
                  f"expected `image` and `label` (optional `group`, `classes`), or MedMNIST's "
                  f"{', '.join(MEDMNIST_KEYS)}")


def _arrays_catalog(path: Path, shapes: dict[str, tuple[int, ...]], parts: list[tuple[str, str, str]],
                    predefined: str) -> Catalog:
    problems = [p for image, label, _ in parts for p in _shape_problems(path, image, label, shapes)]
    if "group" in shapes and (len(parts) > 1 or shapes["group"][:1] != shapes["image"][:1]):
        problems.append(f"{path}: `group` has shape {shapes['group']}; expected one group per image "
                        f"({shapes[parts[0][0]][:1]})")
    if problems:
        return failed("arrays", "data.path", path, *problems)
    try:
        labels = {label: read_array(path, label).reshape(-1) for _, label, _ in parts}
        groups = read_array(path, "group").reshape(-1) if "group" in shapes else None
        names = read_array(path, "classes").reshape(-1) if "classes" in shapes else None
    except (OSError, ValueError, KeyError) as err:  # e.g. object arrays, which need pickle: never loaded
        return failed("arrays", "data.path", path, f"{path}: cannot read labels, groups or classes ({err}); store "
                      f"them as plain numeric or string arrays")
    classes, problems = _array_classes(path, np.concatenate(list(labels.values())), names)
    if problems:
        return failed("arrays", "data.path", path, *problems)
    items = tuple(Item(f"{image}[{row}]", int(value), label_text(groups[row]) if groups is not None else "", split)
                  for image, label, split in parts for row, value in enumerate(labels[label]))
    return Catalog("arrays", "data.path", path, items, classes, predefined, (),
                   tuple(p[0] for p in parts), tuple(shapes[p[0]] for p in parts))


def _shape_problems(path: Path, image: str, label: str, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    x, y = shapes[image], shapes[label]
    problems = []
    if len(x) not in (3, 4) or (len(x) == 4 and x[3] not in (1, 3, 4)):
        problems.append(f"{path}: `{image}` has shape {x}; expected (N, H, W, 3) (or (N, H, W) grey, (N, H, W, 4))")
    if len(y) not in (1, 2) or (len(y) == 2 and y[1] != 1):
        problems.append(f"{path}: `{label}` has shape {y}; expected (N,) or (N, 1) integer class labels "
                        f"(multi-label sets are not supported)")
    elif x[:1] == (0,):
        problems.append(f"{path}: `{image}` holds no images (shape {x}); add patches")
    elif x[:1] != y[:1]:
        problems.append(f"{path}: `{image}` holds {x[0] if x else 0} images but `{label}` holds {y[0]} labels; "
                        f"the counts must match (one label per image)")
    return problems


def _array_classes(path: Path, labels: np.ndarray, names: np.ndarray | None) -> tuple[tuple[str, ...], list[str]]:
    if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0)):
        return (), [f"{path}: labels have dtype {labels.dtype}; expected integer class indices 0..K-1 (names go in "
                    f"a `classes` array)"]
    if len(labels) and labels.min() < 0:
        return (), [f"{path}: labels hold negative values ({int(labels.min())}); expected 0..K-1"]
    count = int(labels.max()) + 1 if len(labels) else 0
    if names is None:
        return tuple(str(k) for k in range(count)), []
    if len(names) < count:
        return (), [f"{path}: `classes` names {len(names)} classes but labels go up to {count - 1}; "
                    f"give one name per class index"]
    return tuple(label_text(n) for n in names), []


def read_array(path: Path, key: str) -> np.ndarray:
    """One array of an .npz or .h5 file (npz members load alone, so this never reads the images)."""
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return f[key]
    with h5py.File(path, "r") as f:
        return f[key][...]
