"""Segmentation data from the user: a folder of images and masks, or one .npz/.h5 array file; tiling and splits.

Masks may hold instance ids, or be binary (0/1, 0/255), or colour-coded instances; binary masks become instances
by connected components. Images are cut into image_size tiles (the last row/column aligned to the edge so the
whole image is covered) and split 70/15/15 by image when there are at least three images, else by tile.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import h5py
import numpy as np
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential

from runner.data import shared
from runner.data.batches import ArraySplit, H5Split, MappedSplit, Split, Splits
from runner.data.errors import DataError
from runner.data.pcam import SPLITS, select_rows

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
ARRAY_SUFFIXES = (".npz", ".h5", ".hdf5")
SHARES = (0.7, 0.15, 0.15)


# ---- validation --------------------------------------------------------------------------------------------------

def folder_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by stem; DataError for a missing folder or mask."""
    images_dir, masks_dir = root / "images", root / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DataError(f"{d} not found; data.source = \"folder\" expects data.root to hold images/ and masks/ "
                            f"(masks/<same stem>.png|tif)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{images_dir} holds no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DataError(f"{masks_dir}: no mask for {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}; expected masks/<same stem>.png or .tif")
    return [(p, masks[p.stem]) for p in images]


def check_folder(root: Path) -> None:
    """Pairs exist and each image and mask have the same size (read from the headers only)."""
    from PIL import Image
    for image, mask in folder_pairs(root):
        try:
            with Image.open(image) as a, Image.open(mask) as b:
                sizes = a.size, b.size
        except OSError as err:
            raise DataError(f"{image} or {mask}: cannot read the image ({err})") from err
        if sizes[0] != sizes[1]:
            raise DataError(f"{mask}: mask is {sizes[1][0]}x{sizes[1][1]} but {image.name} is "
                            f"{sizes[0][0]}x{sizes[0][1]}; a mask must match its image's size")


def array_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of `image` and `mask` in an .npz or .h5 file, without loading the arrays."""
    if not path.is_file():
        raise DataError(f"data.path {path} not found; expected an .npz or .h5 file with arrays `image` and `mask`")
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise DataError(f"data.path {path}: unsupported suffix {path.suffix!r}; allowed: {', '.join(ARRAY_SUFFIXES)}")
    try:
        shapes = file_shapes(path)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot read ({err}); expected an .npz or .h5 file") from err
    missing = [k for k in ("image", "mask") if k not in shapes]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; found {sorted(shapes)}; expected `image` and `mask`")
    return shapes


def file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every array in an .npz or .h5 file, read from the headers only."""
    return _npz_shapes(path) if path.suffix.lower() == ".npz" else _h5_shapes(path)


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            with z.open(name) as f:
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(f)
            shapes[name.removesuffix(".npy")] = tuple(header[0])
    return shapes


def _h5_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with h5py.File(path, "r") as f:
        return {k: tuple(f[k].shape) for k in f.keys() if isinstance(f[k], h5py.Dataset)}


def check_arrays(path: Path) -> None:
    shapes = array_shapes(path)
    image, mask = shapes["image"], shapes["mask"]
    many = len(mask) == 3
    ok = len(mask) in (2, 3) and image[:len(mask)] == mask and len(image) - len(mask) in (0, 1)
    if not ok:
        raise DataError(f"{path}: `image` {image} and `mask` {mask} do not match; expected image (N, H, W[, C]) "
                        f"with mask (N, H, W), or image (H, W[, C]) with mask (H, W)")
    if many and mask[0] == 0:
        raise DataError(f"{path}: `mask` holds no images (shape {mask})")


# ---- conversion --------------------------------------------------------------------------------------------------

def to_rgb(image: np.ndarray, source: str) -> np.ndarray:
    """(H, W[, C]) any dtype -> (H, W, 3) uint8."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] not in (1, 3, 4):
        raise DataError(f"{source}: image has {image.shape[-1]} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    top = 1.0 if image.max(initial=0) <= 1.0 else (255.0 if image.max() <= 255 else float(image.max()))
    return np.clip(np.rint(image * 255 / top), 0, 255).astype(np.uint8)


def to_instances(mask: np.ndarray, source: str) -> np.ndarray:
    """Instance ids (H, W) int32 from ids, a binary mask, or a colour-coded mask (H, W, C)."""
    if mask.ndim == 3:
        if (mask == mask[..., :1]).all():
            mask = mask[..., 0]
        else:  # colour-coded instances: one id per distinct colour, black is background
            colours, inverse = np.unique(mask.reshape(-1, mask.shape[-1]), axis=0, return_inverse=True)
            ids = inverse.reshape(mask.shape[:2]) + 1
            ids[(mask == 0).all(axis=-1)] = 0
            mask = ids
    if mask.ndim != 2:
        raise DataError(f"{source}: mask has shape {mask.shape}; expected (H, W) or (H, W, C)")
    if np.issubdtype(mask.dtype, np.floating) and not np.all(mask == np.round(mask)):
        raise DataError(f"{source}: mask holds fractional values; expected integer ids or 0/1 / 0/255")
    if mask.min(initial=0) < 0:
        raise DataError(f"{source}: mask holds negative values; expected ids >= 0 (0 = background)")
    values = np.unique(mask)
    if len(values) <= 2:  # binary: separate touching-free nuclei by connected components
        return connected_components(mask > 0, connectivity=1).astype(np.int32)
    return mask.astype(np.int32)


def tile_starts(length: int, tile: int) -> list[int]:
    """Tile origins along one axis covering [0, length): stride `tile`, the last aligned to the end."""
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_pair(image: np.ndarray, mask: np.ndarray, tile: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) and its ids (H, W) -> tiles (T, tile, tile, 3) and (T, tile, tile), ids renumbered."""
    h, w = mask.shape
    if image.shape[:2] != mask.shape:
        raise DataError(f"{source}: image is {image.shape[1]}x{image.shape[0]} but mask is {w}x{h}; they must match")
    if h < tile or w < tile:
        raise DataError(f"{source}: image {w}x{h} is smaller than data.image_size {tile}; lower data.image_size")
    images, masks = [], []
    for y in tile_starts(h, tile):
        for x in tile_starts(w, tile):
            images.append(image[y:y + tile, x:x + tile])
            masks.append(relabel_sequential(mask[y:y + tile, x:x + tile])[0])
    return np.stack(images), np.stack(masks).astype(np.int32)


# ---- loading -----------------------------------------------------------------------------------------------------

def read_folder(root: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    from skimage.io import imread
    check_folder(root)
    out = []
    for image, mask in folder_pairs(root):
        out.append((to_rgb(imread(image), str(image)), to_instances(imread(mask), str(mask)), str(image)))
    return out


def read_arrays(path: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    check_arrays(path)
    if path.suffix.lower() == ".npz":
        with np.load(path) as f:
            images, masks = f["image"], f["mask"]
    else:
        with h5py.File(path, "r") as f:
            images, masks = f["image"][...], f["mask"][...]
    if masks.ndim == 2:
        images, masks = images[None], masks[None]
    return [(to_rgb(im, f"{path}[{i}]"), to_instances(m, f"{path}[{i}]"), f"{path}[{i}]")
            for i, (im, m) in enumerate(zip(images, masks))]


def split_tiles(items: list[tuple[np.ndarray, np.ndarray, str]], tile: int,
                seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiles per split: by image (seeded 70/15/15) when there are >= 3 images, else by tile."""
    tiled = [tile_pair(im, m, tile, src) for im, m, src in items]
    if len(tiled) >= 3:
        groups = _assign(len(tiled), seed)
        return {s: _stack([tiled[i] for i in groups[s]]) for s in SPLITS}
    images, masks = _stack(tiled)
    if len(images) < 3:
        raise DataError(f"{items[0][2]}: only {len(images)} tile(s) of {tile}x{tile}; need at least 3 (one per "
                        f"split): add images or lower data.image_size")
    groups = _assign(len(images), seed)
    return {s: (images[groups[s]], masks[groups[s]]) for s in SPLITS}


def _assign(n: int, seed: int) -> dict[str, np.ndarray]:
    """A seeded 70/15/15 partition of range(n); every split gets at least one item."""
    order = np.random.default_rng([seed, 0x5E6]).permutation(n)
    n_valid = max(1, round(SHARES[1] * n))
    n_test = max(1, round(SHARES[2] * n))
    n_train = n - n_valid - n_test
    return {"train": np.sort(order[:n_train]), "valid": np.sort(order[n_train:n_train + n_valid]),
            "test": np.sort(order[n_train + n_valid:])}


def _stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def subset_split(images: np.ndarray, masks: np.ndarray, seed: int, split: str, cap: int,
                 fraction: float) -> ArraySplit:
    rows = select_rows(np.zeros(len(images), np.int64), seed, split, cap, fraction)
    return ArraySplit(images[rows], masks[rows], None)


def load_user_segmentation(source: str, location: Path, tile: int, seed: int, caps: dict[str, int],
                           fraction: float) -> Splits:
    """folder / arrays -> Splits of image_size tiles (held in memory; user segmentation sets are small)."""
    items = read_folder(location) if source == "folder" else read_arrays(location)
    tiles = split_tiles(items, tile, seed)
    splits = {s: subset_split(*tiles[s], seed, s, caps[s], fraction if s == "train" else 1.0) for s in SPLITS}
    counts = ", ".join(f"{s} {len(splits[s]):,}" for s in SPLITS)
    text = (f"segmentation {source} ({location}): {len(items)} image(s) -> {tile}x{tile} tiles: {counts}; "
            f"fraction {fraction:g}")
    return Splits(splits["train"], splits["valid"], splits["test"], text)


def load_nuclei_files(folder: Path, seed: int, caps: dict[str, int], fraction: float, in_memory: bool) -> Splits:
    """The synthetic nuclei_{split}.h5 files (keys `image`, `mask`) -> Splits (large ones mapped, as for PCam)."""
    splits = {}
    for split in SPLITS:
        path = folder / f"nuclei_{split}.h5"
        with h5py.File(path, "r") as f:
            n, size, row_bytes = f["mask"].shape[0], f["mask"].shape[1], f["image"][0].nbytes + f["mask"][0].nbytes
            rows = select_rows(np.zeros(n, np.int64), seed, split, caps[split],
                               fraction if split == "train" else 1.0)
            if in_memory and not shared.worth_mapping(len(rows) * row_bytes):
                splits[split] = ArraySplit(f["image"][...][rows], f["mask"][...][rows], None)
        if in_memory and split not in splits:
            splits[split] = MappedSplit(shared.mapped_array(path, "image", folder),
                                        shared.mapped_array(path, "mask", folder), rows, None)
        elif not in_memory:
            splits[split] = H5Split((path, "image"), (path, "mask"), rows, None, target_shape=(size, size))
    counts = ", ".join(f"{s} {len(splits[s]):,}" for s in SPLITS)
    mode = "in memory" if in_memory else "streamed"
    return Splits(splits["train"], splits["valid"], splits["test"],
                  f"synthetic nuclei ({folder.name}): {counts}; fraction {fraction:g}; {size}x{size}; {mode}")


