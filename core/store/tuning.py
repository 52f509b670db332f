"""Recall checks and ``optimize``: measure ANN recall@k against exact search and tune search parameters.

Queries are stored vectors sampled with a fixed seed; the ground truth is an exact scan of the partition's
stored vectors (SQLite), so the measurement is independent of the index being measured.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from anybind.errors import StoreError, UnknownNameError

from .manifest import write_manifest
from .partition import EXACT, Partition, min_train

if TYPE_CHECKING:
    from .store import Store

OPTIMIZE_MIN = 10_000  # below this many vectors an exact scan is fast enough; optimize keeps Flat
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024, 2048)


def exact_top_k(store: Store, name: str, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top-k per query, by scanning the stored vectors block by block."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    for ids, vectors in store.db.partition(name, store.generation):
        scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(all_ids, keep, axis=1)
    return best_ids


def _sample(store: Store, name: str, queries: int, seed: int) -> np.ndarray:
    ids = np.sort(store.db.ids(name, store.generation))
    rng = np.random.default_rng(seed)
    pick = ids if len(ids) <= queries else np.sort(rng.choice(ids, queries, replace=False))
    return store.db.vectors(pick.tolist(), store.dim)


def recall(part: Partition, queries: np.ndarray, truth: np.ndarray, k: int) -> float:
    _, found = part.search(queries, k)
    hits = sum(
        len(set(row_found[row_found >= 0]) & set(row_truth)) for row_found, row_truth in zip(found, truth, strict=True)
    )
    return hits / truth.size if truth.size else 1.0


def partition_recall(store: Store, name: str, k: int = 10, queries: int = 200, seed: int = 0) -> dict[str, Any]:
    part = store.partition(name)
    if part is None or part.count == 0:
        return {"recall": None, "k": k, "queries": 0, "index": "none", "params": {}}
    k = min(k, part.count)
    q = _sample(store, name, queries, seed)
    truth = exact_top_k(store, name, q, k)
    value = 1.0 if part.built == EXACT else recall(part, q, truth, k)
    return {"recall": round(value, 4), "k": k, "queries": len(q), "index": part.built, "params": dict(part.params)}


def default_ivf(count: int) -> str:
    """``IVF{nlist},Flat`` with nlist a power of two near 4*sqrt(n), trainable with 39 points per list."""
    nlist = 2 ** int(math.log2(max(16, 4 * math.sqrt(count))))
    while nlist > 16 and 39 * nlist > count:
        nlist //= 2
    return f"IVF{nlist},Flat"


def tune(part: Partition, queries: np.ndarray, truth: np.ndarray, k: int, target: float) -> tuple[dict, float]:
    """The cheapest nprobe / efSearch that reaches ``target`` recall@k (or the best one tried)."""
    found = part.ann
    if found is None:
        return {}, recall(part, queries, truth, k)
    key, structure = found
    values = list(EF_SEARCH)
    if key == "nprobe":
        values = [v for v in NPROBES if v < structure.nlist] + [structure.nlist]
    best: tuple[dict, float] = ({}, -1.0)
    for value in values:
        part.params = {key: value}
        measured = recall(part, queries, truth, k)
        if measured > best[1]:
            best = (dict(part.params), measured)
        if measured >= target:
            break
    part.params = dict(best[0])
    return best


def optimize(
    store: Store, modality: str | None = None, index: str | None = None, target_recall: float = 0.95
) -> dict[str, dict[str, Any]]:
    if not 0 < target_recall <= 1:
        raise StoreError(f"target recall must be in (0, 1], got {target_recall}")
    report: dict[str, dict[str, Any]] = {}
    with store._writing():
        names = [modality] if modality else store.modalities
        for name in names:
            if name not in store.manifest.partitions:
                raise UnknownNameError("partition", name, store.modalities)
            record = store.manifest.partitions[name]
            count = record.count
            if index is not None:
                factory = index
            elif record.factory != EXACT:  # keep the ANN type the store was asked for; retune it
                factory = record.factory
            elif count >= OPTIMIZE_MIN:
                factory = default_ivf(count)
            else:
                reason = f"under {OPTIMIZE_MIN} items an exact scan is fast enough"
                report[name] = {"action": "kept", "index": record.built, "count": count, "reason": reason}
                continue
            action = "tuned"
            if index is not None or record.built != factory:
                store._commit([], rebuild={name: factory})
                action = "rebuilt"
            part = store.partition(name)
            assert part is not None
            if part.built == EXACT:
                reason = f"{factory} needs {min_train(factory, store.dim)} vectors to train"
                report[name] = {"action": "kept", "index": EXACT, "count": count, "reason": reason}
                continue
            k = min(10, part.count)
            queries = _sample(store, name, 200, seed=1)
            truth = exact_top_k(store, name, queries, k)
            params, measured = tune(part, queries, truth, k, target_recall)
            manifest = store.manifest.model_copy(deep=True)
            manifest.generation += 1
            manifest.partitions[name].params = params
            write_manifest(store.path, manifest)
            store.manifest, store._stamp = manifest, store._manifest_stamp()
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
