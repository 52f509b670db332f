"""The store's own exact scan of Flat partitions (one BLAS call per few queries) gives what faiss gives."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from anybind.store.partition import BLAS_MAX_QUERIES, Partition


def flat(vectors: np.ndarray, ids: np.ndarray) -> Partition:
    part = Partition.new(vectors.shape[1], "Flat")
    part.add(ids, vectors)
    return part


@pytest.mark.parametrize("nq", [1, 3, BLAS_MAX_QUERIES])
def test_matches_faiss_scores_and_ids(nq):
    rng = np.random.default_rng(nq)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.permutation(10_000)[:500].astype(np.int64)
    part = flat(x, ids)
    assert part._flat_view() is not None
    q = rng.standard_normal((nq, 32)).astype(np.float32)
    scores, found = part.search(q, 10)
    reference = faiss.IndexIDMap2(faiss.IndexFlatIP(32))
    reference.add_with_ids(x, ids)
    ref_scores, ref_ids = reference.search(q, 10)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_ties_order_by_id_and_k_beyond_the_count():
    x = np.tile(np.eye(4, dtype=np.float32)[:1], (6, 1))  # six identical vectors
    part = flat(x, np.array([50, 10, 40, 20, 60, 30], np.int64))
    scores, found = part.search(np.eye(4, dtype=np.float32)[:1], 4)
    assert found.tolist() == [[10, 20, 30, 40]] and np.allclose(scores, 1.0)
    scores, found = part.search(np.eye(4, dtype=np.float32)[:1], 100)
    assert found.tolist() == [[10, 20, 30, 40, 50, 60]]


def test_views_follow_removals_and_other_types_use_faiss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    part = flat(x, np.arange(1, 51, dtype=np.int64))
    best = part.search(x[:1], 1)[1][0, 0]
    assert best == 1
    assert part.remove(np.array([1], np.int64), x[:1])
    assert 1 not in part.search(x[:1], 50)[1][0].tolist() and part.count == 49
    hnsw = Partition.new(8, "HNSW8")
    hnsw.add(np.arange(1, 51, dtype=np.int64), x)
    assert hnsw._flat_view() is None
