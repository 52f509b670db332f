"""The faiss GPU path of the store (run with ``python -m pytest -m gpu`` on a machine with faiss-gpu and CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

import anybind
from anybind.store import gpu

pytestmark = pytest.mark.gpu


def test_gpu_train_and_search_match_cpu(tmp_path, clip_space, monkeypatch):
    if not gpu.gpu_count():
        pytest.fail("marked gpu but faiss sees no GPU (install anybind[gpu] on a CUDA machine)")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20_000, clip_space.dim)).astype(np.float32)
    queries = rng.standard_normal((50, clip_space.dim)).astype(np.float32)
    store = anybind.Store.open(tmp_path / "db", space=clip_space, index="IVF64,Flat")
    store.add_vectors("image", vectors)
    part = store.partition("image")
    assert part is not None and part.built == "IVF64,Flat"
    part.set_params({"nprobe": 64})  # all lists: results must equal the exact ranking
    gpu_hits = [store.search(vector=q, to="image", k=10).ids() for q in queries]
    assert all(seg.gpu for seg in part.segments), "the unfiltered search did not use the GPU copy"
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for q, ids in zip(queries, gpu_hits, strict=True):
        exact = np.argsort(-(unit @ (q / np.linalg.norm(q))))[:10] + 1
        assert len(set(ids) & set(exact.tolist())) >= 9
    reopened = anybind.Store.open(tmp_path / "db")
    monkeypatch.setenv("ANYBIND_FAISS_GPU", "off")
    gpu.gpu_count.cache_clear()
    try:
        cpu_hits = [reopened.search(vector=q, to="image", k=10).ids() for q in queries]
    finally:
        gpu.gpu_count.cache_clear()
    assert sum(len(set(a) & set(b)) for a, b in zip(gpu_hits, cpu_hits, strict=True)) >= 0.95 * 500
