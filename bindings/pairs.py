"""Where training pairs come from: each source is a small function returning a :class:`PairSet`.

- :func:`pairs_from_file`: a pairs file of ``media,image`` rows (CSV with a header, or JSON Lines objects
  with keys ``media`` and ``image``); the media go through the source encoder, the images through the anchor.
- :func:`pairs_from_captions`: a captions file (one per line) embedded by both encoders' text towers, for a
  bridge binding.

Both embed through a loaded :class:`~anybind.Space`: ``space.try_embed("image" | "text", ...)`` gives the
frozen anchor-space targets, ``space.try_native(modality, ..., encoder=SPEC)`` the source encoder's native
vectors. A pair whose file cannot be read or embedded is dropped and reported in ``skipped``; a pairs file
that cannot be parsed at all is a :class:`~anybind.errors.DecodeError` naming it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anybind.errors import DecodeError, ItemError
from anybind.modality import read_file

COLUMNS = ("media", "image")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
MAX_LIST_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class PairRow:
    """One pair as read: the source item, its target item (an image path, or a caption), where it was read."""

    media: Any
    image: Any
    where: str  # "pairs.csv:12"


@dataclass(frozen=True)
class Skipped:
    """A row that was dropped: where it was read and the error of the file (or value) that failed."""

    where: str
    error: ItemError


@dataclass
class PairSet:
    """Paired vectors for training: ``source[i]`` (native, unit norm) goes with ``target[i]`` (anchor space).

    ``summary`` describes the pairs (recorded under the binding's ``training`` info); ``skipped`` lists the
    rows that were dropped, each with its reason.
    """

    source: np.ndarray
    target: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)


def _text(path: Path) -> str:
    data = read_file(path, max_bytes=MAX_LIST_BYTES)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DecodeError(os.fspath(path), f"not UTF-8 text (invalid byte at offset {exc.start})") from None


def _is_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    if path.suffix.lower() == ".csv":
        return False
    return text.lstrip().startswith("{")


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise DecodeError(f"{path}:{number}", f"not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise DecodeError(f"{path}:{number}", f"expected a JSON object with keys {COLUMNS}, got {value!r:.60}")
        missing = [key for key in COLUMNS if key not in value]
        if missing:
            raise DecodeError(f"{path}:{number}", f"missing key {missing[0]!r} (each line needs {COLUMNS})")
        rows.append((number, value))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    if not header:
        raise DecodeError(os.fspath(path), f"empty pairs file: expected a header line {','.join(COLUMNS)}")
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise DecodeError(
            os.fspath(path), f"missing column {missing[0]!r}: the header has {header}, it needs {','.join(COLUMNS)}"
        )
    reader.fieldnames = header
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise DecodeError(f"{path}:{reader.line_num}", f"not valid CSV ({exc})") from None


def read_pairs_file(path: str | os.PathLike[str], text_media: bool = False) -> tuple[list[PairRow], list[Skipped]]:
    """The rows of a pairs file and the rows that are unusable as written (an empty cell).

    Relative paths are relative to the pairs file's folder. With ``text_media`` the ``media`` value is the
    text itself (captions paired with images), not a path.
    """
    path = Path(path)
    text = _text(path)
    rows = _jsonl_rows(path, text) if _is_jsonl(path, text) else _csv_rows(path, text)
    base = path.resolve().parent
    good, bad = [], []
    for number, row in rows:
        where = f"{path}:{number}"
        values = {key: row.get(key) for key in COLUMNS}
        empty = [key for key, value in values.items() if not isinstance(value, str) or not value.strip()]
        if empty:
            bad.append(Skipped(where, DecodeError(where, f"no {empty[0]!r} value (a non-empty string is needed)")))
            continue
        media: str | Path = values["media"] if text_media else base / values["media"].strip()
        good.append(PairRow(media, base / values["image"].strip(), where))
    if not rows:
        raise DecodeError(os.fspath(path), "no pairs in the file")
    return good, bad


def read_captions(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """``(line number, caption)`` for the distinct non-blank lines of a captions file, in order.

    Repeated captions are kept once: two identical pairs in a batch would only be false negatives.
    """
    seen: dict[str, int] = {}
    for number, line in enumerate(_text(Path(path)).splitlines(), start=1):
        if line.strip():
            seen.setdefault(line.strip(), number)
    if not seen:
        raise DecodeError(os.fspath(path), "no captions in the file (one caption per line)")
    return [(number, caption) for caption, number in seen.items()]


@dataclass
class _Embedded:
    """Vectors of distinct values, the errors of those that failed, and the vector width."""

    vectors: dict[Any, np.ndarray]
    errors: dict[Any, ItemError]
    dim: int

    @classmethod
    def of(cls, embed: Any, values: Sequence[Any], dim: int) -> _Embedded:
        """Embed each distinct value once with ``embed(values) -> EmbedResult``."""
        unique = list(dict.fromkeys(values))
        result = embed(unique)
        vectors = {unique[i]: vector for i, vector in zip(result.indices, result.vectors, strict=True)}
        errors = {unique[i]: error for i, error in zip(result.failed, result.errors, strict=True)}
        return cls(vectors, errors, dim)

    def stack(self, keys: Sequence[Any]) -> np.ndarray:
        if not keys:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([self.vectors[key] for key in keys]).astype(np.float32)


def _pair_up(
    rows: Sequence[PairRow], source: _Embedded, target: _Embedded
) -> tuple[np.ndarray, np.ndarray, list[Skipped]]:
    kept, skipped = [], []
    for row in rows:
        error = source.errors.get(row.media) or target.errors.get(row.image)
        if error is None and row.media in source.vectors and row.image in target.vectors:
            kept.append(row)
        else:
            skipped.append(Skipped(row.where, error or ItemError(row.where, "was not embedded")))
    return source.stack([r.media for r in kept]), target.stack([r.image for r in kept]), skipped


def pairs_from_file(space: Any, encoder: str, modality: str, path: str | os.PathLike[str]) -> PairSet:
    """(``modality`` item, image) pairs from a pairs file: ``encoder``'s native vectors -> anchor image vectors.

    For ``modality="text"`` the ``media`` column holds the text itself; for file modalities, paths.
    """
    rows, skipped = read_pairs_file(path, text_media=modality == "text")
    source = _Embedded.of(
        lambda v: space.try_native(modality, v, encoder=encoder),
        [r.media for r in rows],
        space.load_encoder(encoder).dim,
    )
    target = _Embedded.of(lambda v: space.try_embed("image", v), [r.image for r in rows], space.dim)
    x, y, dropped = _pair_up(rows, source, target)
    summary = {"pairs_source": f"pairs file {Path(path).name}", "rows": len(rows) + len(skipped)}
    return PairSet(x, y, summary, skipped + dropped)


def pairs_from_captions(space: Any, encoder: str, path: str | os.PathLike[str]) -> PairSet:
    """(caption, caption) pairs for a text bridge: ``encoder``'s text vectors -> the space's text vectors."""
    captions = read_captions(path)
    rows = [PairRow(caption, caption, f"{path}:{number}") for number, caption in captions]
    texts = [caption for _, caption in captions]
    source = _Embedded.of(
        lambda v: space.try_native("text", v, encoder=encoder), texts, space.load_encoder(encoder).dim
    )
    target = _Embedded.of(lambda v: space.try_embed("text", v), texts, space.dim)
    x, y, skipped = _pair_up(rows, source, target)
    summary = {"pairs_source": f"captions file {Path(path).name}", "rows": len(rows)}
    return PairSet(x, y, summary, skipped)
