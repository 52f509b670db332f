"""Modalities: a tag plus how to recognise (sniff) and decode its inputs.

A plugin registers a :class:`Modality` from its ``anybind_modalities`` hook. Decoding turns one input
(a path, raw bytes, or an in-memory object such as a PIL image or a string) into the value an encoder
tower takes. ``embeds_as`` names that tower: ``image`` for photos, and also for a plugin modality such as
``sketch`` whose decoder rasterises SVG into an image; by default a modality embeds as itself.

A time-based modality may carry *companion streams*: a video's sound track is cut by its own function and stored
as items of another modality (``audio``), with the video's path and times (see :attr:`Modality.companions`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DecodeError
from .segments import Segment, SegmentPlan

SNIFF_BYTES = 4096

Segmenter = Callable[[Any, SegmentPlan], Iterator[Segment]]
"""``segment(source, plan)``: an input cut into :class:`~anybind.segments.Segment` s under ``plan``."""


@dataclass(frozen=True)
class Modality:
    """How one modality's inputs are recognised and decoded.

    - ``decode(source)``: one input -> the decoded value for the ``embeds_as`` tower. Raise
      :class:`~anybind.errors.DecodeError` (or any exception; the host wraps it, naming the input).
    - ``sniff(head)``: given a file's first bytes, whether they are this modality's content.
    - ``extensions``: lower-case suffixes (``.png``), used only when no sniffer recognises the content.
    - ``fallback``: the sniffer is weak (plain text accepts almost anything); strong sniffers win first.
    - ``signatures``: byte strings that open this modality's files and settle what they are (a text file's
      byte-order mark). A file that starts with one, and that ``sniff`` accepts, is offered to no other
      modality's sniffer: a UTF-16 text, whose mark looks like an MPEG audio frame header, is not audio. The
      extension rules of :func:`detect` still apply.
    - ``textual``: the decoded values are strings: a ``str`` input is the text itself, never a path, and the
      text is stored with each item (search hits show it).
    - ``segment(source, plan)``: for time-based modalities (audio, video), yields
      :class:`~anybind.segments.Segment` s streaming through the input; each segment becomes one item with
      ``start``/``end`` seconds. ``segment_defaults`` gives the plan's defaults (``window``, ``overlap``,
      ``fps``, ``sample_rate``) where neither the space file nor the encoder sets them.
    - ``companions``: other streams a time-based input carries, by the name of the modality their segments are
      embedded and stored as: ``{"audio": sound_track}`` on ``video``. ``sound_track(source, plan)`` is a
      segmenter like ``segment``, given that modality's plan (its window, its sample rate); an input without
      the stream yields no segments, which is not an error. Indexing files with companion streams
      (``add_files(audio_tracks=True)``) stores their segments with the input's uri and times, committed
      together with the input's own segments; the space must be able to embed each companion's modality.
    - ``extra``: free-form data for plugins and tools that know the modality; indexing reads nothing from it.
    """

    name: str
    decode: Callable[[Any], Any]
    sniff: Callable[[bytes], bool] | None = None
    extensions: tuple[str, ...] = ()
    embeds_as: str = ""
    fallback: bool = False
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    segment: Segmenter | None = None
    segment_defaults: dict[str, float] = field(default_factory=dict)
    companions: Mapping[str, Segmenter] = field(default_factory=dict)
    signatures: tuple[bytes, ...] = ()
    textual: bool = False

    def __post_init__(self) -> None:
        for name, segmenter in self.companions.items():
            if not isinstance(name, str) or not name or name == self.name or not callable(segmenter):
                raise ValueError(
                    f"modality {self.name!r}: companions maps the names of other modalities to segment functions, "
                    f"got {name!r}: {segmenter!r}"
                )
        if self.companions and self.segment is None:
            raise ValueError(
                f"modality {self.name!r} has companion streams ({', '.join(self.companions)}) but no segment "
                "function: companions run alongside a time-based modality's own segments"
            )
        if not all(isinstance(s, bytes) and s for s in self.signatures):
            raise ValueError(f"modality {self.name!r}: signatures are non-empty byte strings, got {self.signatures!r}")

    @property
    def temporal(self) -> bool:
        """Whether inputs are cut into time segments (one item per segment) instead of embedded whole."""
        return self.segment is not None

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


def read_file(path: str | os.PathLike[str], max_bytes: int | None = None, head: int | None = None) -> bytes:
    """A file's bytes (or only its first ``head`` bytes) for a decoder.

    Raises :class:`DecodeError` naming the file for a missing file, a directory, an unreadable file, an
    empty file, or one over ``max_bytes``. Decoders of file modalities should read through this.
    """
    label = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise DecodeError(label, f"file is {size} bytes, over the {max_bytes}-byte limit")
            data = handle.read(head if head is not None else -1)
    except FileNotFoundError:
        raise DecodeError(label, "no such file") from None
    except IsADirectoryError:
        raise DecodeError(label, "is a directory, not a file") from None
    except OSError as exc:
        raise DecodeError(label, f"cannot read: {exc.strerror or exc}") from None
    if not data:
        raise DecodeError(label, "empty file (0 bytes)")
    return data


def _sniffs(modality: Modality, head: bytes) -> bool:
    """Whether the modality's sniffer accepts ``head``; a sniffer that raises counts as a no."""
    if modality.sniff is None:
        return False
    try:
        return bool(modality.sniff(head))
    except Exception:
        return False


def _signed(ordered: Sequence[Modality], head: bytes) -> list[Modality]:
    """The modalities whose signature opens ``head`` and whose sniffer accepts it, longest signature first."""
    signed = [m for m in ordered if head.startswith(m.signatures)]
    signed.sort(key=lambda m: -max(len(s) for s in m.signatures if head.startswith(s)))  # stable
    return [m for m in signed if _sniffs(m, head)]


def detect(path: str | os.PathLike[str], modalities: Sequence[Modality]) -> Modality:
    """The modality of a file: content sniffing first (strong sniffers before fallback ones), extension second.

    A file that opens with a modality's signature (and that its sniffer accepts) is offered to no other
    modality's sniffer. A file whose extension belongs to a modality with a content sniffer (``.jpg``) that
    rejects its content is an error, not a fallback match: a text file named ``notes.jpg`` is a broken image,
    not a caption. Raises :class:`DecodeError` naming the file when nothing recognises it.
    """
    head = read_file(path, head=SNIFF_BYTES)
    ordered = sorted(modalities, key=lambda m: (m.fallback, m.name))
    candidates = _signed(ordered, head) or ordered
    for modality in candidates:
        if not modality.fallback and _sniffs(modality, head):
            return modality
    suffix = Path(path).suffix.lower()
    claimed = [m for m in ordered if suffix and suffix in m.extensions and m.sniff is not None and not m.fallback]
    if claimed:  # named as (say) an image, but no image sniffer accepts the content: a broken or mislabelled file
        looks = next((m.name for m in candidates if m.fallback and _sniffs(m, head)), None)
        detail = f"; it looks like {looks}" if looks else ""
        name = claimed[0].name
        raise DecodeError(
            os.fspath(path), f"has the {name} extension {suffix} but its content is not {name} data{detail}"
        )
    for modality in ordered:
        if suffix and suffix in modality.extensions and modality.sniff is None:
            return modality
    for modality in candidates:
        if modality.fallback and _sniffs(modality, head):
            return modality
    names = ", ".join(m.name for m in ordered) or "none registered"
    raise DecodeError(os.fspath(path), f"content not recognised as any modality ({names})")
