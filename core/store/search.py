"""Search over one :class:`~anybind.store.snapshot.Snapshot`: per-partition top-k (filters, re-scoring, roll-up
per file) and calibrated fusion across partitions.

Fusion: raw cosines from different partitions are not comparable (the cross-modal "modality gap": a text
query scores every image lower than every caption). For each target partition and query ``q`` the store knows
the exact mean ``m`` and standard deviation ``s`` of ``q . x`` over all items ``x`` of the partition (from the
partition's moments), and ranks hits by ``(score - m) / s``: how far above that partition's typical item a
hit is. This is z-score normalisation (Montague & Aslam, CIKM 2001), computed over the whole partition instead
of over the returned list.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from anybind.errors import EmbeddingError, MetadataError, QueryError, UnknownNameError

from .hits import Hit, PartitionScores, SearchResult
from .snapshot import Snapshot, StaleSnapshot

Embed = Callable[[str, Any], np.ndarray]  # (modality, item) -> unit vector in the anchor space


def positive(value: Any, name: str) -> int:
    """``value`` as a positive int, else a :class:`QueryError` naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise QueryError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def query_vector(dim: int, embed: Embed, inputs: Mapping[str, Any], weights: Mapping[str, float] | None) -> np.ndarray:
    """The unit query vector ``(1, dim)``: one input embedded, or the normalised weighted sum of several."""
    if not inputs:
        raise QueryError("nothing to search with: give text=, image=, audio=, video=, vector= or query=")
    if len(inputs) == 1 and "vector" in inputs and not weights:  # the common case, without the weighted sum
        return _unit_vector(inputs["vector"], dim).astype(np.float32)[None, :]
    total = np.zeros(dim, dtype=np.float64)
    for modality, value in inputs.items():
        embedded = _unit_vector(value, dim) if modality == "vector" else embed(modality, value)
        vec = np.asarray(embedded, dtype=np.float64)
        weight = (weights or {}).get(modality, 1.0)
        if not isinstance(weight, (int, float)) or not np.isfinite(weight):
            raise QueryError(f"weight of {modality!r} must be a finite number, got {weight!r}")
        total += float(weight) * vec
    norm = np.linalg.norm(total)
    if not np.isfinite(norm) or norm == 0:
        raise EmbeddingError(f"the weighted query inputs {sorted(inputs)} cancel out (zero vector)")
    return (total / norm).astype(np.float32)[None, :]


def _unit_vector(value: Any, dim: int) -> np.ndarray:
    """A query vector as float64 of unit length; :class:`EmbeddingError` for a wrong shape, NaN/inf or zeros."""
    try:
        vec = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"query vector is not numeric: {exc}") from None
    if vec.shape != (dim,):
        raise EmbeddingError(f"query vector has shape {vec.shape}; this store needs ({dim},)")
    norm = float(np.sqrt(vec @ vec))
    if not np.isfinite(norm) or not norm:
        raise EmbeddingError("query vector has NaN/infinite values or is all zeros")
    return vec / norm


def targets(snap: Snapshot, to: str | Sequence[str] | None, known: Collection[str]) -> list[str]:
    """The partitions to search: ``to`` (names or a comma list), each a partition or a known modality."""
    if to is None:
        return snap.modalities
    names = [t.strip() for t in to.split(",")] if isinstance(to, str) else [str(t) for t in to]
    names = list(dict.fromkeys(names))  # the same partition twice would duplicate its hits
    if not names or "" in names:
        raise UnknownNameError("modality", ",".join(names), snap.modalities, "give target partitions in to=")
    allowed = set(snap.manifest.partitions) | set(known)
    for name in names:
        if name not in allowed:
            raise UnknownNameError("modality", name, snap.modalities, "the store's partitions are listed")
    return names


def check_where(where: Mapping[str, Any] | None) -> None:
    if where is not None and not isinstance(where, Mapping):
        raise MetadataError(f"where must be a dict of metadata key -> value, got {type(where).__name__}")


def _partition_top(
    snap: Snapshot, name: str, q: np.ndarray, k: int, where: Mapping[str, Any] | None, rerank: int | None
) -> tuple[np.ndarray, np.ndarray, PartitionScores]:
    part = snap.partition(name)
    if part is None or part.count == 0:
        return np.empty(0), np.empty(0, np.int64), PartitionScores(name, 0, "none", True, 0)
    allowed = snap.db.matching(name, snap.generation, where) if where else None
    want = max(k, rerank or 0)
    if allowed is not None and not len(allowed):
        scores, ids, exact = np.empty((1, 0), np.float32), np.empty((1, 0), np.int64), True
    else:
        scores, ids, exact = part.search(q, want, allowed)
    scores, ids = scores[0], ids[0]
    if rerank and not exact and len(ids):  # lossy codes: score the candidates again from the stored vectors
        exact_scores = part.vectors(ids) @ q[0]
        order = np.lexsort((ids, -exact_scores))
        scores, ids = exact_scores[order], ids[order]
    stats = PartitionScores(name, part.count, part.built, exact, len(ids), moments=(part.moments, q))
    return scores[:k], ids[:k], stats


def search_partition(
    snap: Snapshot, name: str, q: np.ndarray, k: int, where: Mapping[str, Any] | None, rerank: int | None, rollup: bool
) -> tuple[np.ndarray, np.ndarray, PartitionScores]:
    """The partition's top ``k`` (scores, ids); with ``rollup`` on a time-segmented partition, the top ``k`` files:
    each file's best segment.

    Rolling up asks for 4k candidates, then 16k, ... until ``k`` distinct files are among them or the partition
    is exhausted; items without a segment (or without a file) are their own group. Across partitions (a video's
    frames and its sound track) the fusion keeps each file once, by its best calibrated segment: every file of
    the fused top k is in the top k files of the partition where it scores best, so k files per partition are
    enough. Whether a partition is time-segmented is recorded in the manifest when it is written.
    """
    if not rollup or not snap.temporal(name):
        return _partition_top(snap, name, q, k, where, rerank)
    fetch = k
    while True:
        fetch *= 4
        scores, ids, stats = _partition_top(snap, name, q, fetch, where, rerank)
        keep = _best_per_file(snap, ids)
        if len(keep) >= k or len(ids) < fetch or fetch >= stats.count:
            keep = keep[:k]
            return scores[keep], ids[keep], replace(stats, candidates=len(ids))


def _best_per_file(snap: Snapshot, ids: np.ndarray) -> list[int]:
    """Positions (in the given best-first order) of the first hit of each file."""
    rows = snap.db.rows(ids.tolist(), snap.generation)
    seen: set[Any] = set()
    keep = []
    for position, item_id in enumerate(ids.tolist()):
        row = rows.get(item_id)
        group = (row.uri,) if row is not None and row.uri is not None and row.start is not None else item_id
        if group not in seen:
            seen.add(group)
            keep.append(position)
    return keep


def run_search(
    snap: Snapshot,
    q: np.ndarray,
    *,
    to: str | Sequence[str] | None,
    known: Collection[str],
    k: int,
    where: Mapping[str, Any] | None,
    rerank: int | None,
    rollup: bool = True,
) -> SearchResult:
    """Search ``snap`` with the unit query ``q`` (1, d); every read is of the snapshot's one generation."""
    k = positive(k, "k")
    if rerank is not None:
        rerank = positive(rerank, "rerank")
    check_where(where)
    names = targets(snap, to, known)
    # No read transaction: every query filters by the snapshot's generation, and the only change a writer makes
    # to rows a generation can see is purging them once it is two generations behind, which a missing row
    # reveals (StaleSnapshot, and the store searches again). It saves three SQLite statements per search.
    found: list[tuple[float, float, int, str]] = []
    partitions: dict[str, PartitionScores] = {}
    for name in names:
        scores, ids, stats = search_partition(snap, name, q, k, where, rerank, rollup)
        partitions[name] = stats
        one = len(names) == 1  # one partition: the calibrated order is the raw order; calibrate only if asked
        for score, item_id in zip(scores.tolist(), ids.tolist(), strict=True):
            found.append((score if one else (score - stats.mean) / stats.std, score, item_id, name))
    found.sort(key=lambda hit: (-hit[0], hit[2]))
    if not rollup:
        found = found[:k]
    rows = snap.db.hit_rows([item_id for _, _, item_id, _ in found[: 4 * k]], snap.generation)
    hits: list[Hit] = []
    files: set[str] = set()
    for _, score, item_id, name in found:
        row = rows.get(item_id)
        if row is None:
            rows.update(snap.db.hit_rows([item_id], snap.generation))
            row = rows.get(item_id)
        if row is None:
            raise _missing_row(snap, item_id, name)
        key, uri, start, end, text, metadata = row
        if rollup and uri is not None and start is not None and snap.temporal(name):
            if uri in files:  # a video's sound and its picture: the file once, by its best segment
                continue
            files.add(uri)
        hits.append(Hit(item_id, name, float(score), uri, start, end, text, metadata, key, partitions[name]))
        if len(hits) == k:
            break
    if where and snap.db.purged_below() > snap.generation + 1:  # the filter may have missed purged rows
        raise StaleSnapshot(f"rows of generation {snap.generation} purged")
    return SearchResult(hits, partitions)


def _missing_row(snap: Snapshot, item_id: int, name: str) -> Exception:
    from anybind.errors import StoreError

    if snap.db.purged_below() > snap.generation + 1:  # a writer moved on and purged rows of this generation
        return StaleSnapshot(f"rows of generation {snap.generation} purged")

    return StoreError(
        f"{snap.db.path}: item {item_id} of partition {name!r} is in the segments but has no metadata row at "
        f"generation {snap.generation} (the database and the segments disagree); run `anybind check --db {snap.root}`"
    )
