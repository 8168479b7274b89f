"""Reading a TOML file (a spec, a cluster profile): its text and tables, or one error saying what is wrong with it."""
from __future__ import annotations

import codecs
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class TomlFileError(Exception):
    """A file that cannot be read, is not UTF-8 text or is not TOML; `key` is "(file)" or "(syntax)"."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def load_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """The text and the tables of a TOML file (specs, cluster profiles); TomlFileError says what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TomlFileError("(file)", f"cannot read the file: {exc.strerror or exc}") from None
    # Newlines as a text-mode read gave them, so stored spec texts stay as they were.
    text = _decode_utf8(data).replace("\r\n", "\n").replace("\r", "\n")
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError("(syntax)", f"not valid TOML: {exc}") from None


# Longest first: a UTF-32 LE mark starts with the UTF-16 LE one.
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                     (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def _decode_utf8(data: bytes) -> str:
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            raise TomlFileError("(file)", f"is {encoding} text (it starts with a {encoding} byte-order mark), not "
                                "UTF-8; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")  # Windows editors may start UTF-8 with a byte-order mark: still UTF-8
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise TomlFileError("(file)", f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column "
                            f"{column}, position {exc.start}); save it as UTF-8") from None
