"""Recall checks and ``optimize``: measure ANN recall@k against exact search and tune search parameters.

Queries are stored vectors sampled with a fixed seed; the ground truth is an exact NumPy scan of the
partition's live vectors, block by block, independent of the index being measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from anybind.errors import StoreError, UnknownNameError

from .ann import EXACT, min_train
from .partition import PartitionView, merge_top_k, top_candidates
from .snapshot import Snapshot
from .writer import Writer

OPTIMIZE_MIN = 10_000  # below this many vectors an exact scan is fast enough; optimize keeps Flat
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024, 2048)


def exact_top_k(part: PartitionView, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top-k per query (ties by id), scanning the live vectors block by block."""
    found_s: list[np.ndarray] = []
    found_i: list[np.ndarray] = []
    for ids, vectors in part.blocks():
        scores, top = top_candidates(queries @ vectors.T, ids, k)
        found_s.append(scores)
        found_i.append(np.ascontiguousarray(top))
        if len(found_s) > 8:
            merged = merge_top_k(found_s, found_i, k)
            found_s, found_i = [merged[0]], [merged[1]]
    return merge_top_k(found_s, found_i, k)[1]


def sample(part: PartitionView, queries: int, seed: int) -> np.ndarray:
    ids = part.live_ids()
    rng = np.random.default_rng(seed)
    pick = ids if len(ids) <= queries else np.sort(rng.choice(ids, queries, replace=False))
    return part.vectors(pick)


def recall(part: PartitionView, queries: np.ndarray, truth: np.ndarray, k: int) -> float:
    _, found, _ = part.search(queries, k)
    hits = sum(
        len(set(row_found[row_found >= 0]) & set(row_truth)) for row_found, row_truth in zip(found, truth, strict=True)
    )
    return hits / truth.size if truth.size else 1.0


def partition_recall(snap: Snapshot, name: str, k: int = 10, queries: int = 200, seed: int = 0) -> dict[str, Any]:
    part = snap.partition(name)
    if part is None or part.count == 0:
        return {"recall": None, "k": k, "queries": 0, "index": "none", "params": {}}
    k = min(k, part.count)
    q = sample(part, queries, seed)
    value = 1.0 if part.exact else recall(part, q, exact_top_k(part, q, k), k)
    return {
        "recall": round(value, 4),
        "k": k,
        "queries": len(q),
        "index": part.built,
        "params": dict(part.record.params),
    }


def default_ivf(count: int) -> str:
    """``IVF{nlist},Flat`` with nlist a power of two near 4*sqrt(n), trainable with 39 points per list."""
    nlist = 2 ** int(math.log2(max(16, 4 * math.sqrt(count))))
    while nlist > 16 and 39 * nlist > count:
        nlist //= 2
    return f"IVF{nlist},Flat"


def tune(part: PartitionView, queries: np.ndarray, truth: np.ndarray, k: int, target: float) -> tuple[dict, float]:
    """The cheapest nprobe / efSearch that reaches ``target`` recall@k on every sealed segment (or the best tried)."""
    sealed = [seg for seg in part.segments if seg.ann is not None]
    if not sealed:
        return {}, recall(part, queries, truth, k)
    key = sealed[0].ann[0]  # type: ignore[index]
    values = list(EF_SEARCH)
    if key == "nprobe":
        nlist = min(seg.ann[1].nlist for seg in sealed)  # type: ignore[index]
        values = [v for v in NPROBES if v < nlist] + [nlist]
    best: tuple[dict, float] = ({}, -1.0)
    for value in values:
        part.set_params({key: value})
        measured = recall(part, queries, truth, k)
        if measured > best[1]:
            best = ({key: value}, measured)
        if measured >= target:
            break
    part.set_params(dict(best[0]))
    return best


def optimize(
    writer: Writer,
    snapshot: Callable[[], Snapshot],
    modality: str | None = None,
    index: str | None = None,
    target_recall: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Merge each partition into one segment indexed with its ANN type (a grown Flat one becomes IVF, or any
    becomes ``index``), then tune nprobe / efSearch to the smallest value reaching ``target_recall``."""
    if not 0 < target_recall <= 1:
        raise StoreError(f"target recall must be in (0, 1], got {target_recall}")
    report: dict[str, dict[str, Any]] = {}
    with writer.locked() as manifest:
        names = [modality] if modality else sorted(n for n, p in manifest.partitions.items() if p.count)
        dim = manifest.space.dim
        for name in names:
            current = writer.manifest
            assert current is not None
            if name not in current.partitions:
                raise UnknownNameError("partition", name, sorted(current.partitions))
            record = current.partitions[name]
            count = record.count
            if index is not None:
                factory = index
            elif record.factory != EXACT:  # keep the ANN type the store was asked for; retune it
                factory = record.factory
            elif count >= OPTIMIZE_MIN:
                factory = default_ivf(count)
            else:
                reason = f"under {OPTIMIZE_MIN} items an exact scan is fast enough"
                report[name] = {"action": "kept", "index": EXACT, "count": count, "reason": reason}
                continue
            action = "tuned"
            single = (
                len(record.segments) == 1 and record.segments[0].built == factory and not record.segments[0].deleted
            )
            if index is not None or not single:
                writer.commit(rebuild={name: factory})
                action = "rebuilt"
            part = snapshot().partition(name)
            assert part is not None
            if part.exact:
                if factory == EXACT:  # optimize(index="Flat"): merged into one exact segment, nothing to tune
                    report[name] = {"action": action, "index": EXACT, "count": count, "segments": len(part.segments)}
                    continue
                reason = f"{factory} needs {min_train(factory, dim)} vectors to train"
                report[name] = {"action": "kept", "index": EXACT, "count": count, "reason": reason}
                continue
            k = min(10, part.count)
            queries = sample(part, 200, seed=1)
            truth = exact_top_k(part, queries, k)
            params, measured = tune(part, queries, truth, k, target_recall)
            writer.commit(params={name: params})
            report[name] = {
                "action": action,
                "index": part.built,
                "requested_index": factory,
                "count": count,
                "params": params,
                f"recall@{k}": round(measured, 4),
                "target_met": measured >= target_recall,
            }
    return report
