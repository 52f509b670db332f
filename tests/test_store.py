"""Behaviour of :class:`anybind.Store`: exact and approximate search, filters, fusion, writes, boundaries, readers.

Every expectation is checked against an independent computation (numpy over the stored or freshly embedded
vectors, the SQLite rows, the files on disk).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import make_image

import anybind
from anybind.store import partition as store_partition
from anybind.store import store as store_module
from anybind.store import tuning as store_tuning
from anybind.store.manifest import now, read_manifest
from anybind.store.metadata import MetaDB, NewItem
from anybind.testing import SENTENCES, build_tiny_clip

DIM = 16  # the tiny CLIP's dimension


# -- helpers ---------------------------------------------------------------------------------------------


def unit_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """``n`` random unit vectors (float32), different per seed."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def open_store(path: Path, space: anybind.Space | None, index: str | None = None) -> anybind.Store:
    """Open (or create, with ``index``, default Flat) the store at ``path`` on the CPU."""
    return anybind.Store.open(path, space=space, index=index, device="cpu")


def sql(store: anybind.Store, query: str, params: tuple = ()) -> list[tuple]:
    """Rows of a query on the store's SQLite file, through a connection of the test's own."""
    conn = sqlite3.connect(store.path / "items.sqlite")
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def stored(store: anybind.Store, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every visible item of a partition: ids from SQLite, vectors read straight from the
    segment files the manifest names (numpy, not the store's readers), in id order."""
    g = store.generation
    ids = [
        r[0]
        for r in sql(
            store,
            "SELECT id FROM items WHERE modality = ? AND added_gen <= ? AND "
            "(removed_gen IS NULL OR removed_gen > ?) ORDER BY id",
            (modality, g, g),
        )
    ]
    assert ids, f"no {modality} items stored"
    found: dict[int, np.ndarray] = {}
    folder = store.path / "segments" / modality
    for seg in read_manifest(store.path).partitions[modality].segments:
        seg_ids = np.load(folder / seg.ids.name)
        vectors = np.load(folder / seg.vectors.name)
        dead = set(np.load(folder / seg.deleted.name).tolist()) if seg.deleted else set()
        found.update((int(i), v) for row, (i, v) in enumerate(zip(seg_ids, vectors, strict=True)) if row not in dead)
    assert sorted(found) == ids
    return np.asarray(ids), np.stack([found[i] for i in ids])


def exact_ranking(ids: np.ndarray, vectors: np.ndarray, q: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Brute-force top-k (ids, scores) by inner product."""
    scores = vectors @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return np.asarray(ids)[order].tolist(), scores[order]


def raw_rows(store: anybind.Store) -> dict[int, tuple]:
    """Every row of the items table, visible or not: id -> (uri, added_gen, removed_gen)."""
    return {r[0]: r[1:] for r in sql(store, "SELECT id, uri, added_gen, removed_gen FROM items")}


def partition_info(store: anybind.Store, modality: str = "image") -> dict:
    return store.info()["partitions"][modality]


def recall_at_k(store: anybind.Store, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int = 10):
    """Recall@k of ``store.search(vector=q)`` against numpy exact search over ``vectors``."""
    found = 0
    for q in queries:
        want, _ = exact_ranking(ids, vectors, q, k)
        got = store.search(vector=q, to="image", k=k).ids()
        assert len(got) == k
        found += len(set(got) & set(want))
    return found / (k * len(queries))


@pytest.fixture
def store(tmp_path: Path, clip_space: anybind.Space):
    """An empty exact (Flat) store on the tiny CLIP space."""
    assert clip_space.dim == DIM
    s = open_store(tmp_path / "db", clip_space)
    yield s
    s.close()


@pytest.fixture
def pictures(tmp_path: Path) -> list[Path]:
    """Twelve random PNG pictures (real paths)."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    return [make_image(folder / f"pic{i:02d}.png", seed=100 + i).resolve() for i in range(12)]


@pytest.fixture
def picture_ids(store: anybind.Store, pictures: list[Path]) -> dict[Path, int]:
    """The pictures indexed into ``store`` with add_files: path -> id."""
    report = store.add_files(pictures)
    assert report.errors == []
    assert sorted(report.added) == sorted(str(p) for p in pictures)
    assert all(len(ids) == 1 for ids in report.added.values())
    return {Path(path): ids[0] for path, ids in report.added.items()}


@pytest.fixture
def mixed_store(store: anybind.Store, pictures: list[Path]) -> anybind.Store:
    """``store`` with eight pictures (image partition) and the tokenizer's sentences (text partition)."""
    assert not store.add_files(pictures[:8]).errors
    assert not store.add("text", SENTENCES).errors
    return store


# -- 1. exactness ----------------------------------------------------------------------------------------


def test_every_indexed_image_finds_itself_first(store, pictures, picture_ids):
    for path in pictures:
        hits = store.search(image=path, to="image", k=1)
        assert len(hits) == 1
        assert hits[0].uri == str(path)
        assert hits[0].id == picture_ids[path]
        assert hits[0].modality == "image"
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_text_to_image_ranking_equals_brute_force(store, clip_space, pictures, picture_ids):
    vectors = clip_space.embed("image", pictures)
    ids = np.array([picture_ids[p] for p in pictures])
    for sentence in SENTENCES[:3]:
        q = clip_space.embed("text", [sentence])[0]
        want_ids, want_scores = exact_ranking(ids, vectors, q, len(pictures))
        hits = store.search(text=sentence, to="image", k=len(pictures))
        assert hits.ids() == want_ids
        np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-5)
        stats = hits.partitions["image"]
        assert (stats.count, stats.index, stats.exact) == (12, "Flat", True)
    # k beyond the partition's size returns every item once
    assert sorted(store.search(text=SENTENCES[0], to="image", k=100).ids()) == sorted(ids.tolist())


# -- 2. recall of approximate indexes --------------------------------------------------------------------


def check_tuned_recall(tmp_path, space, factory: str, n: int, optimize_index: str | None, param: str) -> None:
    """Build ``factory`` over ``n`` random vectors, optimize to 0.95, and measure recall@10 with fresh queries."""
    vectors = unit_vectors(n, seed=1)
    store = open_store(tmp_path / "db", space, index=factory)
    ids = np.asarray(store.add_vectors("image", vectors))
    report = store.optimize(index=optimize_index, target_recall=0.95)
    assert report["image"]["action"] == ("rebuilt" if optimize_index else "tuned")
    info = partition_info(store)
    assert info["count"] == n and info["pending_training"] is False
    assert info["index"] != "Flat" and param in info["params"]
    queries = unit_vectors(100, seed=2)  # not stored vectors
    assert recall_at_k(store, ids, vectors, queries) >= 0.95
    checked = store.check_recall()["image"]
    assert checked["recall"] >= 0.95 and checked["index"] == info["index"] and checked["params"] == info["params"]
    store.close()


@pytest.mark.parametrize(("factory", "param"), [("IVF32,Flat", "nprobe"), ("HNSW32", "efSearch")])
def test_tuned_ann_reaches_target_recall_small(tmp_path, clip_space, factory, param):
    check_tuned_recall(tmp_path, clip_space, factory, 3000, factory, param)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factory", "optimize_index", "param"), [("IVF128,Flat", None, "nprobe"), ("HNSW32", "HNSW32", "efSearch")]
)
def test_tuned_ann_reaches_target_recall_20k(tmp_path, clip_space, factory, optimize_index, param):
    check_tuned_recall(tmp_path, clip_space, factory, 20_000, optimize_index, param)


def test_untuned_ivf_is_measurably_approximate(tmp_path, clip_space):
    """The recall check can fail: IVF with the default nprobe=1 misses neighbours, and check_recall says so."""
    vectors = unit_vectors(3000, seed=1)
    store = open_store(tmp_path / "db", clip_space, index="IVF32,Flat")
    ids = np.asarray(store.add_vectors("image", vectors))
    assert recall_at_k(store, ids, vectors, unit_vectors(50, seed=2)) < 0.9
    assert store.check_recall()["image"]["recall"] < 0.9


def test_optimize_keeps_the_requested_ann_index(tmp_path, clip_space, monkeypatch):
    monkeypatch.setattr(store_tuning, "OPTIMIZE_MIN", 1000)  # the threshold is not what is tested here
    store = open_store(tmp_path / "db", clip_space, index="HNSW32")
    store.add_vectors("image", unit_vectors(1500, seed=1))
    store.optimize(target_recall=0.95)
    info = partition_info(store)
    assert info["index"] == "HNSW32" and "efSearch" in info["params"]


def test_reader_picks_up_tuned_search_params(tmp_path, clip_space, monkeypatch):
    vectors = unit_vectors(1300, seed=1)
    writer = open_store(tmp_path / "db", clip_space, index="IVF32,Flat")
    writer.add_vectors("image", vectors)
    reader = open_store(tmp_path / "db", None)
    tune = store_tuning.tune

    def reader_looks_mid_optimize(*args, **kwargs):
        reader.search(vector=vectors[0], to="image", k=1)  # a reader searching while optimize runs
        return tune(*args, **kwargs)

    monkeypatch.setattr(store_tuning, "tune", reader_looks_mid_optimize)
    report = writer.optimize(index="IVF32,Flat", target_recall=0.95)
    tuned = report["image"]["params"]
    assert tuned.get("nprobe", 1) > 1
    reader.search(vector=vectors[0], to="image", k=1)
    assert reader.manifest.partitions["image"].params == tuned
    assert reader.partition("image").record.params == tuned
    assert all(seg.params == tuned for seg in reader.partition("image").segments)


# -- 3. deferred training --------------------------------------------------------------------------------


def test_ivf_stays_flat_until_it_can_be_trained(tmp_path, clip_space):
    need = 39 * 64
    vectors = unit_vectors(need, seed=3)
    store = open_store(tmp_path / "db", clip_space, index="IVF64,Flat")
    store.add_vectors("image", vectors[:100])
    info = partition_info(store)
    assert (info["index"], info["requested_index"], info["pending_training"]) == ("Flat", "IVF64,Flat", True)
    store.add_vectors("image", vectors[100 : need - 1])
    info = partition_info(store)
    assert (info["index"], info["count"], info["pending_training"]) == ("Flat", need - 1, True)
    store.add_vectors("image", vectors[need - 1 :])
    info = partition_info(store)
    assert (info["index"], info["count"], info["pending_training"]) == ("IVF64,Flat", need, False)
    # the 2,496 rows were merged into one sealed segment whose index file is an IVF; it survives reopening
    (segment,) = store.manifest.partitions["image"].segments
    assert segment.rows == need and segment.built == "IVF64,Flat"
    on_disk = faiss.read_index(str(store.path / "segments" / "image" / segment.index.name))
    assert isinstance(faiss.downcast_index(faiss.downcast_index(on_disk).index), faiss.IndexIVFFlat)
    store.close()
    store = open_store(tmp_path / "db", None)
    assert partition_info(store)["index"] == "IVF64,Flat"
    # searches stay correct: stored vectors find themselves, filtered searches are exact
    ids, kept = stored(store, "image")
    for row in range(0, need, 97):
        hit = store.search(vector=kept[row], to="image", k=1)[0]
        assert hit.id == ids[row] and hit.score == pytest.approx(1.0, abs=1e-5)
    assert store.search(vector=kept[0], to="image", k=5).partitions["image"].index == "IVF64,Flat"


# -- 4. metadata filters ---------------------------------------------------------------------------------

FILTER_N = 1300  # enough to train IVF32
X_ROWS = np.sort(np.random.default_rng(7).choice(FILTER_N, 30, replace=False))


@pytest.fixture(scope="module", params=["Flat", "HNSW32", "IVF32,Flat"])
def filter_store(request, tmp_path_factory, clip_space):
    """A store of FILTER_N vectors: 30 in album x, the rest in album y; ``n`` is the row, ``half`` is n / 2."""
    vectors = unit_vectors(FILTER_N, seed=11)
    albums = np.where(np.isin(np.arange(FILTER_N), X_ROWS), "x", "y")
    metadata = [{"album": str(a), "n": i, "half": i / 2} for i, a in enumerate(albums)]
    store = open_store(tmp_path_factory.mktemp("filters") / "db", clip_space, index=request.param)
    ids = np.asarray(store.add_vectors("image", vectors, metadata=metadata))
    assert partition_info(store)["index"] == request.param
    yield store, ids, vectors
    store.close()


@pytest.fixture(params=["exact-filter", "ann-filter"])
def filter_path(request, monkeypatch):
    """Run filtered searches through the exact path, or force the ANN + IDSelector path (with its fallback)."""
    if request.param == "ann-filter":
        monkeypatch.setattr(store_partition, "EXACT_FILTER_MAX", 0)
    return request.param


def test_filter_returns_exactly_k_items_of_the_album(filter_store, filter_path):
    store, ids, vectors = filter_store
    x_ids = set(ids[X_ROWS].tolist())
    for seed in range(5):
        q = unit_vectors(1, seed=100 + seed)[0]
        hits = store.search(vector=q, to="image", k=10, where={"album": "x"})
        assert len(hits) == 10
        assert set(hits.ids()) <= x_ids
        assert all(h.metadata["album"] == "x" for h in hits)
        if hits.partitions["image"].exact:
            want, scores = exact_ranking(ids[X_ROWS], vectors[X_ROWS], q, 10)
            assert hits.ids() == want
            np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)


def test_filter_with_fewer_matches_than_k_returns_all_of_them(filter_store, filter_path):
    store, ids, vectors = filter_store
    q = unit_vectors(1, seed=42)[0]
    hits = store.search(vector=q, to="image", k=50, where={"album": "x"})
    want, scores = exact_ranking(ids[X_ROWS], vectors[X_ROWS], q, 50)
    assert len(want) == 30
    assert hits.ids() == want
    np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)
    assert hits.partitions["image"].exact


def test_filter_list_means_any_of_and_numbers_match(filter_store, filter_path):
    store, ids, _ = filter_store
    q = unit_vectors(1, seed=5)[0]
    assert sorted(store.search(vector=q, k=10, where={"n": [5, 7, 10**9]}).ids()) == sorted([ids[5], ids[7]])
    assert store.search(vector=q, k=10, where={"half": 2.5}).ids() == [ids[5]]
    assert store.search(vector=q, k=10, where={"n": "5"}).ids() == []  # a string is not the number 5
    y_row = next(row for row in range(FILTER_N) if row not in X_ROWS)
    both = store.search(vector=q, k=10, where={"album": "x", "n": [int(X_ROWS[0]), y_row]})  # keys are ANDed
    assert both.ids() == [ids[X_ROWS[0]]]
    assert len(store.search(vector=q, k=10, where={"album": ["x", "y"]})) == 10


def test_filter_on_a_key_nobody_has_returns_nothing(filter_store, filter_path):
    store, *_ = filter_store
    hits = store.search(vector=unit_vectors(1, seed=6)[0], to="image", k=10, where={"colour": "red"})
    assert len(hits) == 0
    assert hits.partitions["image"].count == FILTER_N
    assert len(store.search(vector=unit_vectors(1, seed=6)[0], k=10, where={"album": []})) == 0


def test_filter_ignores_removed_items(store):
    ids = store.add_vectors("image", unit_vectors(6, seed=1), metadata={"album": "x"})
    store.remove(ids[:2])
    hits = store.search(vector=unit_vectors(1, seed=2)[0], k=10, where={"album": "x"})
    assert sorted(hits.ids()) == ids[2:]


def test_filter_with_an_unbindable_value_is_an_anybind_error(store):
    store.add_vectors("image", unit_vectors(2, seed=1), metadata={"album": "x"})
    with pytest.raises(anybind.AnybindError, match="album"):
        store.search(vector=unit_vectors(1, seed=2)[0], k=5, where={"album": {"name": "x"}})


# -- 5. fusion and calibration ---------------------------------------------------------------------------


def check_moments(store: anybind.Store, q: np.ndarray, result: anybind.SearchResult) -> None:
    for modality, stats in result.partitions.items():
        ids, vectors = stored(store, modality)
        scores = vectors @ q
        assert stats.count == len(ids)
        assert stats.mean == pytest.approx(float(scores.mean()), abs=1e-5)
        assert stats.std == pytest.approx(float(scores.std()), abs=1e-5)


def test_fused_hits_carry_raw_and_calibrated_scores(mixed_store, clip_space):
    store = mixed_store
    q = clip_space.embed("text", ["a red car"])[0]
    hits = store.search(text="a red car", k=100)
    assert set(hits.partitions) == {"image", "text"}
    assert {h.modality for h in hits} == {"image", "text"}
    assert len(hits) == 8 + len(SENTENCES)
    check_moments(store, q, hits)
    vectors = {}
    for modality in ("image", "text"):
        ids, kept = stored(store, modality)
        vectors.update(zip(ids.tolist(), kept, strict=True))
    for hit in hits:
        stats = hits.partitions[hit.modality]
        assert hit.score == pytest.approx(float(vectors[hit.id] @ q), abs=1e-5)
        assert hit.calibrated == pytest.approx((hit.score - stats.mean) / stats.std, rel=1e-5, abs=1e-6)
    calibrated = [h.calibrated for h in hits]
    assert calibrated == sorted(calibrated, reverse=True)
    raw = [h.score for h in hits]
    assert raw != sorted(raw, reverse=True)  # the modality gap: raw order would put every text first
    assert next(h for h in hits if h.modality == "text").text == "a red car on the road"


def test_calibration_moments_follow_removals(mixed_store, clip_space):
    store = mixed_store
    image_ids, _ = stored(store, "image")
    text_ids, _ = stored(store, "text")
    store.remove([int(image_ids[0]), int(image_ids[3]), int(text_ids[1])])
    q = clip_space.embed("text", ["a violin"])[0]
    hits = store.search(text="a violin", k=5)
    assert hits.partitions["image"].count == 6 and hits.partitions["text"].count == len(SENTENCES) - 1
    check_moments(store, q, hits)


# -- 6. composed queries ---------------------------------------------------------------------------------


def test_composed_query_is_the_normalised_weighted_sum(mixed_store, clip_space, pictures):
    store, picture, sentence = mixed_store, pictures[2], "a cat sitting on a mat"
    weights = {"image": 0.7, "text": 0.3}
    e_img = clip_space.embed("image", [picture])[0].astype(np.float64)
    e_txt = clip_space.embed("text", [sentence])[0].astype(np.float64)
    q = 0.7 * e_img + 0.3 * e_txt
    q /= np.linalg.norm(q)
    composed = store.search(image=picture, text=sentence, weights=weights, k=20)
    direct = store.search(vector=q.astype(np.float32), k=20)
    assert composed.ids() == direct.ids() and len(composed) == 14
    np.testing.assert_allclose([h.score for h in composed], [h.score for h in direct], atol=1e-5)
    via_query = store.search(query={"image": picture, "text": sentence}, weights=weights, k=20)
    assert via_query.ids() == composed.ids()
    image_only = store.search(image=picture, k=20)
    assert not np.allclose([h.score for h in image_only], [h.score for h in composed], atol=1e-3)


# -- 7. rerank on a lossy index --------------------------------------------------------------------------


def test_rerank_returns_exact_scores_on_a_lossy_index(tmp_path, clip_space):
    vectors = unit_vectors(1000, seed=21)
    store = open_store(tmp_path / "db", clip_space, index="IVF16,SQ4")
    ids = store.add_vectors("image", vectors)
    assert partition_info(store)["index"] == "IVF16,SQ4"
    exact = dict(zip(ids, vectors, strict=True))
    for seed in range(3):
        q = unit_vectors(1, seed=300 + seed)[0]
        plain = store.search(vector=q, to="image", k=10)
        error = max(abs(h.score - float(exact[h.id] @ q)) for h in plain)
        assert error > 1e-4  # the index really is lossy, so the rerank check below means something
        reranked = store.search(vector=q, to="image", k=10, rerank=100)
        assert len(reranked) == 10
        for hit in reranked:
            assert hit.score == pytest.approx(float(exact[hit.id] @ q), abs=1e-5)
        scores = [h.score for h in reranked]
        assert scores == sorted(scores, reverse=True)


# -- 8. writes: idempotence, replacement, removal, persistence -------------------------------------------


def test_reindexing_unchanged_files_adds_nothing(store, pictures, picture_ids):
    generation, rows = store.generation, raw_rows(store)
    report = store.add_files(pictures)
    assert report.added == {} and report.replaced == [] and report.errors == []
    assert sorted(report.unchanged) == sorted(str(p) for p in pictures)
    assert report.generation == generation == store.generation
    assert raw_rows(store) == rows and len(store) == len(pictures)


def test_a_modified_file_replaces_its_old_item(store, pictures, picture_ids):
    target = pictures[0]
    old_id = picture_ids[target]
    make_image(target, seed=999)  # new content at the same path
    report = store.add_files(pictures)
    assert report.replaced == [str(target)]
    assert list(report.added) == [str(target)]
    new_id = report.added[str(target)][0]
    assert new_id != old_id and new_id > max(picture_ids.values())
    assert sorted(report.unchanged) == sorted(str(p) for p in pictures[1:])
    assert len(store) == len(pictures)
    hits = store.search(image=target, to="image", k=len(pictures))
    assert hits[0].id == new_id and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert old_id not in hits.ids()
    assert old_id not in {r.id: r for r in store.get([old_id, new_id])}
    assert new_id in {r.id: r for r in store.get([old_id, new_id])}
    store.add_vectors("image", unit_vectors(1, seed=0))  # a reader one generation behind may still need it
    assert old_id in raw_rows(store)
    store.add_vectors("image", unit_vectors(1, seed=1))  # purged once two generations have passed
    assert old_id not in raw_rows(store)


def test_remove_reports_removed_and_missing_ids(store):
    ids = store.add_vectors("image", unit_vectors(5, seed=1))
    generation = store.generation
    report = store.remove([ids[1], ids[3], 12345, ids[1]])
    assert (report.removed, report.missing) == ([ids[1], ids[3]], [12345])
    assert report.generation == generation + 1 == store.generation
    assert len(store) == 3 and partition_info(store)["count"] == 3
    assert sorted(store.search(vector=unit_vectors(1, seed=2)[0], k=10).ids()) == [ids[0], ids[2], ids[4]]
    assert set({r.id: r for r in store.get(ids)}) == {ids[0], ids[2], ids[4]}
    again = store.remove([ids[1]])
    assert (again.removed, again.missing, again.generation) == ([], [ids[1]], store.generation)
    assert store.remove([]).generation == store.generation


def test_remove_everything_then_add_again(store):
    ids = store.add_vectors("image", unit_vectors(3, seed=1))
    store.remove(ids)
    assert len(store) == 0 and store.modalities == []
    assert len(store.search(vector=unit_vectors(1, seed=2)[0], to="image", k=5)) == 0
    new = store.add_vectors("image", unit_vectors(2, seed=3))
    assert new == [ids[-1] + 1, ids[-1] + 2]  # ids are never reused
    assert sorted(store.search(vector=unit_vectors(1, seed=2)[0], k=5).ids()) == new


def test_remove_from_hnsw_tombstones_the_rows(tmp_path, clip_space):
    vectors = unit_vectors(1500, seed=31)
    store = open_store(tmp_path / "db", clip_space, index="HNSW32")
    ids = store.add_vectors("image", vectors)
    gone = ids[:50:5]
    report = store.remove(gone)
    assert report.removed == gone and report.missing == []
    info = partition_info(store)
    assert (info["index"], info["count"], info["deleted_rows"]) == ("HNSW32", 1490, 10)
    (segment,) = store.partition("image").segments
    assert segment.index.ntotal == 1500 and sorted(segment.ids[segment.deleted].tolist()) == gone
    for row in range(0, 1500, 7):
        hit = store.search(vector=vectors[row], to="image", k=1)[0]
        if ids[row] in gone:
            assert hit.id != ids[row] and hit.score < 0.999
        else:
            assert hit.id == ids[row] and hit.score == pytest.approx(1.0, abs=1e-5)


def test_remove_from_ivf_keeps_ids_and_vectors_together(tmp_path, clip_space):
    vectors = unit_vectors(1100, seed=41)
    store = open_store(tmp_path / "db", clip_space, index="IVF16,Flat")
    ids = store.add_vectors("image", vectors)
    assert partition_info(store)["index"] == "IVF16,Flat"
    store.remove(ids[:2])
    for row in (2, 100, 350, 698, 699):
        hits = store.search(vector=vectors[row], to="image", k=1)
        assert hits.ids() == [ids[row]], f"row {row}"
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_store_persists_and_reloads_its_space_lazily(tmp_path, clip_space, pictures, monkeypatch):
    first = open_store(tmp_path / "db", clip_space)
    report = first.add_files(pictures[:4], metadata=lambda path: {"name": Path(path).stem})
    before = first.search(text=SENTENCES[1], k=4)
    first.close()

    loads = []
    real_load = store_module.load_space
    monkeypatch.setattr(store_module, "load_space", lambda *a, **kw: loads.append(1) or real_load(*a, **kw))
    again = anybind.Store.open(tmp_path / "db", device="cpu")
    assert loads == []  # nothing loaded until the space is needed
    assert (len(again), again.generation, again.modalities) == (4, report.generation, ["image"])
    after = again.search(text=SENTENCES[1], k=4)
    assert loads == [1]
    assert after.ids() == before.ids()
    np.testing.assert_allclose([h.score for h in after], [h.score for h in before], atol=1e-6)
    assert {h.metadata["name"] for h in after} == {p.stem for p in pictures[:4]}
    assert again.space.fingerprint == clip_space.fingerprint
    assert again.add_vectors("image", unit_vectors(1, seed=1)) == [max(report.ids) + 1]


def test_commit_every_writes_several_generations(tmp_path, tiny_clip_dir, pictures):
    store = anybind.Store.open(tmp_path / "db", space=f"clip:{tiny_clip_dir}", device="cpu", batch_size=2)
    report = store.add_files(pictures[:5], commit_every=2)
    assert report.generation == 3 == store.generation  # 2 + 2 + 1 items
    assert sorted(report.ids) == list(range(1, 6)) and len(store) == 5


def test_commit_every_is_honoured_below_the_encoder_batch_size(store, pictures):
    report = store.add_files(pictures[:5], commit_every=2)
    assert report.generation == 3 == store.generation


def test_files_on_disk_follow_the_generation(store):
    """A commit adds files and never rewrites one; files of the generation before stay for its readers and go
    one commit later."""
    folder = store.path / "segments" / "image"
    store.add_vectors("image", unit_vectors(3, seed=1))
    first = {p.name: p.stat().st_ino for p in folder.iterdir()}
    assert sorted(first) == ["00000001-a.ids.npy", "00000001-a.vectors.npy", "moments.1.safetensors"]
    store.add_vectors("image", unit_vectors(3, seed=2))
    second = {p.name: p.stat().st_ino for p in folder.iterdir()}
    assert set(second) == set(first) | {"00000002-a.ids.npy", "00000002-a.vectors.npy", "moments.2.safetensors"}
    assert all(second[name] == inode for name, inode in first.items())  # nothing rewritten
    store.remove([1])
    third = sorted(p.name for p in folder.iterdir())
    assert "moments.1.safetensors" not in third and "00000001-a.3.deleted.npy" in third
    assert {f"image/{name}" for name in third} == read_manifest(store.path).file_names() | {
        "image/moments.2.safetensors"
    }
    assert sorted(p.name for p in store.path.iterdir()) == [
        "items.sqlite",
        "items.sqlite-shm",
        "items.sqlite-wal",
        "manifest.json",
        "segments",
    ]
    store.close()  # a writer that is done deletes what only the generation before named
    assert {f"image/{p.name}" for p in folder.iterdir()} == read_manifest(store.path).file_names()
    reopened = anybind.Store.open(store.path)
    assert sorted(reopened.search(vector=unit_vectors(1, seed=2)[0], k=10).ids()) == [2, 3, 4, 5, 6]


# -- 9. boundaries and errors ----------------------------------------------------------------------------


def _with(row: int, value: float, n: int = 5) -> np.ndarray:
    vectors = unit_vectors(n, seed=8)
    vectors[row] = value
    return vectors


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (unit_vectors(4, seed=1, dim=DIM - 1), "this store needs (n, 16)"),
        (unit_vectors(4, seed=1, dim=DIM + 1), "this store needs (n, 16)"),
        (_with(2, np.nan), "vector 2 for 'image' has NaN or infinite values"),
        (_with(1, np.inf), "vector 1 for 'image' has NaN or infinite values"),
        (_with(3, 0.0), "vector 3 for 'image' is all zeros"),
        ([["a"] * DIM], "not numeric"),
    ],
    ids=["dim-15", "dim-17", "nan", "inf", "zero", "strings"],
)
def test_add_vectors_rejects_bad_rows_and_adds_nothing(store, vectors, message):
    store.add_vectors("image", unit_vectors(2, seed=0))
    generation, count, rows = store.generation, len(store), raw_rows(store)
    with pytest.raises(anybind.EmbeddingError) as caught:
        store.add_vectors("image", vectors)
    assert message in str(caught.value)
    assert (store.generation, len(store), raw_rows(store)) == (generation, count, rows)


def test_add_vectors_rejects_mismatched_side_lists(store):
    with pytest.raises(anybind.EmbeddingError, match="uris has 1 entries for 2 vectors"):
        store.add_vectors("image", unit_vectors(2, seed=1), uris=["a"])
    with pytest.raises(anybind.MetadataError, match="metadata has 3 entries for 2 items"):
        store.add_vectors("image", unit_vectors(2, seed=1), metadata=[{}, {}, {}])
    with pytest.raises(anybind.UnknownNameError, match="Image"):
        store.add_vectors("Image", unit_vectors(2, seed=1))
    assert (store.generation, len(store)) == (0, 0)


def test_add_vectors_keeps_uris_texts_segments_and_metadata(store):
    ids = store.add_vectors(
        "audio",
        unit_vectors(2, seed=1) * 3.0,  # normalised by the store
        uris=["file:///a.wav", None],
        texts=["hello", None],
        segments=[(1.5, 2.5), None],
        metadata=[{"take": 1}, {"take": 2}],
    )
    hits = {h.id: h for h in store.search(vector=unit_vectors(1, seed=1)[0], to="audio", k=2)}
    assert hits[ids[0]].score == pytest.approx(1.0, abs=1e-5)
    assert (hits[ids[0]].uri, hits[ids[0]].text, hits[ids[0]].segment) == ("file:///a.wav", "hello", (1.5, 2.5))
    assert (hits[ids[1]].uri, hits[ids[1]].segment, hits[ids[1]].metadata) == (None, None, {"take": 2})


@pytest.mark.parametrize(
    "metadata",
    [{"when": object()}, {"tags": {"a", "b"}}, {"score": float("nan")}, ["not a dict"]],
    ids=["object", "set", "nan", "not-a-dict"],
)
def test_metadata_that_is_not_json_is_refused(store, metadata):
    with pytest.raises(anybind.MetadataError, match="metadata for item 0"):
        store.add_vectors("image", unit_vectors(1, seed=1), metadata=metadata)
    assert (store.generation, len(store), raw_rows(store)) == (0, 0, {})


def test_metadata_that_is_not_json_is_refused_by_add_files(store, pictures):
    with pytest.raises(anybind.MetadataError, match="cannot be stored as JSON"):
        store.add_files(pictures[:2], metadata={"when": object()})
    assert (store.generation, len(store)) == (0, 0)


def test_metadata_with_mixed_key_types_is_a_metadata_error(store):
    with pytest.raises(anybind.MetadataError):
        store.add_vectors("image", unit_vectors(1, seed=1), metadata={1: "a", "b": 2})


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_add_vectors_never_stores_a_zero_vector(store):
    huge = np.full((1, DIM), 1e30, dtype=np.float32)
    try:
        ids = store.add_vectors("image", huge)
    except anybind.EmbeddingError:
        return  # refusing the row is acceptable too
    assert np.linalg.norm(store.vectors(ids)[0]) == pytest.approx(1.0, abs=1e-5)


def test_add_vectors_with_no_rows_commits_nothing(store):
    assert store.add_vectors("image", np.empty((0, DIM), dtype=np.float32)) == []
    assert store.generation == 0


def test_scalar_quantizer_is_not_trained_on_a_tiny_first_batch(tmp_path, clip_space):
    vectors = unit_vectors(500, seed=51)
    store = open_store(tmp_path / "db", clip_space, index="SQ8")
    ids = store.add_vectors("image", vectors[:2])
    ids += store.add_vectors("image", vectors[2:])
    misses = [row for row in range(0, 500, 10) if store.search(vector=vectors[row], k=1).ids() != [ids[row]]]
    assert misses == []


def test_pca_index_defers_training_until_it_has_enough_vectors(tmp_path, clip_space):
    store = open_store(tmp_path / "db", clip_space, index="PCA8,Flat")
    store.add_vectors("image", unit_vectors(3, seed=1))
    assert partition_info(store)["pending_training"] is True


def test_search_argument_errors(store):
    store.add_vectors("image", unit_vectors(3, seed=1))
    q = unit_vectors(1, seed=2)[0]
    with pytest.raises(anybind.UnknownNameError, match="'pictures'"):
        store.search(vector=q, to="pictures")
    with pytest.raises(anybind.UnknownNameError, match="'nope'"):
        store.search(vector=q, to="image,nope")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        store.search(vector=q, k=0)
    with pytest.raises(anybind.EmbeddingError, match=r"query vector has shape \(15,\)"):
        store.search(vector=q[:15])
    with pytest.raises(anybind.EmbeddingError, match="all zeros"):
        store.search(vector=np.zeros(DIM))
    with pytest.raises(anybind.QueryError, match="nothing to search with"):
        store.search(k=3)
    # a known modality without a partition is simply empty
    empty = store.search(vector=q, to="text", k=3)
    assert len(empty) == 0 and empty.partitions["text"].count == 0


def test_add_files_reports_each_bad_file_and_adds_the_good_ones(store, image_files, tmp_path):
    missing = tmp_path / "missing.png"
    order = ["good", "corrupt", "empty", "truncated", "impostor", "good2", "jpeg"]
    report = store.add_files([*(image_files[name] for name in order), missing])
    added = {str(image_files[name].resolve()) for name in ("good", "good2", "jpeg")}
    assert set(report.added) == added and len(store) == 3
    reasons = {Path(e.source).name: e.reason for e in report.errors}
    assert set(reasons) == {"broken.png", "empty.png", "truncated.png", "notes.jpg", "missing.png"}
    assert "not a readable image" in reasons["broken.png"]
    assert "empty file" in reasons["empty.png"]
    assert "truncated" in reasons["truncated.png"]
    assert "not image data" in reasons["notes.jpg"] and "text" in reasons["notes.jpg"]
    assert "no such file" in reasons["missing.png"]
    assert all(isinstance(e, anybind.ItemError) for e in report.errors)


def test_add_files_reports_escaping_symlinks_and_loops_and_skips_its_own_db(tmp_path, clip_space):
    root = (tmp_path / "root").resolve()
    (root / "sub").mkdir(parents=True)
    inside = [make_image(root / "a.png", 1), make_image(root / "sub" / "b.png", 2)]
    outside = make_image(tmp_path / "outside.png", 3)
    os.symlink(outside, root / "escape.png")
    os.symlink(root, root / "sub" / "loop")
    store = open_store(root / "db", clip_space)  # the store lives inside the indexed folder
    store.add_vectors("image", unit_vectors(1, seed=1))  # so that it has partition files
    report = store.add_files([root], recursive=True)
    assert sorted(report.added) == sorted(str(p) for p in inside)
    reasons = {Path(e.source).name: e.reason for e in report.errors}
    assert set(reasons) == {"escape.png", "loop"}
    assert "leaves the indexed root" in reasons["escape.png"]
    assert "directory loop" in reasons["loop"]
    assert not any(str(store.path) in e.source for e in report.errors)


def test_optimize_argument_errors_and_small_partitions(store):
    store.add_vectors("image", unit_vectors(20, seed=1))
    with pytest.raises(anybind.UnknownNameError, match="'nope'"):
        store.optimize(modality="nope")
    with pytest.raises(anybind.StoreError, match="target recall must be in"):
        store.optimize(target_recall=1.5)
    generation = store.generation
    report = store.optimize()
    assert report["image"]["action"] == "kept" and report["image"]["index"] == "Flat"
    assert store.generation == generation


def test_opening_with_another_space_names_both_fingerprints(tmp_path, clip_space, builtin_plugins):
    open_store(tmp_path / "db", clip_space).close()
    other_dir = build_tiny_clip(tmp_path / "other-clip", seed=1)
    other = anybind.load_space(f"clip:{other_dir}", device="cpu", host=builtin_plugins)
    assert other.fingerprint != clip_space.fingerprint
    with pytest.raises(anybind.StoreError) as caught:
        open_store(tmp_path / "db", other)
    assert clip_space.fingerprint in str(caught.value) and other.fingerprint in str(caught.value)
    # the same space, given as a spec string, is accepted
    same = anybind.Store.open(tmp_path / "db", space=clip_space.name, device="cpu")
    assert same.space.fingerprint == clip_space.fingerprint


def test_reopening_with_another_index_type_points_to_optimize(tmp_path, clip_space):
    open_store(tmp_path / "db", clip_space, index="HNSW32").close()
    assert open_store(tmp_path / "db", clip_space, index="HNSW32").manifest.default_index == "HNSW32"
    with pytest.raises(anybind.StoreError, match="optimize"):
        open_store(tmp_path / "db", clip_space, index="Flat")


def test_creating_a_store_in_a_non_store_directory_is_refused(tmp_path, clip_space):
    folder = tmp_path / "photos"
    folder.mkdir()
    make_image(folder / "a.png", 1)
    with pytest.raises(anybind.StoreError, match="not empty and is not an anybind store"):
        open_store(folder, clip_space)
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]
    with pytest.raises(anybind.StoreError, match="exists and is not a directory"):
        open_store(folder / "a.png", clip_space)
    with pytest.raises(anybind.StoreError, match="needs a space, and the default space 'anybind-mini' is not"):
        anybind.Store.open(tmp_path / "new", host=anybind.PluginHost.from_environment(block=["mini"]))
    with pytest.raises(anybind.StoreError, match="not an anybind store"):
        anybind.Store.open(tmp_path / "new", create=False)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("factory", "message"),
    [("NoSuchIndex42", "not a valid faiss index_factory string"), ("IDMap,Flat", "without IDMap")],
)
def test_bad_index_factory_is_refused_before_anything_is_created(tmp_path, clip_space, factory, message):
    with pytest.raises(anybind.StoreError, match=message):
        open_store(tmp_path / "db", clip_space, index=factory)
    assert not (tmp_path / "db").exists()


# -- 10. readers and generations -------------------------------------------------------------------------


def test_a_second_store_object_sees_new_generations(tmp_path, clip_space):
    writer = open_store(tmp_path / "db", clip_space)
    first = writer.add_vectors("image", unit_vectors(3, seed=1))
    reader = open_store(tmp_path / "db", None)
    q = unit_vectors(1, seed=2)[0]
    assert sorted(reader.search(vector=q, k=10).ids()) == first
    second = writer.add_vectors("image", unit_vectors(2, seed=3), metadata={"late": True})
    assert sorted(reader.search(vector=q, k=10).ids()) == first + second
    assert reader.generation == writer.generation == 2
    assert sorted(reader.search(vector=q, k=10, where={"late": True}).ids()) == second
    writer.remove(first[:1])
    assert sorted(reader.search(vector=q, k=10).ids()) == first[1:] + second
    assert reader.info()["items"] == 4
    # and the reader can write on top of the writer's generation
    third = reader.add_vectors("image", unit_vectors(1, seed=4))
    assert third == [second[-1] + 1]
    assert sorted(writer.search(vector=q, k=10).ids()) == first[1:] + second + third


def test_staged_rows_are_invisible_and_dropped_by_the_next_write(store):
    ids = store.add_vectors("image", unit_vectors(3, seed=1), metadata={"album": "x"})
    generation, next_id = store.generation, store.manifest.next_id
    ghost = NewItem("image", unit_vectors(1, seed=1)[0], uri="staged://ghost", metadata={"album": "x"})
    db = MetaDB(store.path)
    with db.transaction() as conn:  # what a writer that crashed before its manifest rename leaves behind
        db.insert([next_id], [ghost], generation + 1, now())
        conn.execute("UPDATE items SET removed_gen = ? WHERE id = ?", (generation + 1, ids[0]))
    db.close()
    q = unit_vectors(1, seed=1)[0]
    assert sorted(store.search(vector=q, k=10).ids()) == ids
    assert sorted(store.search(vector=q, k=10, where={"album": "x"}).ids()) == ids
    assert store.info()["items"] == 3 and store.info()["generation"] == generation
    assert store.get([next_id]) == []
    assert raw_rows(store)[next_id] == ("staged://ghost", generation + 1, None)
    new = store.add_vectors("image", unit_vectors(1, seed=9))  # the next write
    assert new == [next_id]  # the staged row was dropped first, so its id is free
    rows = raw_rows(store)
    assert all(uri != "staged://ghost" for uri, *_ in rows.values())
    assert rows[ids[0]][2] is None  # the staged removal was undone
    assert sorted(store.search(vector=q, k=10).ids()) == [*ids, *new]


# -- regressions found in review ---------------------------------------------------------------------------


def test_interrupt_after_the_manifest_rename_keeps_the_commit(store, monkeypatch):
    from anybind.store import manifest as manifest_module

    store.add_vectors("image", unit_vectors(5, seed=1))
    real = manifest_module.write_atomic

    def interrupted(path, data):
        real(path, data)
        raise KeyboardInterrupt  # e.g. Ctrl-C while the directory is fsynced

    monkeypatch.setattr(manifest_module, "write_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.add_vectors("image", unit_vectors(3, seed=2))
    monkeypatch.undo()
    reopened = anybind.Store.open(store.path)
    visible = "SELECT COUNT(*) FROM items WHERE added_gen <= ? AND removed_gen IS NULL"
    assert reopened.generation == 2 and len(reopened) == 8 == sql(reopened, visible, (2,))[0][0]
    assert sorted(reopened.search(vector=unit_vectors(1, seed=3)[0], k=20).ids()) == list(range(1, 9))
    store.add_vectors("image", unit_vectors(1, seed=4))  # the interrupted writer goes on from generation 2
    assert anybind.Store.open(store.path).generation == 3 and sql(store, visible, (3,))[0][0] == 9


def test_same_target_twice_does_not_duplicate_hits(store):
    store.add_vectors("image", unit_vectors(6, seed=1))
    hits = store.search(vector=unit_vectors(1, seed=2)[0], to=["image", "image"], k=4)
    assert len(set(hits.ids())) == 4
    with pytest.raises(anybind.UnknownNameError):
        store.search(vector=unit_vectors(1, seed=2)[0], to=[], k=4)


def test_filters_compare_json_types(store):
    ids = store.add_vectors(
        "image", unit_vectors(4, seed=1), metadata=[{"flag": 1}, {"flag": True}, {"flag": "1"}, {"flag": 1.0}]
    )
    q = unit_vectors(1, seed=2)[0]
    assert sorted(store.search(vector=q, k=10, where={"flag": True}).ids()) == [ids[1]]
    assert sorted(store.search(vector=q, k=10, where={"flag": 1}).ids()) == [ids[0], ids[3]]
    assert sorted(store.search(vector=q, k=10, where={"flag": "1"}).ids()) == [ids[2]]
    with pytest.raises(anybind.MetadataError, match="cannot contain"):
        store.search(vector=q, where={'a"b': 1})
    assert store.search(vector=q, where={"flag": 2**70}).ids() == []  # beyond 64 bits: compared digit by digit


def test_ivf_with_few_probes_still_returns_k_hits(tmp_path, clip_space):
    store = open_store(tmp_path / "db", clip_space, index="IVF16,Flat")
    store.add_vectors("image", unit_vectors(1200, seed=5))
    store.partition("image").set_params({"nprobe": 1})
    assert len(store.search(vector=unit_vectors(1, seed=6)[0], k=1000)) == 1000


def test_optimize_tunes_an_ivf_inside_a_pretransform(tmp_path, clip_space):
    store = open_store(tmp_path / "db", clip_space)
    store.add_vectors("image", unit_vectors(3000, seed=7))
    report = store.optimize(index="PCA16,IVF32,Flat", target_recall=0.95)["image"]
    assert report["index"] == "PCA16,IVF32,Flat" and "nprobe" in report["params"] and report["target_met"]
    reopened = anybind.Store.open(tmp_path / "db")
    (segment,) = reopened.partition("image").segments
    assert segment.ann[1].nprobe == report["params"]["nprobe"]


def test_bad_argument_types_are_typed_errors(store):
    store.add_vectors("image", unit_vectors(3, seed=1))
    q = unit_vectors(1, seed=2)[0]
    assert len(store.search(vector=q, k=np.int64(2))) == 2
    with pytest.raises(ValueError, match="k must be a positive integer"):
        store.search(vector=q, k=True)
    with pytest.raises(anybind.EmbeddingError, match="not numeric"):
        store.search(vector=["a"] * DIM)
    with pytest.raises(anybind.StoreError, match="integers"):
        store.remove(["x"])
    with pytest.raises(anybind.StoreError, match="out of range"):
        store.remove([2**70])
    with pytest.raises(anybind.MetadataError, match=r"texts\[0\]"):
        store.add_vectors("image", unit_vectors(1, seed=3), texts=[5])
    with pytest.raises(anybind.MetadataError, match=r"segments\[0\]"):
        store.add_vectors("image", unit_vectors(1, seed=3), segments=[(1,)])
    assert len(store) == 3 and store.generation == 1


def test_vector_search_does_not_load_the_space(tmp_path, clip_space, monkeypatch):
    store = open_store(tmp_path / "db", clip_space)
    store.add_vectors("image", unit_vectors(4, seed=1))
    reopened = anybind.Store.open(tmp_path / "db")
    monkeypatch.setattr("anybind.store.store.load_space", lambda *a, **k: pytest.fail("loaded the space's models"))
    assert len(reopened.search(vector=unit_vectors(1, seed=2)[0], to="image,text", k=3)) == 3
    with pytest.raises(anybind.UnknownNameError, match="'smell'"):
        reopened.search(vector=unit_vectors(1, seed=2)[0], to="smell")


def test_optimize_to_flat_merges_the_partition_into_one_exact_segment(store):
    for seed in range(3):
        store.add_vectors("image", unit_vectors(4, seed=seed))
    assert len(store.partition("image").segments) == 3
    report = store.optimize(index="Flat")["image"]
    assert report == {"action": "rebuilt", "index": "Flat", "count": 12, "segments": 1}
    assert len(store.partition("image").segments) == 1
    assert store.partition("image").exact
