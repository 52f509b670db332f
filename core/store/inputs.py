"""Checks of what callers hand the store: precomputed vectors, caller keys, segments, ids. Each failure is a
typed error naming the row or the value; nothing is written when one fails."""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from anybind.errors import EmbeddingError, MetadataError, StoreError

from .metadata import NewItem
from .records import Metadata, metadata_list

MAX_KEY = 512  # characters in a caller key


def unit_vectors(vectors: Any, modality: str, dim: int) -> np.ndarray:
    """``vectors`` as float32 ``(n, dim)`` rows of unit length; :class:`EmbeddingError` naming the first bad row."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"vectors for {modality!r} are not numeric: {exc}") from None
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise EmbeddingError(f"vectors for {modality!r} have shape {array.shape}; this store needs (n, {dim})")
    if len(array) == 0:
        return array
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise EmbeddingError(f"vector {int(bad[0])} for {modality!r} has NaN or infinite values; nothing added")
    wide = array.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1)
    if (norms == 0).any():
        raise EmbeddingError(f"vector {int(np.argmax(norms == 0))} for {modality!r} is all zeros; nothing added")
    return np.ascontiguousarray(wide / norms[:, None], dtype=np.float32)


def check_keys(keys: Sequence[Any] | None, n: int) -> list[str | None]:
    """One key per item (None: no keys); keys are non-empty strings, unique within the call."""
    if keys is None:
        return [None] * n
    if isinstance(keys, (str, bytes)):
        raise MetadataError("keys must be a list of strings (one per item), not a single string")
    keys = list(keys)
    if len(keys) != n:
        raise MetadataError(f"keys has {len(keys)} entries for {n} items")
    for row, key in enumerate(keys):
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            raise MetadataError(f"keys[{row}] is {key!r}; keys are non-empty strings of at most {MAX_KEY} characters")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise MetadataError(f"keys[{row}] {key!r} is not valid Unicode text") from None
    twice = sorted(key for key, count in Counter(keys).items() if count > 1)
    if twice:
        shown = ", ".join(repr(k) for k in twice[:5])
        raise MetadataError(
            f"duplicate keys in one call: {shown}" + (f" and {len(twice) - 5} more" if len(twice) > 5 else "")
        )
    return keys


def _is_segment(value: Any) -> bool:
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite([start, end]).all()) and 0 <= start <= end


def vector_items(
    modality: str,
    array: np.ndarray,
    *,
    uris: Sequence[str | None] | None,
    texts: Sequence[str | None] | None,
    segments: Sequence[tuple[float, float] | None] | None,
    metadata: Metadata,
    keys: Sequence[Any] | None,
) -> list[NewItem]:
    """The items of an ``add_vectors`` call, every column checked against the number of vectors."""
    n = len(array)
    for name, values in (("uris", uris), ("texts", texts), ("segments", segments)):
        if values is not None and len(values) != n:
            raise EmbeddingError(f"{name} has {len(values)} entries for {n} vectors")
    key_list = check_keys(keys, n)
    for row in range(n):
        text = texts[row] if texts is not None else None
        segment = segments[row] if segments is not None else None
        if text is not None and not isinstance(text, str):
            raise MetadataError(f"texts[{row}] is a {type(text).__name__}, not a string")
        if segment is not None and not _is_segment(segment):
            raise MetadataError(f"segments[{row}] is {segment!r}; give (start, end) seconds with 0 <= start <= end")
    metas = metadata_list(metadata, [None] * n if uris is None else list(uris))
    items = []
    for row in range(n):
        segment = segments[row] if segments is not None else None
        items.append(
            NewItem(
                modality,
                array[row],
                uri=uris[row] if uris is not None else None,
                text=texts[row] if texts is not None else None,
                start=float(segment[0]) if segment else None,
                end=float(segment[1]) if segment else None,
                metadata=metas[row],
                key=key_list[row],
            )
        )
    return items


def item_ids(ids: Iterable[Any]) -> list[int]:
    """Sorted distinct item ids; :class:`StoreError` for a non-integer or out-of-range one."""
    try:
        wanted = sorted({operator.index(i) for i in ids})
    except TypeError as exc:
        raise StoreError(f"item ids are integers: {exc}") from None
    out_of_range = [i for i in wanted if not 0 < i < 2**63]
    if out_of_range:
        raise StoreError(f"item id {out_of_range[0]} is out of range (ids are positive 64-bit integers)")
    return wanted
