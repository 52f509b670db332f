"""Modalities: a tag plus how to recognise (sniff) and decode its inputs.

A plugin registers a :class:`Modality` from its ``anybind_modalities`` hook. Decoding turns one input
(a path, raw bytes, or an in-memory object such as a PIL image or a string) into the value an encoder
tower takes. ``embeds_as`` names that tower: ``image`` for photos, and also for a plugin modality such as
``sketch`` whose decoder rasterises SVG into an image; by default a modality embeds as itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DecodeError

SNIFF_BYTES = 4096


@dataclass(frozen=True)
class Modality:
    """How one modality's inputs are recognised and decoded.

    - ``decode(source)``: one input -> the decoded value for the ``embeds_as`` tower. Raise
      :class:`~anybind.errors.DecodeError` (or any exception; the host wraps it, naming the input).
    - ``sniff(head)``: given a file's first bytes, whether they are this modality's content.
    - ``extensions``: lower-case suffixes (``.png``), used only when no sniffer recognises the content.
    - ``fallback``: the sniffer is weak (plain text accepts almost anything); strong sniffers win first.
    """

    name: str
    decode: Callable[[Any], Any]
    sniff: Callable[[bytes], bool] | None = None
    extensions: tuple[str, ...] = ()
    embeds_as: str = ""
    fallback: bool = False
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tower(self) -> str:
        """The encoder tower that embeds this modality's decoded values."""
        return self.embeds_as or self.name


def describe_item(item: Any, index: int) -> str:
    """A short label for an input, used in error messages: the path for files, a type for objects."""
    if isinstance(item, (str, os.PathLike)):
        text = os.fspath(item)
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<item {index}: {len(item)} bytes>"
    return f"<item {index}: {type(item).__module__}.{type(item).__qualname__}>"


def read_head(path: str | os.PathLike[str], size: int = SNIFF_BYTES) -> bytes:
    """The first ``size`` bytes of a file, or :class:`DecodeError` naming the file and the reason."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except FileNotFoundError:
        raise DecodeError(os.fspath(path), "no such file") from None
    except IsADirectoryError:
        raise DecodeError(os.fspath(path), "is a directory, not a file") from None
    except OSError as exc:
        raise DecodeError(os.fspath(path), f"cannot read: {exc.strerror or exc}") from None


def _sniffs(modality: Modality, head: bytes) -> bool:
    """Whether the modality's sniffer accepts ``head``; a sniffer that raises counts as a no."""
    if modality.sniff is None:
        return False
    try:
        return bool(modality.sniff(head))
    except Exception:
        return False


def detect(path: str | os.PathLike[str], modalities: Sequence[Modality]) -> Modality:
    """The modality of a file: content sniffing first (strong sniffers before fallback ones), extension second.

    Raises :class:`DecodeError` naming the file when nothing recognises it.
    """
    head = read_head(path)
    if not head:
        raise DecodeError(os.fspath(path), "empty file (0 bytes)")
    ordered = sorted(modalities, key=lambda m: (m.fallback, m.name))
    for modality in ordered:
        if not modality.fallback and _sniffs(modality, head):
            return modality
    suffix = Path(path).suffix.lower()
    for modality in ordered:
        if suffix and suffix in modality.extensions and modality.sniff is None:
            return modality
    for modality in ordered:
        if modality.fallback and _sniffs(modality, head):
            return modality
    names = ", ".join(m.name for m in ordered) or "none registered"
    raise DecodeError(os.fspath(path), f"content not recognised as any modality ({names})")
