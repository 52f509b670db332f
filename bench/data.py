"""Synthetic vectors that look like real image embeddings, with exact ground truth.

Each vector is ``OFFSET * o + CENTRE * c_k + s_k * noise``, L2-normalised, where ``o`` is one direction shared
by every vector (CLIP embeddings share a large common component, so cosines between unrelated items are
positive), ``c_k`` one of ``CLUSTERS`` random unit centres picked with Zipf (power-law) frequencies, ``s_k`` a
per-cluster spread, and ``noise`` anisotropic Gaussian noise (a random rotation of a power-law spectrum, so the
intrinsic dimension is lower than 512, as in learned embeddings). Unrelated pairs score about 0.4, a query's nearest
neighbour about 0.8: uneven and positive, like CLIP image-image cosines.

Rows are generated in blocks of ``BLOCK`` with a seed per block, so the first 100k rows of the 1M set are the
100k set. Queries come from the same distribution with another seed (never in the base set). Ground truth is
the exact top-10 by inner product, computed block by block (faiss ``knn``), so 1M x 512 never has to fit twice.

Files (cached in the work directory, regenerated when the parameters change):
``base_<n>.npy`` (n, 512) float32, ``queries_<nq>.npy`` and ``truth_<n>_<nq>.npy`` (int64 row numbers).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

DIM = 512
CLUSTERS = 4096
ZIPF = 1.0  # cluster frequency ~ 1 / rank**ZIPF
OFFSET, CENTRE = 0.7, 0.65
SPREAD = (0.4, 0.7)  # per-cluster noise scale, uniform in this range
SPECTRUM = 0.8  # noise variance of the i-th principal direction ~ i**-SPECTRUM
SEED = 20240
BLOCK = 50_000
K = 10


@dataclass(frozen=True)
class DataFiles:
    """Paths of one benchmark data set (all .npy, loadable with ``np.load``)."""

    n: int
    base: Path
    queries: Path
    truth: Path

    def to_dict(self) -> dict:
        return {key: str(value) for key, value in asdict(self).items()}


class Generator:
    """The fixed mixture every base vector and query is drawn from."""

    def __init__(self, dim: int = DIM, clusters: int = CLUSTERS, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        self.offset = _unit(rng.standard_normal(dim))
        self.centres = _unit(rng.standard_normal((clusters, dim)))
        weights = 1.0 / np.arange(1, clusters + 1) ** ZIPF
        self.probs = weights / weights.sum()
        self.spread = rng.uniform(*SPREAD, clusters)
        spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -SPECTRUM
        rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        self.noise_basis = (np.sqrt(spectrum / spectrum.sum())[:, None] * rotation.T).astype(np.float32)

    def draw(self, n: int, seed: int) -> np.ndarray:
        """``n`` unit vectors (float32) from the mixture, reproducible from ``seed``."""
        rng = np.random.default_rng([self.seed, seed])
        labels = rng.choice(len(self.probs), size=n, p=self.probs)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32) @ self.noise_basis
        x = OFFSET * self.offset + CENTRE * self.centres[labels] + self.spread[labels, None] * noise
        return _unit(x).astype(np.float32)

    def base_block(self, block: int) -> np.ndarray:
        return self.draw(BLOCK, seed=block)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_base(path: Path, n: int, generator: Generator) -> None:
    """Write the first ``n`` base rows block by block (never the whole set in memory)."""
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n, DIM))
    for block, start in enumerate(range(0, n, BLOCK)):
        rows = generator.base_block(block)[: n - start]
        out[start : start + len(rows)] = rows
    out.flush()
    del out
    path.with_suffix(".tmp.npy").rename(path)


def iter_rows(path: Path, chunk: int = BLOCK) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) blocks of a 2-d float32 .npy, read with plain reads: no memory map, so the pages of
    the file never count towards the reader's RSS (only the current block does)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        assert not fortran and dtype == np.float32 and len(shape) == 2
        n, dim = shape
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            block = np.empty((rows, dim), np.float32)
            handle.readinto(memoryview(block).cast("B"))
            yield start, block


def npy_rows(path: Path) -> int:
    return int(np.load(path, mmap_mode="r").shape[0])


def exact_top_k(base: Path, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Row numbers of the exact top-k inner products per query, scanning ``base`` block by block."""
    best_d = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.empty((len(queries), 0), np.int64)
    for start, block in iter_rows(base, 200_000):
        d, i = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        best_d = np.concatenate([best_d, d], axis=1)
        best_i = np.concatenate([best_i, i + start], axis=1)
        order = np.argsort(-best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def prepare(workdir: Path, n: int, queries: int) -> DataFiles:
    """Generate (or reuse) the base set of ``n`` vectors, ``queries`` queries and their exact top-10."""
    workdir.mkdir(parents=True, exist_ok=True)
    generator = Generator()
    params = {"dim": DIM, "clusters": CLUSTERS, "zipf": ZIPF, "offset": OFFSET, "centre": CENTRE}
    params |= {"spread": SPREAD, "spectrum": SPECTRUM, "seed": SEED, "block": BLOCK, "format": 1}
    stamp = workdir / "data_params.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != json.loads(json.dumps(params)):
        for old in workdir.glob("*.npy"):
            old.unlink()
        stamp.write_text(json.dumps(params))
    files = DataFiles(
        n=n,
        base=workdir / f"base_{n}.npy",
        queries=workdir / f"queries_{queries}.npy",
        truth=workdir / f"truth_{n}_{queries}.npy",
    )
    if not files.base.exists():
        write_base(files.base, n, generator)
    if not files.queries.exists():
        np.save(files.queries, generator.draw(queries, seed=10**6))  # base blocks use seeds 0, 1, ...
    if not files.truth.exists():
        np.save(files.truth, exact_top_k(files.base, np.load(files.queries)))
    return files


def cosine_profile(files: DataFiles, sample: int = 2000) -> dict[str, float]:
    """How the data looks: mean cosine of random pairs, of each query's 1st and 10th neighbour."""
    rng = np.random.default_rng(0)
    base = np.load(files.base, mmap_mode="r")
    rows = np.sort(rng.choice(len(base), min(sample, len(base)), replace=False))
    x = np.asarray(base[rows])
    pairs = (x[: len(x) // 2] * x[len(x) // 2 : 2 * (len(x) // 2)]).sum(axis=1)
    q, truth = np.load(files.queries), np.load(files.truth)
    first = (q * base[truth[:, 0]]).sum(axis=1)
    tenth = (q * base[truth[:, -1]]).sum(axis=1)
    return {
        "random_pair_cosine_mean": float(pairs.mean()),
        "random_pair_cosine_p5": float(np.percentile(pairs, 5)),
        "random_pair_cosine_p95": float(np.percentile(pairs, 95)),
        "nn1_cosine_mean": float(first.mean()),
        "nn10_cosine_mean": float(tenth.mean()),
    }
