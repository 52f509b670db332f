"""The torch exact scan gives what a numpy brute force gives: same ids in the same order (ties by id), same scores."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import anybind
from anybind.errors import StoreError
from anybind.store import torch_scan
from anybind.store.torch_scan import TorchScanner, cuda_visible

torch = pytest.importorskip("torch")


def cpu_matmul_works(dtype: str) -> bool:
    try:
        x = torch.ones((2, 2), dtype=getattr(torch, dtype))
        return bool((x @ x).float().sum() == 8)
    except (RuntimeError, NotImplementedError):
        return False


DTYPES = [
    pytest.param(name, marks=pytest.mark.skipif(not cpu_matmul_works(name), reason=f"no {name} matmul on this CPU"))
    for name in ("float32", "bfloat16", "float16")
]


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def brute_force(segments, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every live row scored in float64 (rounded to float32), ordered by (-score, id) with np.lexsort."""
    rows = [(v, i, np.ones(len(v), bool) if m is None else m) for _, v, i, m in segments]
    vectors = np.vstack([v[m] for v, _, m in rows] + [np.zeros((0, queries.shape[1]), np.float32)])
    ids = np.concatenate([i[m] for _, i, m in rows] + [np.zeros(0, np.int64)])
    scores = (queries.astype(np.float64) @ vectors.astype(np.float64).T).astype(np.float32)
    order = np.stack([np.lexsort((ids, -row))[:k] for row in scores]).reshape(len(queries), -1)
    return np.take_along_axis(scores, order, axis=1), ids[order]


def assert_same(found, expected) -> None:
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_allclose(found[0], expected[0], rtol=1e-6, atol=1e-6)
    assert found[0].dtype == np.float32 and found[1].dtype == np.int64


def make_segments(rng: np.random.Generator, sizes, dim: int = 32, duplicates: int = 0):
    """Segments with disjoint shuffled-then-sorted ids, random live masks (some None), shared duplicate rows."""
    shared = unit(rng.standard_normal((1, dim)))
    ids = np.sort(rng.choice(10 * sum(sizes) + 10, sum(sizes), replace=False)).astype(np.int64)
    rng.shuffle(ids)
    segments, offset = [], 0
    for n_seg, n in enumerate(sizes):
        vectors = unit(rng.standard_normal((n, dim)))
        vectors[: min(duplicates, n)] = shared
        live = None if n_seg % 2 else rng.random(n) > 0.3
        segments.append((f"seg-{n_seg}", vectors, np.sort(ids[offset : offset + n]), live))
        offset += n
    return segments, shared


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 10, 150, 5000])
def test_matches_brute_force_over_segments(dtype, k):
    rng = np.random.default_rng(k)
    segments, shared = make_segments(rng, [7, 400, 1200, 300, 2500], duplicates=12)
    queries = np.vstack([rng.standard_normal((6, 32)).astype(np.float32), 2 * shared])
    scanner = TorchScanner(device="cpu", dtype=dtype)
    expected = brute_force(segments, queries, k)
    assert expected[1].shape[1] == min(k, sum(len(v) if m is None else int(m.sum()) for _, v, _, m in segments))
    assert_same(scanner.top_k(segments, queries, k), expected)
    assert_same(scanner.top_k(segments, queries[:1], k), brute_force(segments, queries[:1], k))  # cached copies


@pytest.mark.parametrize("dtype", DTYPES)
def test_tie_groups_wider_than_the_margin_order_by_id(dtype):
    """600 copies of one vector in two segments: the certificate fails, the margin widens, ids stay in order."""
    rng = np.random.default_rng(1)
    segments, shared = make_segments(rng, [1000, 800], duplicates=300)
    for k in (5, 64, 400):
        found = TorchScanner(device="cpu", dtype=dtype).top_k(segments, shared, k)
        assert_same(found, brute_force(segments, shared, k))
        live_copies = sum(int(m[:300].sum()) if m is not None else 300 for *_, m in segments)
        assert np.all(np.diff(found[1][0][: min(k, live_copies)]) > 0)


def test_dead_rows_are_never_returned():
    rng = np.random.default_rng(2)
    vectors = unit(rng.standard_normal((500, 16)))
    ids = np.arange(100, 600, dtype=np.int64)
    live = np.zeros(500, bool)
    live[[3, 250, 499]] = True
    segments = [("a", vectors, ids, live), ("b", vectors[:50], ids[:50] + 1000, np.zeros(50, bool))]
    scores, found = TorchScanner(device="cpu", dtype="float32").top_k(segments, vectors[:4], 100)
    assert found.shape == (4, 3) and set(found.ravel()) == {103, 350, 599}
    assert np.isfinite(scores).all()
    assert_same((scores, found), brute_force(segments, vectors[:4], 100))


def test_empty_inputs_give_empty_arrays():
    scanner = TorchScanner(device="cpu", dtype="float32")
    queries = np.ones((3, 8), np.float32)
    for segments in ([], [("dead", np.ones((4, 8), np.float32), np.arange(4), np.zeros(4, bool))]):
        scores, ids = scanner.top_k(segments, queries, 10)
        assert scores.shape == ids.shape == (3, 0) and scores.dtype == np.float32 and ids.dtype == np.int64


def test_dimension_mismatch_names_both_dims():
    scanner = TorchScanner(device="cpu", dtype="float32")
    segment = ("seg-000042.npy", np.ones((4, 16), np.float32), np.arange(4), None)
    with pytest.raises(StoreError, match=r"seg-000042\.npy.*16-d.*32-d"):
        scanner.top_k([segment], np.ones((1, 32), np.float32), 3)


def test_unknown_dtype_lists_the_choices():
    with pytest.raises(StoreError, match="float16, bfloat16, float32"):
        TorchScanner(device="cpu", dtype="int8")


def test_memory_mapped_segments_copy_in_chunks_and_stay_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_scan, "CHUNK_BYTES", 4096)  # 32 rows of 32 floats per host-to-device copy
    rng = np.random.default_rng(3)
    segments = []
    for n, (key, vectors, ids, live) in enumerate(make_segments(rng, [900, 700])[0]):
        np.save(tmp_path / f"{n}.npy", vectors)
        segments.append((key, np.load(tmp_path / f"{n}.npy", mmap_mode="r"), ids, live))
    scanner = TorchScanner(device="cpu", dtype="float16" if cpu_matmul_works("float16") else "float32")
    queries = rng.standard_normal((5, 32)).astype(np.float32)
    assert_same(scanner.top_k(segments, queries, 20), brute_force(segments, queries, 20))
    assert set(scanner._copies) == {"seg-0", "seg-1"}
    uploads = []
    monkeypatch.setattr(scanner, "_upload", lambda *args: uploads.append(args))
    assert_same(scanner.top_k(segments, queries, 20), brute_force(segments, queries, 20))
    assert not uploads, "a cached segment was copied again"
    scanner.drop(["seg-0", "unknown"])
    assert set(scanner._copies) == {"seg-1"}


def test_tiny_budget_evicts_and_stays_exact():
    rng = np.random.default_rng(4)
    segments, _ = make_segments(rng, [600, 800, 700])
    one_segment = 800 * 32 * 4
    scanner = TorchScanner(device="cpu", dtype="float32", budget_bytes=one_segment)
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    for _ in range(2):
        assert_same(scanner.top_k(segments, queries, 15), brute_force(segments, queries, 15))
        assert scanner.used_bytes <= one_segment and list(scanner._copies) == ["seg-2"]
    nothing = TorchScanner(device="cpu", dtype="float32", budget_bytes=0)
    assert_same(nothing.top_k(segments, queries, 15), brute_force(segments, queries, 15))
    assert not nothing._copies


def test_float16_overflow_scans_in_float32():
    if not cpu_matmul_works("float16"):
        pytest.skip("no float16 matmul on this CPU")
    rng = np.random.default_rng(5)
    vectors = (rng.standard_normal((1000, 16)) * 1e5).astype(np.float32)  # far beyond float16's 65504
    segments = [("big", vectors, np.arange(1000, dtype=np.int64), None)]
    scanner = TorchScanner(device="cpu", dtype="float16")
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    found = scanner.top_k(segments, queries, 10)
    np.testing.assert_array_equal(found[1], brute_force(segments, queries, 10)[1])
    assert scanner._copies["big"].tensor.dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_without_float32_output_matmul_the_half_output_bound_is_used(dtype):
    """torch.mm(..., out_dtype=float32) exists on CUDA only; elsewhere the scanner falls back once and stays exact."""
    rng = np.random.default_rng(7)
    segments, _ = make_segments(rng, [1500])
    scanner = TorchScanner(device="cpu", dtype=dtype)
    scanner._out_dtype = True
    queries = rng.standard_normal((3, 32)).astype(np.float32)
    assert_same(scanner.top_k(segments, queries, 10), brute_force(segments, queries, 10))
    assert scanner._out_dtype is False


@pytest.fixture
def fresh_cuda_visible():
    cuda_visible.cache_clear()
    yield
    cuda_visible.cache_clear()


def test_cuda_visible_is_false_without_driver_files(monkeypatch, fresh_cuda_visible):
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    assert cuda_visible() is False and TorchScanner.create() is None


def test_cuda_visible_can_be_turned_off(monkeypatch, fresh_cuda_visible):
    monkeypatch.setattr(os.path, "exists", lambda path: True)
    monkeypatch.setenv("ANYBIND_TORCH_GPU", "off")
    assert cuda_visible() is False


def test_cuda_visible_does_not_import_torch_without_a_driver():
    code = (
        "import os, sys\n"
        "from anybind.store.torch_scan import cuda_visible\n"
        "assert 'torch' not in sys.modules, 'importing anybind.store.torch_scan imported torch'\n"
        "os.path.exists = lambda path: False\n"
        "assert cuda_visible() is False\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "ANYBIND_TORCH_GPU": "auto"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_cuda_scan_matches_numpy_on_100k_by_512(dtype):
    if not cuda_visible():
        pytest.fail("marked gpu but torch sees no CUDA device")
    rng = np.random.default_rng(6)
    vectors = unit(rng.standard_normal((100_000, 512)))
    vectors[:50] = vectors[50]  # a tie group
    ids = np.arange(100_000, dtype=np.int64) * 3
    live = rng.random(100_000) > 0.1
    segments = [("big", vectors[:80_000], ids[:80_000], live[:80_000]), ("small", vectors[80_000:], ids[80_000:], None)]
    queries = np.vstack([unit(rng.standard_normal((63, 512))), vectors[50:51]])
    scanner = TorchScanner(device="cuda", dtype=dtype)
    expected = brute_force(segments, queries, 100)  # the top k of (-score, id) order is a prefix of the top 100
    for k in (1, 10, 100):
        assert_same(scanner.top_k(segments, queries, k), (expected[0][:, :k], expected[1][:, :k]))
    assert set(scanner._copies) == {"big", "small"}
    assert_same(scanner.top_k(segments, queries[:2], 10), (expected[0][:2, :10], expected[1][:2, :10]))


def _store_with_segments(tmp_path, space, rng) -> tuple[anybind.Store, np.ndarray, np.ndarray]:
    """A Flat store of 5 commits (5 segments) with every 7th item removed: (store, live ids, their unit vectors)."""
    store = anybind.Store.open(tmp_path / "db", space=space)
    vectors = unit(rng.standard_normal((5_000, space.dim)))
    ids = np.concatenate([store.add_vectors("image", chunk) for chunk in np.split(vectors, 5)])
    store.remove(ids[::7].tolist())
    keep = np.ones(len(ids), bool)
    keep[::7] = False
    return store, ids[keep], vectors[keep]


def _expected(ids: np.ndarray, vectors: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    scores = vectors.astype(np.float64) @ (q / np.linalg.norm(q)).astype(np.float64)
    return ids[np.lexsort((ids, -scores))[:k]].tolist()


def test_store_search_through_a_scanner_equals_brute_force(tmp_path, clip_space, monkeypatch):
    """The store hands its exact segments to the scanner (here a CPU TorchScanner standing in for CUDA)."""
    monkeypatch.setattr(TorchScanner, "create", classmethod(lambda cls: cls(device="cpu", dtype="float32")))
    rng = np.random.default_rng(11)
    store, ids, vectors = _store_with_segments(tmp_path, clip_space, rng)
    store = anybind.Store.open(tmp_path / "db", device="auto")
    assert len(store.partition("image").segments) == 5
    for q in rng.standard_normal((20, clip_space.dim)).astype(np.float32):
        assert store.search(vector=q, to="image", k=10).ids() == _expected(ids, vectors, q, 10)
    assert isinstance(store._scanner, TorchScanner) and len(store._scanner._copies) == 5


@pytest.mark.gpu
def test_store_search_on_cuda_equals_brute_force(tmp_path, clip_space):
    if not cuda_visible():
        pytest.fail("marked gpu but torch sees no CUDA device")
    rng = np.random.default_rng(12)
    _, ids, vectors = _store_with_segments(tmp_path, clip_space, rng)
    store = anybind.Store.open(tmp_path / "db")
    for q in rng.standard_normal((50, clip_space.dim)).astype(np.float32):
        assert store.search(vector=q, to="image", k=10).ids() == _expected(ids, vectors, q, 10)
    assert isinstance(store._scanner, TorchScanner) and store._scanner.device.type == "cuda"
