"""Query embedding, per-partition search (filters, exact fallback, re-scoring) and calibrated fusion.

Fusion: raw cosines from different partitions are not comparable (the cross-modal "modality gap": a text
query scores every image lower than every caption). For each target partition and query ``q`` the store knows
the exact mean ``m`` and standard deviation ``s`` of ``q . x`` over all items ``x`` of the partition (from the
partition's moments), and ranks hits by ``(score - m) / s``: how far above that partition's typical item a
hit is. This is z-score normalisation (Montague & Aslam, CIKM 2001), computed over the whole partition instead
of over the returned list.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from anybind.errors import EmbeddingError, UnknownNameError

from .hits import Hit, PartitionScores, SearchResult
from .partition import EXACT

if TYPE_CHECKING:
    from .store import Store

EXACT_FILTER_MAX = 50_000  # a filter that leaves at most this many items is searched exactly


def query_vector(store: Store, inputs: Mapping[str, Any], weights: Mapping[str, float] | None) -> np.ndarray:
    """The unit query vector: one input embedded, or the normalised weighted sum of several (composed query)."""
    if not inputs:
        raise EmbeddingError("nothing to search with: give text=, image=, audio=, video=, vector= or query=")
    total = np.zeros(store.dim, dtype=np.float64)
    for modality, value in inputs.items():
        if modality == "vector":
            try:
                vec = np.asarray(value, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError) as exc:
                raise EmbeddingError(f"query vector is not numeric: {exc}") from None
            if vec.shape != (store.dim,):
                raise EmbeddingError(f"query vector has shape {vec.shape}; this store needs ({store.dim},)")
            if not np.isfinite(vec).all() or not np.linalg.norm(vec):
                raise EmbeddingError("query vector has NaN/infinite values or is all zeros")
            vec = vec / np.linalg.norm(vec)
        else:
            vec = store.space.embed(modality, [value])[0]
        total += float((weights or {}).get(modality, 1.0)) * vec
    norm = np.linalg.norm(total)
    if not np.isfinite(norm) or norm == 0:
        raise EmbeddingError(f"the weighted query inputs {sorted(inputs)} cancel out (zero vector)")
    return (total / norm).astype(np.float32)[None, :]


def targets(store: Store, to: str | Sequence[str] | None) -> list[str]:
    if to is None:
        return store.modalities
    names = [t.strip() for t in to.split(",")] if isinstance(to, str) else [str(t) for t in to]
    names = list(dict.fromkeys(names))  # the same partition twice would duplicate its hits
    if not names or "" in names:
        raise UnknownNameError("modality", ",".join(names), store.modalities, "give target partitions in to=")
    known = set(store.manifest.partitions) | set(store.host.modalities)
    for name in names:
        if name not in known:
            raise UnknownNameError("modality", name, store.modalities, "the store's partitions are listed")
    return names


def _exact(store: Store, q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    vectors = store.db.vectors(ids.tolist(), store.dim)
    scores = vectors @ q[0]
    present = ~np.isnan(scores)  # rows a writer purged since this generation was read
    scores, ids = scores[present], ids[present]
    order = np.argsort(-scores, kind="stable")[:k]
    return scores[order], ids[order]


def search_partition(
    store: Store,
    name: str,
    q: np.ndarray,
    k: int,
    where: Mapping[str, Any] | None,
    rerank: int | None,
    rollup: bool = False,
) -> tuple[np.ndarray, np.ndarray, PartitionScores]:
    """The partition's top ``k`` (scores, ids); with ``rollup``, the top ``k`` files: each file's best segment.

    Rolling up asks the index for 4k candidates, then 16k, ... until ``k`` distinct files are among them or the
    partition is exhausted; items without a segment (or without a file) are their own group. Across partitions
    (a video's frames and its sound track) the fusion keeps each file once, by its best calibrated segment:
    every file of the fused top k is in the top k files of the partition where it scores best, so k files
    per partition are enough.
    """
    if not rollup or name not in store.host.modalities or not store.host.modalities.get(name).temporal:
        return _search_partition(store, name, q, k, where, rerank)
    fetch = k
    while True:
        fetch *= 4
        scores, ids, stats = _search_partition(store, name, q, fetch, where, rerank)
        keep = _best_per_file(store, ids)
        if len(keep) >= k or len(ids) < fetch or fetch >= stats.count:
            keep = keep[:k]
            return scores[keep], ids[keep], replace(stats, candidates=len(ids))


def _best_per_file(store: Store, ids: np.ndarray) -> list[int]:
    """Positions (in the given best-first order) of the first hit of each file."""
    rows = store.db.rows(ids.tolist(), store.generation)
    seen: set[Any] = set()
    keep = []
    for position, item_id in enumerate(ids.tolist()):
        row = rows.get(item_id)
        group = (row.uri,) if row is not None and row.uri is not None and row.start is not None else item_id
        if group not in seen:
            seen.add(group)
            keep.append(position)
    return keep


def _search_partition(
    store: Store, name: str, q: np.ndarray, k: int, where: Mapping[str, Any] | None, rerank: int | None
) -> tuple[np.ndarray, np.ndarray, PartitionScores]:
    part = store.partition(name)
    mean, std = part.moments.score_moments(q) if part else (np.zeros(1), np.ones(1))
    if part is None or part.count == 0:
        return np.empty(0), np.empty(0, np.int64), PartitionScores(name, 0, 0.0, 1.0, "none", True, 0)
    want = max(k, rerank or 0)
    allowed = store.db.matching(name, store.generation, where) if where else None
    exact = part.built == EXACT
    if allowed is not None and len(allowed) == 0:
        scores, ids = np.empty(0), np.empty(0, np.int64)
    elif allowed is not None and not exact and len(allowed) <= EXACT_FILTER_MAX:
        scores, ids = _exact(store, q, allowed, k)
        exact = True
    else:
        selector = faiss.IDSelectorBatch(allowed) if allowed is not None else None
        try:
            found_scores, found_ids = part.search(q, want, selector)
        except NotImplementedError:  # a composite index that cannot filter: the exact path below
            found_scores, found_ids = np.empty((1, 0), np.float32), np.empty((1, 0), np.int64)
        keep = found_ids[0] >= 0
        scores, ids = found_scores[0][keep], found_ids[0][keep]
        if allowed is not None and len(ids) < min(want, len(allowed)):  # the ANN walk missed some: go exact
            scores, ids = _exact(store, q, allowed, k)
            exact = True
        elif rerank and not exact:
            scores, ids = _exact(store, q, ids, k)
    stats = PartitionScores(name, part.count, float(mean[0]), float(std[0]), part.built, exact, len(ids))
    return scores[:k], ids[:k], stats


def run_search(
    store: Store,
    inputs: Mapping[str, Any],
    *,
    weights: Mapping[str, float] | None,
    to: str | Sequence[str] | None,
    k: int,
    where: Mapping[str, Any] | None,
    rerank: int | None,
    rollup: bool = True,
) -> SearchResult:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if rerank is not None and (isinstance(rerank, bool) or not isinstance(rerank, numbers.Integral) or rerank < 1):
        raise ValueError(f"rerank must be a positive integer, got {rerank!r}")
    k = int(k)
    store.refresh()
    q = query_vector(store, inputs, weights)
    with store.db.snapshot():  # every row lookup of this search reads the same SQLite snapshot
        return _search(store, q, to, k, where, rerank, rollup)


def _search(
    store: Store,
    q: np.ndarray,
    to: str | Sequence[str] | None,
    k: int,
    where: Mapping[str, Any] | None,
    rerank: int | None,
    rollup: bool,
) -> SearchResult:
    found: list[tuple[float, float, int, str]] = []
    partitions: dict[str, PartitionScores] = {}
    for name in targets(store, to):
        scores, ids, stats = search_partition(store, name, q, k, where, rerank, rollup)
        partitions[name] = stats
        for score, item_id in zip(scores.tolist(), ids.tolist(), strict=True):
            found.append(((score - stats.mean) / stats.std, score, item_id, name))
    found.sort(key=lambda hit: (-hit[0], hit[2]))
    if not rollup:
        found = found[:k]
    rows = store.db.rows([item_id for _, _, item_id, _ in found], store.generation)
    hits: list[Hit] = []
    files: set[str] = set()
    for calibrated, score, item_id, name in found:
        row = rows.get(item_id)
        if row is None:  # removed by a writer after this generation was read
            continue
        if rollup and row.uri is not None and row.start is not None:
            if row.uri in files:  # a video's sound and its picture: the file once, by its best segment
                continue
            files.add(row.uri)
        hits.append(
            Hit(item_id, name, float(score), float(calibrated), row.uri, row.start, row.end, row.text, row.metadata)
        )
        if len(hits) == k:
            break
    return SearchResult(hits, partitions)
