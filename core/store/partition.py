"""One modality partition: an ``IDMap2`` FAISS index (inner product) plus the score statistics used to
calibrate its scores when several partitions are fused.

The statistics are the partition's vector count, sum and sum of outer products. For a query ``q`` they give
the exact mean and standard deviation of ``q . x`` over every item ``x`` of the partition (``q . mean`` and
``sqrt(q^T Cov q)``), which is what :mod:`anybind.store.fusion` turns into z-scores.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from anybind.errors import StoreError

from . import gpu
from .files import write_atomic

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
def _one_thread() -> Iterator[None]:
    """faiss without OpenMP for a few queries: HNSW and IVF parallelise over queries, so one query gains nothing,
    and on a busy machine the idle OpenMP threads' barrier cost up to a scheduler slice (8 ms measured)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def _matvec_top_k(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product for a few queries: one sgemv/sgemm over the stored vectors, then a partial sort.

    faiss's Flat search of a single query scans at about a third of the memory bandwidth a BLAS matrix-vector
    product reaches on the same machine (docs/benchmarks.md); equal scores order by id, like faiss.
    """
    scores = np.ascontiguousarray(queries, dtype=np.float32) @ vectors.T  # (nq, n)
    k = min(k, scores.shape[1])
    top_scores = np.empty((len(queries), k), np.float32)
    top_ids = np.empty((len(queries), k), np.int64)
    for row, line in enumerate(scores):
        if k < len(line):  # everything scoring at least the k-th best, so that ties at the boundary go by id
            kth = line[np.argpartition(-line, k - 1)[k - 1]]
            part = np.flatnonzero(line >= kth)
        else:
            part = np.arange(len(line))
        order = np.lexsort((ids[part], -line[part]))[:k]
        top_scores[row], top_ids[row] = line[part][order], ids[part][order]
    return top_scores, top_ids


@dataclass
class Moments:
    """Count, sum and sum of outer products of a partition's vectors (float64)."""

    count: int
    total: np.ndarray
    outer: np.ndarray
    _derived: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, dim: int) -> Moments:
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    def add(self, vectors: np.ndarray, sign: int = 1) -> None:
        x = vectors.astype(np.float64)
        self.count += sign * len(x)
        self.total += sign * x.sum(axis=0)
        self.outer += sign * (x.T @ x)
        self._derived = None

    def score_moments(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of ``q . x`` over the partition, for each query row."""
        q = queries.astype(np.float64)
        if self.count < 2:
            return np.zeros(len(q)), np.ones(len(q))
        if self._derived is None:  # once per change of the partition, not once per query
            mean = self.total / self.count
            cov = self.outer / self.count - np.outer(mean, mean)  # accumulated in float64, read in float32
            self._derived = (mean.astype(np.float32), cov.astype(np.float32))
        mean_vec, cov = self._derived
        q32 = q.astype(np.float32)
        var = ((q32 @ cov) * q32).sum(axis=1, dtype=np.float64)  # q C q^T per row through BLAS: 1 MB read at d = 512
        return (q32 @ mean_vec).astype(np.float64), np.sqrt(np.clip(var, 1e-12, None))

    def to_bytes(self) -> bytes:
        return save_tensors(
            {"count": np.array([self.count], dtype=np.int64), "total": self.total, "outer": self.outer},
            metadata={"format": "anybind-moments-1"},
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Moments:
        tensors = load_tensors(data)
        return cls(int(tensors["count"][0]), tensors["total"], tensors["outer"])


class Partition:
    """A FAISS index of one modality's vectors, with its moments and search parameters."""

    def __init__(self, dim: int, factory: str, built: str, index: Any, moments: Moments, params: dict[str, int]):
        self.dim = dim
        self.factory = factory
        self.built = built
        self.index = index
        self.ann = ann_structure(index)  # ("nprobe", ivf) / ("efSearch", hnsw) inside ``index``, or None
        self.moments = moments
        self._gpu: gpu.GpuSearcher | bool | None = False  # False: not tried yet
        self._params: dict[str, int] = {}
        self.params = params

    @property
    def params(self) -> dict[str, int]:
        """Search-time parameters (``nprobe`` for IVF, ``efSearch`` for HNSW), applied to the index when set."""
        return dict(self._params)

    @params.setter
    def params(self, value: dict[str, int]) -> None:
        self._params = dict(value)
        self._gpu = False  # a GPU copy carries its own nprobe: rebuild it with the new one
        if self.ann is not None and self.ann[0] in self._params:
            key, structure = self.ann
            if key == "nprobe":
                structure.nprobe = int(self._params[key])
            else:
                structure.hnsw.efSearch = int(self._params[key])

    @classmethod
    def new(cls, dim: int, factory: str) -> Partition:
        built = EXACT if needs_training(dim, factory) else factory
        return cls(dim, factory, built, make_index(dim, built), Moments.empty(dim), {})

    @classmethod
    def load(cls, dim: int, factory: str, built: str, params: dict[str, int], index_path: Path, stats_path: Path):
        try:
            index = faiss.read_index(str(index_path))
            moments = Moments.from_bytes(stats_path.read_bytes())
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise StoreError(f"{index_path}: cannot read partition: {exc}") from None
        if index.d != dim:
            raise StoreError(f"{index_path}: partition is {index.d}-d but the store's space is {dim}-d")
        return cls(dim, factory, built, index, moments, params)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def pending_training(self) -> bool:
        return self.built != self.factory

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(vectors, ids)
        self.moments.add(vectors)
        self._gpu = False

    def remove(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Remove ids; False if this index type cannot remove in place (the caller rebuilds the partition).

        Only a flat inner index is removed in place: IDMap2 compacts its id map assuming the inner index
        renumbers like Flat does, which IVF does not (its ids would slide), and HNSW cannot remove at all.
        """
        self.moments.add(vectors, sign=-1)
        self._gpu = False
        if not isinstance(faiss.downcast_index(self.index.index), faiss.IndexFlat):
            return False
        try:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
        except RuntimeError:  # HNSW and some others do not support removal
            return False
        return True

    def rebuild(self, factory: str, blocks: Iterable[tuple[np.ndarray, np.ndarray]], retrain: bool = False) -> None:
        """Rebuild from every (ids, vectors) block; trains ``factory`` if there are enough vectors, else Flat.

        An index of the same type that is already trained keeps its training unless ``retrain``.
        """
        ids_list, vec_list = [], []
        for ids, vectors in blocks:
            ids_list.append(ids)
            vec_list.append(vectors)
        ids = np.concatenate(ids_list) if ids_list else np.empty(0, dtype=np.int64)
        vectors = np.concatenate(vec_list) if vec_list else np.empty((0, self.dim), dtype=np.float32)
        built = factory if len(ids) >= min_train(factory, self.dim) else EXACT
        reuse = built == self.built and built != EXACT and self.index.is_trained and not retrain
        if reuse:  # same trained structure (IVF lists, HNSW parameters): empty a copy and refill it
            inner = faiss.clone_index(self.index.index)
            inner.reset()
            index = faiss.IndexIDMap2(inner)
        else:
            index = make_index(self.dim, built)
        if not index.is_trained:
            sample = vectors
            if len(vectors) > TRAIN_SAMPLE:
                pick = np.random.default_rng(0).choice(len(vectors), TRAIN_SAMPLE, replace=False)
                sample = vectors[np.sort(pick)]
            inner = faiss.downcast_index(index.index)
            on_gpu = gpu.clustering_index(self.dim) if isinstance(inner, faiss.IndexIVF) else None
            if on_gpu is not None:
                inner.clustering_index = on_gpu
            try:
                index.train(sample)
            except RuntimeError as exc:
                raise StoreError(f"index {built!r} cannot be trained on {len(sample)} vectors: {exc}") from None
            if on_gpu is not None:
                inner.clustering_index = None
        if len(ids):
            index.add_with_ids(vectors, ids)
        moments = Moments.empty(self.dim)
        if len(vectors):
            moments.add(vectors)
        keep = self._params if built == self.built else {}
        self.factory, self.built, self.index, self.moments = factory, built, index, moments
        self.ann = ann_structure(index)
        self.params = keep

    def search(self, queries: np.ndarray, k: int, selector: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ids are -1 where fewer than k were found."""
        k = max(1, min(k, self.count))
        if self.count == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        if selector is not None:
            params = search_params(self.index, self._params, selector)
            if params is UNSUPPORTED:
                raise NotImplementedError("this index type cannot filter inside the search")
            return self.index.search(queries, k, params=params)
        if self._gpu is False:
            self._gpu = gpu.GpuSearcher.try_build(self.index, self._params)
        if not self._gpu and len(queries) <= BLAS_MAX_QUERIES and (flat := self._flat_view()) is not None:
            return _matvec_top_k(*flat, queries, k)
        on_gpu = self._gpu and k <= gpu.GPU_MAX_K  # faiss GPU Flat/IVF return at most 2048 per query
        if on_gpu:
            scores, ids = self._gpu.search(queries, k)  # type: ignore[union-attr]
        elif len(queries) <= BLAS_MAX_QUERIES:
            with _one_thread():
                scores, ids = self.index.search(queries, k)
        else:
            scores, ids = self.index.search(queries, k)
        if self.ann is not None and self.ann[0] == "nprobe" and (ids < 0).any():
            scores, ids = self._search_wider(self.ann[1], queries, k)  # the probed lists held fewer than k items
        return scores, ids

    def _flat_view(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Zero-copy views of a Flat partition's vectors ``(n, d)`` and ids ``(n,)``; ``None`` for other types."""
        inner = faiss.downcast_index(self.index.index)
        if not isinstance(inner, faiss.IndexFlat) or inner.metric_type != faiss.METRIC_INNER_PRODUCT:
            return None
        n = int(inner.ntotal)
        vectors = faiss.rev_swig_ptr(inner.get_xb(), n * self.dim).reshape(n, self.dim)
        return vectors, faiss.rev_swig_ptr(self.index.id_map.data(), n)

    def _search_wider(self, ivf: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search again, probing 4x more lists each time, until k hits come back or every list is probed."""
        nprobe, original = ivf.nprobe, ivf.nprobe
        try:
            while True:
                nprobe = min(ivf.nlist, nprobe * 4)
                ivf.nprobe = nprobe
                scores, ids = self.index.search(queries, k)
                if not (ids < 0).any() or nprobe >= ivf.nlist:
                    return scores, ids
        finally:
            ivf.nprobe = original

    def save(self, directory: Path, generation: int, name: str) -> tuple[str, str]:
        """Write the index and its moments for ``generation``; returns their file names."""
        index_name, stats_name = f"{name}.{generation}.faiss", f"{name}.{generation}.moments.safetensors"
        write_atomic(directory / index_name, faiss.serialize_index(self.index).tobytes())
        write_atomic(directory / stats_name, self.moments.to_bytes())
        return index_name, stats_name
