"""Hostile files: a few megabytes (or kilobytes) on disk that declare billions of pixels.

- a tiled TIFF of 50,000 x 50,000 RGB pixels whose 2,401 zlib tiles are one 3 kB blob repeated: 7.4 MB on disk,
  7.5 GB decoded; OpenSlide reads it as a one-level slide;
- a TIFF whose ImageWidth/ImageLength tags were rewritten to claim more than its tiles hold (the header lies);
- a PNG whose IHDR declares 10,000 x 10,000 pixels: below Pillow's own bomb limit, above ours;
- an HDF5 stack of one 50,000 x 50,000 image, chunked and compressed, never written (the fill value is the data).
"""
from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile

BOMB_SIDE = 50_000


def tiff_bomb(path: Path, side: int = BOMB_SIDE, tile: int = 1024, mpp: float = 0.25) -> Path:
    """A genuine (not lying) tiled TIFF of side x side RGB pixels, all black, made of one compressed tile."""
    blob = zlib.compress(np.zeros((tile, tile, 3), np.uint8).tobytes(), 9)
    count = (-(-side // tile)) ** 2
    resolution = (1e4 / mpp, 1e4 / mpp)  # pixels per centimetre, how OpenSlide finds the scale
    tifffile.imwrite(path, itertools.repeat(blob, count), shape=(side, side, 3), dtype=np.uint8,
                     tile=(tile, tile), compression="zlib", photometric="rgb", resolution=resolution,
                     resolutionunit="CENTIMETER")
    return path


def declare_size(path: Path, page: int, width: int, height: int) -> None:
    """Rewrite one page's ImageWidth and ImageLength tags in place; its tiles stay as they are."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tiff:
        tags = tiff.pages[page].tags
        for code, value in ((256, width), (257, height)):
            tag = tags[code]
            struct.pack_into("<I" if tag.dtype == 4 else "<H", data, tag.valueoffset, value)
    path.write_bytes(bytes(data))


def lying_tiff(path: Path, side: int = BOMB_SIDE) -> Path:
    """A 512 x 512 tiled TIFF (a few kB) whose header claims side x side pixels."""
    tifffile.imwrite(path, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), compression="zlib",
                     photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    declare_size(path, 0, side, side)
    return path


def lying_pyramid(path: Path, side: int = 200_000, mpp: float = 0.972) -> Path:
    """A two-level slide: level 0 claims side x side pixels (it holds 512 x 512), level 1 is a true 1/128 overview.

    The overview keeps the thumbnail small, so only the patch grid the header implies is too large.
    """
    overview = -(-side // 128)
    with tifffile.TiffWriter(path) as tiff:
        for index, level in enumerate((np.full((512, 512, 3), 200, np.uint8),
                                       np.full((overview, overview, 3), 200, np.uint8))):
            pixels_per_cm = 1e4 / (mpp * 128**index)
            tiff.write(level, tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=index,
                       resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER")
    declare_size(path, 0, side, side)
    return path


def png_bomb_bytes(side: int = 10_000) -> bytes:
    """A PNG declaring side x side RGB pixels that holds the first row only (a truncated stream)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    row = zlib.compress(bytes(1 + 3 * side))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def png_bomb(path: Path, side: int = 10_000) -> Path:
    path.write_bytes(png_bomb_bytes(side))
    return path


def h5_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A PCam-like `x` stack of one side x side RGB image; no chunk is ever written, so the file is tiny."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", shape=(1, side, side, 3), dtype=np.uint8, chunks=(1, 256, 256, 3),
                              compression="gzip")
    return path
