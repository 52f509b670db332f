"""Exact scans of a partition's segments merge into what one faiss Flat index over the live rows gives."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from anybind.store import ann
from anybind.store.manifest import PartitionRecord
from anybind.store.partition import PartitionView
from anybind.store.segment import with_deleted, write_segment


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def partition(folder: Path, pieces: list[tuple[np.ndarray, np.ndarray]], dead: list[int] = ()) -> PartitionView:
    """Segments written from (ids, vectors) pieces, with ``dead`` ids tombstoned, as a partition view."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for n, (ids, vectors) in enumerate(pieces):
        record = write_segment(folder, f"s{n}", vectors.shape[1], ids, [vectors], len(ids))
        gone = np.flatnonzero(np.isin(ids, list(dead)))
        if len(gone):
            record = with_deleted(folder, record, gone, generation=1)
        records.append(record)
    count = sum(r.live for r in records)
    return PartitionView(
        folder.parent, folder.name, PartitionRecord(count=count, segments=records), pieces[0][1].shape[1]
    )


def faiss_top(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    reference = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    reference.add_with_ids(vectors, ids)
    return reference.search(queries, k)


@pytest.mark.parametrize("nq", [1, 3, ann.BLAS_MAX_QUERIES, 40])
def test_segments_and_tombstones_match_one_faiss_index(tmp_path, nq):
    rng = np.random.default_rng(nq)
    x = unit(rng, 900, 32)
    ids = np.sort(rng.permutation(10_000)[:900]).astype(np.int64)
    dead = ids[rng.choice(900, 60, replace=False)].tolist()
    part = partition(tmp_path / "p", [(ids[:300], x[:300]), (ids[300:310], x[300:310]), (ids[310:], x[310:])], dead)
    q = unit(rng, nq, 32)
    scores, found, exact = part.search(q, 10)
    live = ~np.isin(ids, dead)
    ref_scores, ref_ids = faiss_top(ids[live], x[live], q, 10)
    assert exact
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert not set(found.ravel().tolist()) & set(dead)


def test_ties_order_by_id_across_segments_and_k_beyond_the_count(tmp_path):
    same = np.tile(np.eye(4, dtype=np.float32)[:1], (3, 1))  # identical vectors in two segments
    part = partition(tmp_path / "p", [(np.array([10, 40, 50]), same), (np.array([60, 70, 80]), same)], dead=[40])
    q = np.eye(4, dtype=np.float32)[:1]
    scores, found, _ = part.search(q, 3)
    assert found.tolist() == [[10, 50, 60]] and np.allclose(scores, 1.0)
    scores, found, _ = part.search(q, 100)
    assert found.tolist() == [[10, 50, 60, 70, 80]]  # every live row once, never the dead one


def test_filtered_scan_and_vectors_by_id(tmp_path):
    rng = np.random.default_rng(0)
    x = unit(rng, 50, 8)
    ids = np.arange(1, 51, dtype=np.int64)
    part = partition(tmp_path / "p", [(ids[:20], x[:20]), (ids[20:], x[20:])], dead=[3])
    allowed = np.array([2, 3, 25, 49, 999], dtype=np.int64)
    _, found, exact = part.search(x[:1], 10, allowed)
    want = sorted([2, 25, 49], key=lambda i: -float(x[i - 1] @ x[0]))
    assert exact and found[0].tolist() == want
    got = part.vectors(np.array([25, 3, 999, 1]))
    np.testing.assert_array_equal(got[[0, 3]], x[[24, 0]])
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()  # dead and absent ids
    assert part.live_ids().tolist() == [i for i in range(1, 51) if i != 3]


@pytest.mark.parametrize("use_torch", [False, True])
def test_large_segments_select_the_same_top_k_with_or_without_torch(tmp_path, monkeypatch, use_torch):
    """Segments over 4,096 rows pick their k-th score with torch's top-k when torch is loaded: same answer."""
    import sys

    torch = pytest.importorskip("torch")
    if not use_torch:
        monkeypatch.delitem(sys.modules, "torch")
    rng = np.random.default_rng(5)
    x = unit(rng, 12_000, 16)
    x[5000:5003] = x[7000]  # a tie across two segments at the top for the query below
    ids = np.arange(1, 12_001, dtype=np.int64) * 2
    dead = ids[rng.choice(12_000, 500, replace=False)].tolist()
    dead = [i for i in dead if i not in ids[[5000, 5001, 5002, 7000]]]
    part = partition(tmp_path / "p", [(ids[:6000], x[:6000]), (ids[6000:], x[6000:])], dead)
    q = np.vstack([x[7000:7001], unit(rng, 4, 16)])
    live = ~np.isin(ids, dead)
    ref_scores, ref_ids = faiss_top(ids[live], x[live], q, 10)
    for queries in (q, q[:1]):
        scores, found, _ = part.search(queries, 10)
        np.testing.assert_allclose(scores, ref_scores[: len(queries)], atol=1e-5)
        assert found[0, :4].tolist() == sorted(ids[[5000, 5001, 5002, 7000]].tolist())  # ties by id
        np.testing.assert_array_equal(found[1:], ref_ids[1 : len(queries)])
    assert ("torch" in sys.modules) == use_torch
    del torch
