"""faiss GPU support: used when the installed faiss has it and CUDA devices are present.

Partitions are always written in CPU form. On a GPU, k-means training of IVF partitions runs on the GPU
(through the IVF's ``clustering_index``), and unfiltered searches of Flat and IVF partitions run on a GPU
copy of the partition. ``ANYBIND_FAISS_GPU=off`` turns all of this off.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import faiss
import numpy as np

GPU_MAX_K = 2048  # faiss's GPU Flat and IVF searches return at most this many neighbours per query


@functools.lru_cache(maxsize=1)
def gpu_count() -> int:
    if os.environ.get("ANYBIND_FAISS_GPU", "auto").lower() in ("0", "off", "no", "false"):
        return 0
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # pragma: no cover - broken CUDA runtime
        return 0


@functools.lru_cache(maxsize=1)
def resources() -> Any:
    return faiss.StandardGpuResources()


def clustering_index(dim: int) -> Any | None:
    """A GPU flat index for IVF k-means, or None on CPU-only machines."""
    if not gpu_count():
        return None
    try:
        return faiss.index_cpu_to_gpu(resources(), 0, faiss.IndexFlatL2(dim))
    except Exception as exc:  # pragma: no cover - depends on the GPU build
        print(f"anybind: faiss GPU clustering unavailable, training on CPU ({exc})", file=sys.stderr)
        return None


class GpuSearcher:
    """A GPU copy of a partition's inner index plus its id map, for unfiltered searches."""

    def __init__(self, index: Any, id_map: np.ndarray) -> None:
        self.index = index
        self.id_map = id_map

    @classmethod
    def try_build(cls, idmap: Any, params: dict[str, int]) -> GpuSearcher | None:
        if not gpu_count() or idmap.ntotal == 0:
            return None
        inner = faiss.downcast_index(idmap.index)
        if not isinstance(inner, (faiss.IndexFlat, faiss.IndexIVF)):
            return None  # HNSW and composite indexes search on the CPU
        try:
            options = faiss.GpuClonerOptions()
            options.useFloat16 = False
            gpu_index = faiss.index_cpu_to_gpu(resources(), 0, inner, options)
            if "nprobe" in params:
                gpu_index.nprobe = params["nprobe"]
        except Exception as exc:  # pragma: no cover - depends on the GPU build
            print(f"anybind: faiss GPU search unavailable, searching on CPU ({exc})", file=sys.stderr)
            return None
        return cls(gpu_index, faiss.vector_to_array(idmap.id_map).astype(np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, internal = self.index.search(queries, k)
        ids = np.where(internal >= 0, self.id_map[np.clip(internal, 0, None)], -1)
        return scores, ids
