"""Score statistics of a partition: count, sum and sum of outer products of its vectors.

For a query ``q`` they give the exact mean and standard deviation of ``q . x`` over every item ``x`` of the
partition (``q . mean`` and ``sqrt(q^T Cov q)``), which search turns into z-scores when it fuses partitions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from anybind.errors import StoreError

from .files import RECOVER_HINT
from .manifest import FileRecord
from .segment import verified


def gram(x: np.ndarray) -> np.ndarray:
    """``x.T @ x`` in float32. Through torch's BLAS when torch is already imported (anybind's spaces import it):
    measured 3 ms for 1024 x 512 on the 2-core VM where NumPy's bundled BLAS took 14-25 ms."""
    torch = sys.modules.get("torch")
    if torch is not None and len(x) >= 64:
        t = torch.from_numpy(x if x.flags.writeable else x.copy())  # (torch warns about read-only memory maps)
        return (t.T @ t).numpy()
    return x.T @ x


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
        """Add (``sign=-1``: take away) the rows of ``vectors``. The outer products of one batch are summed in
        float32 by BLAS (about 2x faster than float64; relative error near 1e-6 for a batch of unit vectors) and
        accumulated in float64 across batches."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        self.count += sign * len(x)
        self.total += sign * x.sum(axis=0, dtype=np.float64)
        self.outer += sign * gram(x).astype(np.float64)
        self._derived = None

    def copy(self) -> Moments:
        return Moments(self.count, self.total.copy(), self.outer.copy())

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


def read_moments(folder: Path, record: FileRecord, dim: int, count: int) -> Moments:
    """A partition's moments file, checked against the manifest (size, CRC-32, item count, dimension); a
    :class:`StoreError` naming the file when it is damaged or does not match."""
    path = verified(folder / record.name, record)
    try:
        moments = Moments.from_bytes(path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types
        raise StoreError(f"{path}: cannot read the partition's moments ({exc}); {RECOVER_HINT}") from None
    if moments.count != count or moments.total.shape != (dim,):
        raise StoreError(f"{path}: moments of {moments.count} items, the manifest counts {count}")
    return moments
