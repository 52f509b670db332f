"""One modality partition at one generation: its segments, searched together as one index would be.

Each segment answers with its own top-k (an exact BLAS scan of its mapped vectors, or its ANN index once
sealed); the partition merges them exactly: best scores first, equal scores by ascending id, dead rows never
returned. The partition's moments (count, sum, outer products) calibrate its scores for fusion.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from anybind.errors import StoreError

from . import ann, gpu
from .manifest import PartitionRecord
from .moments import Moments, read_moments
from .segment import Segment

EXACT_FILTER_MAX = 50_000  # a filter that leaves at most this many items of a sealed segment is searched exactly
SCAN_BLOCK = 32_768  # rows scored at once when many queries scan a segment
SENTINEL = np.iinfo(np.int64).max  # the id of a padding entry (sorts after every real id, never returned)


def merge_top_k(scores: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-segment (nq, *) candidates into the (nq, <=k) best: score descending, then id ascending."""
    if not scores:
        return np.empty((0, 0), np.float32), np.empty((0, 0), np.int64)
    all_scores = np.concatenate(scores, axis=1) if len(scores) > 1 else scores[0]
    all_ids = np.concatenate(ids, axis=1) if len(ids) > 1 else ids[0]
    k = min(k, all_scores.shape[1])
    out_s = np.empty((len(all_scores), k), np.float32)
    out_i = np.empty((len(all_scores), k), np.int64)
    for row in range(len(all_scores)):
        order = np.lexsort((all_ids[row], -all_scores[row]))[:k]
        out_s[row], out_i[row] = all_scores[row][order], all_ids[row][order]
    return out_s, out_i


def kth_best(scores: np.ndarray, k: int) -> np.ndarray:
    """The k-th highest score of each row of (nq, n) ``scores``. Through torch's top-k when torch is already
    imported (anybind's spaces import it): 0.17 ms for 100k scores on the 2-core VM, where NumPy's argpartition
    takes 1.1 ms, a tenth of the scan itself."""
    torch = sys.modules.get("torch")
    if torch is not None and scores.shape[1] >= 4096 and scores.flags.writeable:
        top = torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False).values
        return top.min(dim=1).values.numpy()
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(scores, part, axis=1).min(axis=1)


def candidate_positions(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row of ``scores`` (nq, n), n > k, the positions scoring at least the row's k-th best (all of a tie at
    the boundary, so that it is decided by id in :func:`merge_top_k`)."""
    kth = kth_best(scores, k)
    return [np.flatnonzero(scores[row] >= kth[row]) for row in range(len(scores))]


def padded(scores: list[np.ndarray], ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of candidates of unequal length as (nq, width) arrays, padded with -inf / SENTINEL."""
    width = max(len(row) for row in scores)
    out_s = np.full((len(scores), width), -np.inf, np.float32)
    out_i = np.full((len(scores), width), SENTINEL, np.int64)
    for row, (s, i) in enumerate(zip(scores, ids, strict=True)):
        out_s[row, : len(s)], out_i[row, : len(i)] = s, i
    return out_s, out_i


def top_candidates(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` (nq, n) the candidates that can reach the top ``k``: everything scoring at least the
    k-th best (so that ties at the boundary are decided by id in :func:`merge_top_k`)."""
    if scores.shape[1] <= k:
        return scores, np.broadcast_to(ids, scores.shape)
    positions = candidate_positions(scores, k)
    if len(scores) == 1:
        return scores[:, positions[0]], ids[positions[0]][None, :]
    return padded([scores[row, keep] for row, keep in enumerate(positions)], [ids[keep] for keep in positions])


def exact_scan(seg: Segment, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k candidates of a segment (all live rows), block by block for many queries."""
    n = seg.record.rows
    block = n if len(queries) <= ann.BLAS_MAX_QUERIES else SCAN_BLOCK
    found_s, found_i = [], []
    for start in range(0, n, block):
        scores = queries @ seg.vectors[start : start + block].T  # one sgemv/sgemm over the map
        ids = seg.ids[start : start + block]
        if seg.live is not None:
            scores[:, ~seg.live[start : start + block]] = -np.inf
        s, i = top_candidates(scores, ids, k)
        found_s.append(s)
        found_i.append(i)
    if len(found_s) > 1:
        return merge_top_k(found_s, found_i, k)
    return found_s[0], np.ascontiguousarray(found_i[0])


def exact_scan_all(segs: list[Segment], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k candidates of several segments at once, for a few queries: each segment's BLAS call writes
    into one score row, then one selection over all of them (a selection and a merge per segment cost about
    40 us each: 0.7 ms for the 17 segments of a bulk-loaded 100k partition)."""
    sizes = [seg.record.rows for seg in segs]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    scores = np.empty((len(queries), int(offsets[-1])), dtype=np.float32)
    for seg, start, stop in zip(segs, offsets[:-1], offsets[1:], strict=True):
        block = scores[:, start:stop]
        np.matmul(queries, seg.vectors.T, out=block)
        if seg.live is not None:
            block[:, ~seg.live] = -np.inf
    k = min(k, scores.shape[1])
    positions = candidate_positions(scores, k) if scores.shape[1] > k else [np.arange(scores.shape[1])] * len(queries)

    def ids_at(at: np.ndarray) -> np.ndarray:
        which = np.searchsorted(offsets, at, side="right") - 1
        return np.fromiter((segs[w].ids[p - offsets[w]] for w, p in zip(which, at, strict=True)), np.int64, len(at))

    return padded([scores[row, keep] for row, keep in enumerate(positions)], [ids_at(keep) for keep in positions])


def _drop_dead(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-1 (no hit) from faiss becomes an entry that sorts last and is cut by the caller."""
    bad = ids < 0
    if bad.any():
        scores = np.where(bad, -np.inf, scores).astype(np.float32)
        ids = np.where(bad, SENTINEL, ids)
    return scores, ids


class PartitionView:
    """A partition at one generation, as one searchable unit over its segments."""

    def __init__(
        self,
        root: Path,
        name: str,
        record: PartitionRecord,
        dim: int,
        scanner: Any = None,
        cache: dict[tuple[str, ...], Segment] | None = None,
    ) -> None:
        """``cache`` keeps loaded segments across generations (keyed by their immutable file names), so a new
        generation maps only its new files and re-reads no index."""
        self.name, self.record, self.dim = name, record, dim
        self.folder = root / name
        self.segments = []
        for seg in record.segments:
            key = (name, seg.vectors.name, seg.deleted.name if seg.deleted else "", seg.index.name if seg.index else "")
            loaded = cache.get(key) if cache is not None else None
            if loaded is None:
                loaded = Segment(self.folder, seg, dim, record.params)
                if cache is not None:
                    cache[key] = loaded
            elif loaded.params != record.params:
                loaded.set_params(record.params)
            self.segments.append(loaded)
        self.scanner = scanner  # a TorchScanner for exact scans on a GPU, or None
        live = sum(seg.record.live for seg in self.segments)
        if live != record.count:
            raise StoreError(f"{self.folder}: segments hold {live} live rows, the manifest counts {record.count}")
        self.moments = Moments.empty(dim)
        if record.moments is not None:
            self.moments = read_moments(self.folder, record.moments, dim, record.count)

    @property
    def count(self) -> int:
        return self.record.count

    @property
    def factory(self) -> str:
        return self.record.factory

    @property
    def built(self) -> str:
        """The index type searched: the factory once every live row is in a sealed segment, else Flat."""
        kinds = {seg.record.built or ann.EXACT for seg in self.segments if seg.record.live}
        if not kinds:
            return ann.EXACT
        return kinds.pop() if len(kinds) == 1 else ann.EXACT + "+" + "+".join(sorted(kinds - {ann.EXACT}))

    @property
    def exact(self) -> bool:
        return all(seg.exact for seg in self.segments if seg.record.live)

    def set_params(self, params: dict[str, int]) -> None:
        for seg in self.segments:
            seg.set_params(params)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Top-k (scores, ids) per query over every live row (``allowed``: only these ids); the flag says whether
        every candidate came from an exact scan. Rows have fewer than k entries when fewer items qualify."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        found_s: list[np.ndarray] = []
        found_i: list[np.ndarray] = []
        exact = True
        live = [seg for seg in self.segments if seg.record.live]
        if allowed is None and self.scanner is not None:
            flat = [seg for seg in live if seg.exact]
            if flat:
                triples = [(seg.folder.name + "/" + seg.name, seg.vectors, seg.ids, seg.live) for seg in flat]
                s, i = self.scanner.top_k(triples, queries, k)
                found_s.append(s)
                found_i.append(i)
                live = [seg for seg in live if not seg.exact]
        flat = [seg for seg in live if seg.exact]
        if allowed is None and len(flat) > 1 and len(queries) <= ann.BLAS_MAX_QUERIES:
            s, i = exact_scan_all(flat, queries, k)
            found_s.append(s)
            found_i.append(i)
            live = [seg for seg in live if not seg.exact]
        for seg in live:
            if allowed is not None:
                s, i, was_exact = self._filtered(seg, queries, k, allowed)
            elif seg.exact:
                s, i, was_exact = (*exact_scan(seg, queries, k), True)
            else:
                s, i, was_exact = (*self._ann(seg, queries, k, None), False)
            exact = exact and was_exact
            found_s.append(s)
            found_i.append(i)
        if not found_s:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64), True
        scores, ids = merge_top_k(found_s, found_i, k)
        missing = (ids == SENTINEL) | np.isneginf(scores)  # padding, faiss misses, dead rows of a tiny segment
        if missing.any():
            if len(ids) == 1:
                keep = ~missing[0]
                scores, ids = scores[:, keep], ids[:, keep]
            else:
                ids = np.where(missing, -1, ids)
        return scores, ids, exact

    def _filtered(
        self, seg: Segment, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        pos = seg.positions(allowed)
        if not len(pos):
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64), True
        if seg.exact or len(pos) <= EXACT_FILTER_MAX:
            scores = queries @ np.asarray(seg.vectors[pos]).T
            s, i = top_candidates(scores, seg.ids[pos], k)
            return s, np.ascontiguousarray(i), True
        s, i = self._ann(seg, queries, k, seg.ids[pos])
        if ((i != SENTINEL).sum(axis=1) < min(k, len(pos))).any():  # the ANN walk missed some: score them exactly
            scores = queries @ np.asarray(seg.vectors[pos]).T
            s, i = top_candidates(scores, seg.ids[pos], k)
            return s, np.ascontiguousarray(i), True
        return s, i, bool(((i != SENTINEL).sum(axis=1) == len(pos)).all())  # every allowed row came back: exact

    def _ann(self, seg: Segment, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None):
        """Search a sealed segment's index; tombstoned rows (and ids outside ``allowed_ids``) are excluded inside
        the search by a selector. IVF searches that find fewer than k widen their probe."""
        selector = None
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
        elif len(seg.deleted):
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(seg.ids[seg.deleted])))
        k = min(k, seg.record.rows)
        params = ann.search_params(seg.index, self.record.params, selector)
        if params is ann.UNSUPPORTED:  # a composite index that cannot filter: score live/allowed rows exactly
            pos = seg.positions(allowed_ids if allowed_ids is not None else seg.ids)
            scores = queries @ np.asarray(seg.vectors[pos]).T
            s, i = top_candidates(scores, seg.ids[pos], k)
            return s, np.ascontiguousarray(i)
        if selector is None and seg.gpu is False:
            seg.gpu = gpu.GpuSearcher.try_build(seg.index, self.record.params)
        if selector is None and seg.gpu and k <= gpu.GPU_MAX_K:
            scores, ids = seg.gpu.search(queries, k)
        elif len(queries) <= ann.BLAS_MAX_QUERIES:
            with ann.one_thread():
                scores, ids = seg.index.search(queries, k, params=params)
        else:
            scores, ids = seg.index.search(queries, k, params=params)
        if seg.ann is not None and seg.ann[0] == "nprobe" and (ids < 0).any():
            scores, ids = self._wider(seg, queries, k, params)
        return _drop_dead(scores, ids)

    @staticmethod
    def _wider(seg: Segment, queries: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Search again probing 4x more lists each time, until k hits come back or every list is probed."""
        assert seg.ann is not None
        ivf = seg.ann[1]
        nprobe = params.nprobe if params is not None else ivf.nprobe
        original = ivf.nprobe
        try:
            while True:
                nprobe = min(ivf.nlist, nprobe * 4)
                ivf.nprobe = nprobe
                if params is not None:
                    params.nprobe = nprobe
                scores, ids = seg.index.search(queries, k, params=params)
                if not (ids < 0).any() or nprobe >= ivf.nlist:
                    return scores, ids
        finally:
            ivf.nprobe = original

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``ids`` in the given order; rows of ids that are not live here are NaN."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full((len(ids), self.dim), np.nan, dtype=np.float32)
        if not len(ids):
            return out
        for seg in self.segments:
            if not seg.record.rows:
                continue
            inside = np.flatnonzero((ids >= seg.record.min_id) & (ids <= seg.record.max_id))
            if not len(inside):
                continue
            pos = np.searchsorted(seg.ids, ids[inside])
            pos = np.minimum(pos, len(seg.ids) - 1)
            hit = seg.ids[pos] == ids[inside]
            if seg.live is not None:
                hit &= seg.live[pos]
            out[inside[hit]] = seg.vectors[pos[hit]]
        return out

    def live_ids(self) -> np.ndarray:
        parts = [seg.ids if seg.live is None else seg.ids[seg.live] for seg in self.segments]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of every live row, segment by segment."""
        for seg in self.segments:
            yield from seg.live_blocks()
