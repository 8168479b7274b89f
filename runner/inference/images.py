"""Images in and out: decode user files and uploads to RGB uint8 arrays the model can take, encode masks.

Every rejection is a BadImage whose message is the reason a user sees next to the file's name.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")


class BadImage(ValueError):
    """An input that cannot be predicted; the message says why."""


def decode(data: bytes, name: str) -> np.ndarray:
    """Image bytes (PNG, JPEG, TIFF) -> (H, W, 3) uint8 RGB."""
    try:
        if name.lower().endswith(TIFF_SUFFIXES) or data[:4] in (b"II*\x00", b"MM\x00*"):
            import tifffile

            array = tifffile.imread(io.BytesIO(data))
        else:
            array = _decode_pillow(data)
    except BadImage:
        raise
    except Exception as exc:  # noqa: BLE001 - image libraries raise many types for a broken file
        raise BadImage(f"not a readable PNG, JPEG or TIFF image ({type(exc).__name__})") from exc
    return as_rgb(array)


def read(path: Path) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot be read ({exc.strerror or exc})") from exc
    return decode(data, str(path))


def _decode_pillow(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
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
