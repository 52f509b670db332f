"""Exact inner-product top-k over store segments with torch, for CUDA machines without faiss-gpu.

One matmul per segment scans a batch of queries on the device in the scanner's dtype (float16 by default) to pick
candidates; they are re-scored in float32 from the CPU vectors, and a per-query certificate proves that no row
left out could be in the top k. Queries are scaled to unit norm on the device (no ranking changes), so a device
score a(x) is within eps = 2 (2u + u^2 + u_out + 2d 2^-24 + 2^-20) max|x| (+ sqrt(d) 2^-24 (1 + max|x|) for
float16 subnormals) of the real q.x / |q|: u is the dtype's unit roundoff (each input rounded once; products of
two halves are exact in float32), u_out that of a half-precision matmul output, 2d 2^-24 float32 accumulation,
2^-20 the query scaling, 2 slack. A row left out has a(x) <= t, the m-th candidate's device score, so its exact
score is at most |q| (t + eps): once the k-th best re-scored candidate is above that, the top k is exact, ties
by id included. m starts at max(2k, k + 64) rows per query and segment (enough when the real k-th and m-th
scores are more than 2 eps apart; eps is about 2e-3 for unit vectors in float16, 2e-2 in bfloat16), grows 4 times
for each query whose certificate fails (near-equal scores, duplicate vectors), and becomes an exact CPU scan
when it reaches half the segment. Vectors must be finite.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import StoreError

if TYPE_CHECKING:
    import torch

Segment = tuple[str, np.ndarray, np.ndarray, "np.ndarray | None"]
CHUNK_BYTES = 256 << 20  # host-to-device copies and CPU re-scoring work in pieces of about this size
SCRATCH_BYTES = 512 << 20  # device memory for one (queries x rows) float32 score block
HALF_MAX_NORM = 2.0**14  # float16 rows above this norm could overflow; such a segment is scanned in float32
DTYPES = ("float16", "bfloat16", "float32")
DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")  # dxg: CUDA under WSL2


@functools.lru_cache(maxsize=1)
def cuda_visible() -> bool:
    """True when torch can use a CUDA device; torch is imported only where an NVIDIA driver is present."""
    if os.environ.get("ANYBIND_TORCH_GPU", "auto").lower() in ("0", "off", "no", "false"):
        return False
    if not any(os.path.exists(path) for path in DRIVER_FILES):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch missing or a broken CUDA runtime
        return False


@dataclass
class _DeviceCopy:
    tensor: torch.Tensor  # (n, d) in the scan dtype (float32 where float16 could overflow)
    max_norm: float
    nbytes: int


class TorchScanner:
    """Exact inner-product top-k over segments on one torch device. Keeps a device copy of each segment it has
    scanned (keyed by segment key; immutable, so never stale), evicting least-recently-used copies beyond
    `budget_bytes` (default: 60% of the device's free memory at creation for cuda; 1 GiB for cpu)."""

    def __init__(self, device: str = "cuda", dtype: torch.dtype | str = "float16", budget_bytes: int | None = None):
        import torch

        name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise StoreError(f"torch scan dtype {name!r} is not supported; use one of {', '.join(DTYPES)}")
        self.device = torch.device(device)
        self.dtype: torch.dtype = getattr(torch, name)
        if budget_bytes is None:
            cuda = self.device.type == "cuda"
            budget_bytes = int(0.6 * torch.cuda.mem_get_info(self.device)[0]) if cuda else 1 << 30
        self.budget_bytes = int(budget_bytes)
        self._copies: OrderedDict[str, _DeviceCopy] = OrderedDict()
        self._lock = threading.Lock()
        self._out_dtype = self.device.type == "cuda"  # torch.mm(..., out_dtype=float32): float32 output on CUDA

    @classmethod
    def create(cls) -> TorchScanner | None:
        """A float16 scanner on the first CUDA device, or None where there is none (or it cannot start)."""
        if not cuda_visible():
            return None
        try:
            return cls()
        except Exception as exc:  # pragma: no cover - depends on the CUDA runtime
            print(f"anybind: torch GPU scan unavailable, searching on CPU ({exc})", file=sys.stderr)
            return None

    @property
    def used_bytes(self) -> int:
        """Device bytes held by cached segment copies."""
        return sum(copy.nbytes for copy in self._copies.values())

    def drop(self, keys: Iterable[str]) -> None:
        """Forget the device copies of these segments (merged away); unknown keys are ignored."""
        with self._lock:
            for key in keys:
                self._copies.pop(key, None)

    def top_k(self, segments: Sequence[Segment], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product over the live rows of all segments, for every query row.

        Returns (scores float32 (nq, k'), ids int64 (nq, k')) with k' = min(k, live rows of all segments), best
        first, equal scores by ascending id. Scores are the inner products summed in float64 on the CPU and
        rounded once to float32, whatever the scan dtype.
        """
        q = np.atleast_2d(np.ascontiguousarray(queries, dtype=np.float32))
        nq, dim = q.shape
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        total = 0
        with self._lock:
            for key, vectors, ids, live in segments:
                if vectors.ndim != 2 or vectors.shape[1] != dim:
                    raise StoreError(
                        f"segment {key!r} holds {vectors.shape[-1]}-d vectors but the queries are {dim}-d; "
                        "search with queries embedded in the store's space"
                    )
                if len(ids) != len(vectors) or (live is not None and len(live) != len(vectors)):
                    raise StoreError(f"segment {key!r}: {len(vectors)} vectors but {len(ids)} ids or live flags")
                count = len(vectors) if live is None else int(np.count_nonzero(live))
                total += count
                if min(k, count) > 0:
                    ids = np.asarray(ids, dtype=np.int64)
                    live = None if live is None else np.asarray(live, dtype=bool)
                    parts.append(self._segment_top(key, vectors, ids, live, q, min(k, count)))
        if not parts:
            return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
        return _best(np.hstack([s for s, _ in parts]), np.hstack([i for _, i in parts]), min(k, total))

    def _segment_top(
        self, key: str, vectors: np.ndarray, ids: np.ndarray, live: np.ndarray | None, q: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Certified top-k of one segment (k <= its live rows): (scores (nq, k), ids (nq, k))."""
        import torch

        n, dim = vectors.shape
        best_s, best_i = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
        pending, margin = np.arange(len(q)), max(2 * k, k + 64)
        if 2 * margin < n:
            copy = self._device_copy(key, vectors)
            dead = None if live is None else torch.from_numpy(np.flatnonzero(~live)).to(self.device)
            norms = np.maximum(np.linalg.norm(q, axis=1).astype(np.float64), 1e-30)
            unit = torch.from_numpy((q / norms[:, None]).astype(np.float32)).to(self.device, copy.tensor.dtype)
        while pending.size and 2 * margin < n:
            step = max(1, min(SCRATCH_BYTES // (4 * n), CHUNK_BYTES // (8 * margin * dim)))
            failed = []
            for start in range(0, pending.size, step):
                rows_q = pending[start : start + step]
                scores, half_out = self._scores(unit[torch.from_numpy(rows_q).to(self.device)], copy.tensor)
                if dead is not None and dead.numel():
                    scores.index_fill_(1, dead, -math.inf)
                top = torch.topk(scores, margin, dim=1, sorted=False)
                rows = top.indices.cpu().numpy()
                floor = top.values.amin(dim=1).cpu().numpy().astype(np.float64)
                gathered = np.asarray(vectors[rows.ravel()], dtype=np.float32).reshape(*rows.shape, dim)
                exact = _dots(gathered, q[rows_q])
                if live is not None:
                    exact[~live[rows]] = -np.inf
                s, i = _best(exact, ids[rows], k)
                eps = _error_bound(copy.tensor.dtype, half_out, dim, copy.max_norm)
                ok = np.isneginf(floor) | (s[:, -1] / norms[rows_q] > floor + eps)
                best_s[rows_q[ok]], best_i[rows_q[ok]] = s[ok], i[ok]
                failed.append(rows_q[~ok])
            pending, margin = np.concatenate(failed), 4 * margin
        for start in range(0, pending.size, 64):  # small segments, and queries whose certificate failed
            rows_q = pending[start : start + 64]
            best_s[rows_q], best_i[rows_q] = _exact_scan(vectors, ids, live, q[rows_q], k)
        return best_s, best_i

    def _scores(self, unit: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(queries, rows) float32 device scores, and whether they passed through a half-precision output."""
        import torch

        if self._out_dtype and x.dtype != torch.float32:
            try:
                return torch.mm(unit, x.T, out_dtype=torch.float32), False
            except (TypeError, RuntimeError, NotImplementedError):
                self._out_dtype = False
        return torch.mm(unit, x.T).float(), x.dtype != torch.float32

    def _device_copy(self, key: str, vectors: np.ndarray) -> _DeviceCopy:
        copy = self._copies.get(key)
        if copy is not None:
            self._copies.move_to_end(key)
            return copy
        self._evict(vectors.shape[0] * vectors.shape[1] * self.dtype.itemsize)
        copy = self._upload(vectors, self.dtype)
        if copy.nbytes <= self.budget_bytes:  # a segment larger than the whole budget is scanned, not kept
            self._evict(copy.nbytes)
            self._copies[key] = copy
        return copy

    def _evict(self, room: int) -> None:
        while self._copies and self.used_bytes + room > self.budget_bytes:
            self._copies.popitem(last=False)

    def _upload(self, vectors: np.ndarray, dtype: torch.dtype) -> _DeviceCopy:
        """Copy a (memory-mapped) segment to the device in pieces of CHUNK_BYTES, never whole on the host."""
        import torch

        n, dim = vectors.shape
        out = torch.empty((n, dim), dtype=dtype, device=self.device)
        max_norm, step = 0.0, max(1, CHUNK_BYTES // (4 * dim))
        for start in range(0, n, step):
            block = np.ascontiguousarray(vectors[start : start + step], dtype=np.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a read-only memory map: the tensor is only read
                chunk = torch.from_numpy(block).to(self.device)
            norm = float(torch.linalg.vector_norm(chunk, dim=1).max())
            if dtype == torch.float16 and norm > HALF_MAX_NORM:
                return self._upload(vectors, torch.float32)
            max_norm = max(max_norm, norm)
            out[start : start + step] = chunk
        return _DeviceCopy(out, max_norm, out.numel() * out.element_size())


def _error_bound(dtype: torch.dtype, half_out: bool, dim: int, max_norm: float) -> float:
    """eps of the module docstring: how far a device score of a unit query can be from the real one."""
    import torch

    name = str(dtype).removeprefix("torch.")
    u = {"float16": 2.0**-11, "bfloat16": 2.0**-8}.get(name)
    if u is None:  # float32 rows: exact products, unless torch may run the matmul in TF32 or bfloat16 passes
        reduced = torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32
        u = 2.0**-8 if reduced else 2.0**-24
    rel = 2 * u + u * u + (u if half_out else 0.0) + 2 * dim * 2.0**-24 + 2.0**-20
    subnormal = math.sqrt(dim) * 2.0**-24 * (1 + max_norm) if name == "float16" else 0.0
    return 2 * rel * max_norm + subnormal


def _dots(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(c, m) float32 inner products of rows (c, m, d) or (m, d) with queries (c, d): exact float64 products
    summed along d by one kernel for every row, rounded once (duplicate rows score the same)."""
    rows = np.broadcast_to(rows, (len(q), *rows.shape[-2:]))
    summed: np.ndarray = np.einsum("cmd,cd->cm", rows, q, dtype=np.float64)
    return summed.astype(np.float32)


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row of (c, w) scores and ids: highest score first, equal scores by ascending id."""
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _exact_scan(
    vectors: np.ndarray, ids: np.ndarray, live: np.ndarray | None, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of every live row for a few queries, reading the segment in pieces of CHUNK_BYTES."""
    best_s, best_i = np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    step = max(1, CHUNK_BYTES // (8 * vectors.shape[1] * len(q)))
    for start in range(0, len(vectors), step):
        scores = _dots(np.asarray(vectors[start : start + step], dtype=np.float32), q)
        if live is not None:
            scores[:, ~live[start : start + step]] = -np.inf
        block_ids = np.broadcast_to(ids[start : start + step], scores.shape)
        best_s, best_i = _best(np.hstack([best_s, scores]), np.hstack([best_i, block_ids]), k)
    return best_s, best_i
