"""Index types: faiss ``index_factory`` strings wrapped in ``IDMap2`` (inner product), their training needs and
the search parameters of their ANN structure (``nprobe`` for IVF, ``efSearch`` for HNSW)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import faiss

from anybind.errors import StoreError

EXACT = "Flat"
TRAIN_SAMPLE = 262_144  # vectors used to train an index (faiss subsamples further per centroid)


def make_index(dim: int, factory: str) -> Any:
    """An empty ``IDMap2`` over ``index_factory(factory)`` with inner-product metric."""
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()[-1]
        raise StoreError(f"index type {factory!r} is not a valid faiss index_factory string ({message})") from None
    if isinstance(faiss.downcast_index(inner), faiss.IndexIDMap):
        raise StoreError(f"index type {factory!r}: give the index without IDMap (the store adds IDMap2)")
    return faiss.IndexIDMap2(inner)


MIN_TRAIN = 1000  # any trained index (SQ ranges, PCA, OPQ) waits for at least this many vectors


def min_train(factory: str, dim: int) -> int:
    """Vectors needed before ``factory`` is trained: 39 points per IVF list or PQ centroid, and at least
    max(1000, 2 * dim) for anything that trains at all (scalar-quantiser ranges, PCA)."""
    if not needs_training(dim, factory):
        return 1
    need = max(MIN_TRAIN, 2 * dim)
    for nlist in re.findall(r"IVF(\d+)", factory):
        need = max(need, 39 * int(nlist))
    for nbits in re.findall(r"PQ\d+(?:x(\d+))?", factory):
        need = max(need, 39 * 2 ** int(nbits or 8))
    return need


def needs_training(dim: int, factory: str) -> bool:
    return not make_index(dim, factory).is_trained


UNSUPPORTED = object()  # search_params: this composite index cannot take a selector; search exactly instead


def ann_structure(index: Any) -> tuple[str, Any] | None:
    """``("nprobe", ivf)`` or ``("efSearch", hnsw)`` for the ANN structure inside a partition (also under PCA,
    OPQ or refinement wrappers), or None for exact indexes."""
    inner = faiss.downcast_index(index.index)
    try:
        return "nprobe", faiss.extract_index_ivf(inner)
    except RuntimeError:
        pass
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch", inner
    return None


def search_params(index: Any, params: dict[str, int], selector: Any | None) -> Any:
    """faiss search parameters for a filtered search (None without a filter: the index's own settings apply)."""
    if selector is None:
        return None
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=params.get("nprobe", inner.nprobe))
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=params.get("efSearch", inner.hnsw.efSearch))
    if isinstance(inner, faiss.IndexFlat):
        return faiss.SearchParameters(sel=selector)
    return UNSUPPORTED


BLAS_MAX_QUERIES = 16  # up to this many queries, a Flat scan is one BLAS call here (faiss loops without BLAS)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """faiss without OpenMP for a few queries: HNSW and IVF parallelise over queries, so one query gains nothing,
    and on a busy machine the idle OpenMP threads' barrier cost up to a scheduler slice (8 ms measured)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
