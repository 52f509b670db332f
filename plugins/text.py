"""The ``text`` modality: strings (the text itself), bytes, or text files given as ``pathlib.Path``.

Bytes and files are UTF-8, or UTF-16 / UTF-32 when they open with a byte-order mark (what Windows Notepad
and PowerShell write); the mark is dropped. A byte-order mark is the modality's signature
(:attr:`anybind.Modality.signatures`): UTF-16's ``FF FE`` also reads as an MPEG audio frame header, and a
short UTF-16 file used to be taken for an MP3.
"""

from __future__ import annotations

import codecs
import os
from pathlib import PurePath
from typing import Any

from anybind import Modality, hookimpl
from anybind.errors import DecodeError
from anybind.modality import read_file

MAX_TEXT_FILE_BYTES = 10 * 1024 * 1024
EXTENSIONS = (".txt", ".md", ".markdown", ".rst")


# (byte-order mark, Python codec, name in errors); UTF-32-LE's mark starts with UTF-16-LE's, so it comes first
ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)
BOMS = tuple(bom for bom, _, _ in ENCODINGS)
CUT = ("unexpected end of data", "truncated data")  # what a decoder says of a character cut at the end
CONTROLS = {chr(c) for c in range(32)} - set("\t\n\v\f\r\x1b")


def _encoding(data: bytes) -> tuple[str, str]:
    """``(codec, name)`` of bytes: the one their byte-order mark names, else UTF-8."""
    for bom, codec, name in ENCODINGS:
        if data.startswith(bom):
            return codec, name
    return "utf-8-sig", "UTF-8"


def sniff(head: bytes) -> bool:
    """UTF-8 without NUL bytes, or UTF-16/UTF-32 after a byte-order mark without NUL or other control characters.

    A character cut at the end of ``head`` is allowed.
    """
    codec, name = _encoding(head)
    if name == "UTF-8":
        if b"\x00" in head:
            return False
        codec = "utf-8"  # offsets from the start of head, the mark included
    try:
        text = head.decode(codec)
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or exc.reason not in CUT:
            return False
        text = head[: exc.start].decode(codec)
    if name == "UTF-8":
        return True
    return not CONTROLS.intersection(text)  # UTF-16's mark is also an MPEG frame header: ask for clean text


def _from_bytes(data: bytes, label: str) -> str:
    codec, name = _encoding(data)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise DecodeError(label, f"not {name} text (invalid byte at offset {exc.start})") from None


def _read_file(path: PurePath) -> str:
    return _from_bytes(read_file(path, max_bytes=MAX_TEXT_FILE_BYTES), os.fspath(path))


def decode(item: Any) -> str:
    """A string (the text), bytes or a ``pathlib.Path`` to a text file -> non-empty text.

    Bytes and files are UTF-8, or UTF-16/UTF-32 with a byte-order mark; a byte-order mark is dropped.
    """
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
            signatures=BOMS,
            textual=True,
            description="Sentences and documents; str items are the text itself, pathlib.Path items are read",
        )
    )
