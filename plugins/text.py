"""The ``text`` modality: strings (the text itself), bytes (UTF-8), or text files given as ``pathlib.Path``."""

from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any

from anybind import Modality, hookimpl
from anybind.errors import DecodeError
from anybind.modality import read_file

MAX_TEXT_FILE_BYTES = 10 * 1024 * 1024
EXTENSIONS = (".txt", ".md", ".markdown", ".rst")


def sniff(head: bytes) -> bool:
    """UTF-8 without NUL bytes (a multi-byte character cut at the end of ``head`` is allowed)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def _from_bytes(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DecodeError(label, f"not UTF-8 text (invalid byte at offset {exc.start})") from None


def _read_file(path: PurePath) -> str:
    return _from_bytes(read_file(path, max_bytes=MAX_TEXT_FILE_BYTES), os.fspath(path))


def decode(item: Any) -> str:
    """A string (the text), bytes (UTF-8) or a ``pathlib.Path`` to a text file -> non-empty text."""
    if isinstance(item, str):
        text, label = item, repr(item[:40])
    elif isinstance(item, PurePath):
        text, label = _read_file(item), os.fspath(item)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        label = f"<{len(item)} bytes>"
        text = _from_bytes(bytes(item), label)
    else:
        raise DecodeError(f"<{type(item).__name__}>", "text items are str, bytes or pathlib.Path")
    if not text.strip():
        raise DecodeError(label, "empty text")
    return text


@hookimpl
def anybind_modalities(register: Any) -> None:
    register(
        Modality(
            name="text",
            decode=decode,
            sniff=sniff,
            extensions=EXTENSIONS,
            fallback=True,
            description="Sentences and documents; str items are the text itself, pathlib.Path items are read",
        )
    )
