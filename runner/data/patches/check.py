"""Validation of a classification source before anything trains: every problem found, then one DataError.

Image files are opened with PIL for their header (size, mode). A PNG is also verified (`Image.verify()` walks
every chunk and checks its CRC, so a truncated or damaged file is caught without decoding pixels: about the cost
of reading the file). Sets up to DECODE_CHECK_MAX files are decoded in full as well, which also catches damaged
JPEG and TIFF data; larger sets are decoded once when loading, which reports damaged files the same way.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from runner.data.errors import DataError
from runner.data.patches.layouts import Catalog, Item, few
from runner.data.pcam import SPLITS

MIN_SIDE = 16  # the smallest patch the models take (models accept any square side >= 16)
DECODE_CHECK_MAX = 2000  # files decoded in full by the check; above this the load decodes (and reports) them
MIN_PER_CLASS = 5  # a made 70/15/15 split needs this many images of a class to give every split one of them
MIN_GROUPS_PER_CLASS = 3  # grouped: each class must appear in three groups, one per split
EXAMPLES = 3  # files named per patch size in the mixed-size message


@dataclass(frozen=True)
class Inspected:
    """What the check learnt of one image file: its (width, height), or why it cannot be read."""

    item: Item
    size: tuple[int, int] = (0, 0)
    error: str = ""


def inspect(item: Item, decode: bool) -> Inspected:
    from PIL import Image
    path = Path(str(item.path))
    try:
        with Image.open(path) as image:
            size = image.size
            if image.format == "PNG":
                image.verify()
        if decode:  # verify() leaves the image unusable: open it again to decode
            with Image.open(path) as image:
                image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        return Inspected(item, error=f"{type(err).__name__}: {err}")
    return Inspected(item, size)


def inspect_files(catalog: Catalog) -> list[Inspected]:
    decode = len(catalog.items) <= DECODE_CHECK_MAX
    return [inspect(item, decode) for item in catalog.items if item.path is not None and item.path.is_file()]


def problems(catalog: Catalog, crop: int) -> list[str]:
    """Every problem of the source: the layout's, unreadable files, patch sizes and class counts."""
    found = list(catalog.problems)
    if catalog.source == "arrays":
        sizes = {(s[2], s[1]): [key] for s, key in zip(catalog.image_shapes, catalog.image_keys)}
    else:
        inspected = inspect_files(catalog)
        found += unreadable(catalog, inspected)
        sizes = sizes_of(catalog, inspected)
    found += size_problems(catalog, sizes, crop)
    found += class_problems(catalog)
    return found


def unreadable(catalog: Catalog, inspected: list[Inspected]) -> list[str]:
    bad = [f"{i.item.path} ({i.error})" for i in inspected if i.error]
    return [unreadable_message(catalog, bad)] if bad else []


def unreadable_message(catalog: Catalog, bad: list[str]) -> str:
    return (f"{len(bad)} image file(s) under {catalog.key} cannot be read (damaged, truncated or not an image): "
            f"{few(bad)}; replace or remove them")


def sizes_of(catalog: Catalog, inspected: list[Inspected]) -> dict[tuple[int, int], list[str]]:
    """Readable files by (width, height), named relative to the source."""
    sizes: dict[tuple[int, int], list[str]] = defaultdict(list)
    for i in inspected:
        if not i.error:
            sizes[i.size].append(str(i.item.path))
    return dict(sizes)


def size_problems(catalog: Catalog, sizes: dict[tuple[int, int], list[str]], crop: int) -> list[str]:
    if not sizes:
        return []
    smallest = min(min(size) for size in sizes)
    if crop:
        return _crop_problems(sizes, crop, smallest)
    found = []
    oblong = {size: files for size, files in sizes.items() if size[0] != size[1]}
    if oblong:
        found.append(f"patches must be square: {_by_size(oblong)}; set data.crop to a side from {MIN_SIDE} to "
                     f"{smallest} to centre-crop every patch to a square")
    if len(sizes) > 1:
        found.append(f"patches have {len(sizes)} different sizes: {_by_size(sizes)}; set data.crop to a side from "
                     f"{MIN_SIDE} to {smallest} to centre-crop every patch to one size")
    elif smallest < MIN_SIDE:
        found.append(f"patches are {_side(next(iter(sizes)))}; the models need at least {MIN_SIDE}x{MIN_SIDE} px; "
                     f"use larger patches")
    return found


def _crop_problems(sizes: dict[tuple[int, int], list[str]], crop: int, smallest: int) -> list[str]:
    if crop < MIN_SIDE:
        return [f"data.crop = {crop}; allowed: 0 (the files' own size) or {MIN_SIDE} to {smallest} (the smallest "
                f"side in the set)"]
    small = {size: files for size, files in sizes.items() if min(size) < crop}
    if small:
        return [f"data.crop = {crop} is larger than some patches: {_by_size(small)}; allowed: {MIN_SIDE} to "
                f"{smallest}; lower data.crop or remove the small patches"]
    return []


def _by_size(sizes: dict[tuple[int, int], list[str]]) -> str:
    parts = []
    for size, files in sorted(sizes.items(), key=lambda kv: -len(kv[1])):
        more = f", and {len(files) - EXAMPLES} more" if len(files) > EXAMPLES else ""
        parts.append(f"{_side(size)}: {len(files)} ({', '.join(files[:EXAMPLES])}{more})")
    return "; ".join(parts)


def _side(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def class_problems(catalog: Catalog) -> list[str]:
    """Too few classes, or a class with too few images (or groups) for the split asked for."""
    if not catalog.items or any(item.label < 0 or item.split == "?" for item in catalog.items):
        return []  # the layout has reported what is wrong with the labels or splits already
    if len(catalog.classes) < 2:
        return [f"{catalog.location}: found {len(catalog.classes)} class ({', '.join(catalog.classes)}); "
                f"classification needs at least 2"]
    if catalog.predefined:
        return _predefined_problems(catalog)
    return _made_split_problems(catalog)


def _predefined_problems(catalog: Catalog) -> list[str]:
    counts = {(item.split, item.label): 0 for item in catalog.items}
    for item in catalog.items:
        counts[item.split, item.label] += 1
    short = []
    for k, name in enumerate(catalog.classes):
        per_split = {split: counts.get((split, k), 0) for split in SPLITS}
        if min(per_split.values()) == 0:
            short.append(f"class {name!r} ({', '.join(f'{s} {n}' for s, n in per_split.items())})")
    if not short:
        return []
    return [f"predefined splits ({catalog.predefined}) leave a class out of a split: {few(short)}; every class "
            f"needs at least one image in each of train, valid and test: add images or drop the class"]


def _made_split_problems(catalog: Catalog) -> list[str]:
    images = [0] * len(catalog.classes)
    groups: list[set[str]] = [set() for _ in catalog.classes]
    for item in catalog.items:
        images[item.label] += 1
        groups[item.label].add(item.group)
    if catalog.grouped:
        short = [f"class {name!r} ({images[k]} images in {len(groups[k])} group(s))"
                 for k, name in enumerate(catalog.classes) if len(groups[k]) < MIN_GROUPS_PER_CLASS]
        need = f"at least {MIN_GROUPS_PER_CLASS} groups (so that no group is in two splits)"
    else:
        short = [f"class {name!r} ({images[k]} images)"
                 for k, name in enumerate(catalog.classes) if images[k] < MIN_PER_CLASS]
        need = f"at least {MIN_PER_CLASS} images"
    if not short:
        return []
    return [f"too few images for a 70/15/15 split stratified by class: {few(short)}; each class needs {need} to "
            f"appear in train, valid and test: add images, drop the class, or give predefined splits"]


def raise_problems(catalog: Catalog, found: list[str]) -> None:
    """One DataError listing every problem, naming the source and its spec key, ending with the next step."""
    if not found:
        return
    lines = "\n".join(f"  - {p}" for p in found)
    raise DataError(f"data.source = \"{catalog.source}\", {catalog.key} = {catalog.location}: "
                    f"{len(found)} problem(s):\n{lines}\nFix these (or point {catalog.key} at another source), "
                    f"then run again.")
