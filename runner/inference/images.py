"""Images in and out: decode user files and uploads to RGB uint8 arrays the model can take, encode masks.

Every rejection is a BadImage whose message is the reason a user sees next to the file's name.

Sizes are checked from the file's header before any pixel is decoded: a few megabytes of zlib tiles can declare
50,000 x 50,000 pixels (7.5 GB once decoded), so the declared size, not the file size, decides.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
# The most pixels one image may declare (--max-pixels): 8192 x 8192, 192 MiB once decoded as RGB. Real patches and
# tiles are far smaller (PCam's are 96 x 96); a larger region belongs in a slide, which is read patch by patch.
DEFAULT_MAX_PIXELS = 8192 * 8192


class BadImage(ValueError):
    """An input that cannot be predicted; the message says why."""


class TooLarge(BadImage):
    """An image whose header declares more pixels than the limit; refused before decoding."""


def decode(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image bytes (PNG, JPEG, TIFF) -> (H, W, 3) uint8 RGB; at most `max_pixels` pixels are decoded."""
    try:
        if name.lower().endswith(TIFF_SUFFIXES) or data[:4] in TIFF_MAGIC:
            array = _decode_tiff(data, max_pixels)
        else:
            array = _decode_pillow(data, max_pixels)
    except BadImage:
        raise
    except Exception as exc:  # noqa: BLE001 - image libraries raise many types for a broken file
        raise BadImage(f"not a readable PNG, JPEG or TIFF image ({type(exc).__name__})") from exc
    return as_rgb(array)


def read(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot be read ({exc.strerror or exc})") from exc
    return decode(data, str(path), max_pixels)


def check_pixels(shape: tuple[int, ...], max_pixels: int) -> None:
    """A TooLarge naming the declared size when (H, W[, channels]) or a stack of them exceeds the limit."""
    channels = shape[-1] if len(shape) >= 3 and shape[-1] <= 4 else 1
    pixels = math.prod(shape) // channels
    if pixels > max_pixels:
        size = "x".join(str(n) for n in (shape[:-1] if channels > 1 else shape))
        raise TooLarge(f"declares {size} pixels ({pixels:,}), more than the {max_pixels:,}-pixel limit; "
                       "crop or tile it, or raise --max-pixels")


def _decode_tiff(data: bytes, max_pixels: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        series = tiff.series[0]  # what tifffile.imread decodes by default
        check_pixels(tuple(series.shape), max_pixels)
        return series.asarray()


def _decode_pillow(data: bytes, max_pixels: int) -> np.ndarray:
    from PIL import Image

    try:
        opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own limit, which stays in force above ours
        raise TooLarge(f"declares more pixels than Pillow decodes ({exc})") from exc
    with opened as image:
        width, height = image.size  # from the header; pixels are decoded by np.asarray below
        check_pixels((height, width), max_pixels)
        if image.mode == "P":  # palette images are colour images stored compactly
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        return np.asarray(image)


def as_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8; an alpha channel is dropped; anything else is a BadImage naming what it got."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise BadImage(f"pixel type {array.dtype}; the model takes 8-bit RGB")
    channels = 1 if array.ndim == 2 else array.shape[-1] if array.ndim == 3 else None
    if channels is None:
        raise BadImage(f"array of shape {array.shape}; expected an (H, W, 3) RGB image")
    if channels not in (3, 4):
        raise BadImage(f"{channels} channel(s); the model takes 3 (RGB)")
    return np.ascontiguousarray(array[..., :3])


def check_size(image: np.ndarray, size: tuple[int, int]) -> None:
    height, width = image.shape[:2]
    if height < size[0] or width < size[1]:
        raise BadImage(f"{height}x{width} pixels is smaller than the model's {size[0]}x{size[1]} input")


def centre_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centred size[0] x size[1] window (a PCam label is about the patch centre)."""
    check_size(image, size)
    top, left = (image.shape[0] - size[0]) // 2, (image.shape[1] - size[1]) // 2
    return image[top:top + size[0], left:left + size[1]]


def encode_png(mask: np.ndarray) -> bytes:
    """A binary (H, W) mask as an 8-bit PNG, 255 = foreground."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
