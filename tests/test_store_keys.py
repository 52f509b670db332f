"""Caller keys: ``keys=`` on add_vectors/add, ``upsert``, ``get(keys=)``, ``remove(keys=)``, keys on hits."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import anybind
from anybind.testing import SENTENCES

DIM = 16


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path: Path, clip_space: anybind.Space):
    s = anybind.Store.open(tmp_path / "db", space=clip_space, device="cpu")
    yield s
    s.close()


def visible_keys(store: anybind.Store) -> list[tuple[str, int]]:
    g = store.generation
    with contextlib.closing(sqlite3.connect(store.path / "items.sqlite")) as conn:
        return conn.execute(
            "SELECT key, id FROM items WHERE added_gen <= ? AND (removed_gen IS NULL OR removed_gen > ?) ORDER BY id",
            (g, g),
        ).fetchall()


def test_keys_are_stored_returned_on_hits_and_found_by_get(store):
    vectors = unit_vectors(3, seed=1)
    ids = store.add_vectors("image", vectors, keys=["sku-1", "sku-2", "sku-3"])
    assert visible_keys(store) == [("sku-1", ids[0]), ("sku-2", ids[1]), ("sku-3", ids[2])]
    hit = store.search(vector=vectors[1], k=1)[0]
    assert (hit.id, hit.key) == (ids[1], "sku-2")
    assert [(r.id, r.key) for r in store.get(keys=["sku-3", "sku-1", "nope"])] == [(ids[0], "sku-1"), (ids[2], "sku-3")]


def test_a_key_already_in_the_store_is_refused_without_upsert(store):
    store.add_vectors("image", unit_vectors(2, seed=1), keys=["a", "b"])
    generation = store.generation
    with pytest.raises(anybind.StoreError, match=r"keys already in the store: 'b' \(use upsert"):
        store.add_vectors("image", unit_vectors(2, seed=2), keys=["b", "c"])
    assert store.generation == generation and len(store) == 2  # nothing of the call was added


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["x", "y", "x"], "duplicate keys in one call: 'x'"),
        (["x", "", "z"], r"keys\[1\] is ''"),
        (["x", 5, "z"], r"keys\[1\] is 5"),
        (["x"], "keys has 1 entries for 3 items"),
        ("xyz", "not a single string"),
    ],
)
def test_bad_keys_are_metadata_errors_naming_them(store, keys, message):
    with pytest.raises(anybind.MetadataError, match=message):
        store.add_vectors("image", unit_vectors(3, seed=1), keys=keys)
    assert len(store) == 0 and store.generation == 0


def test_upsert_of_10k_keys_leaves_10k_items_each_found_by_its_new_vector_only(store):
    n = 10_000
    keys = [f"k{i}" for i in range(n)]
    old, new = unit_vectors(n, seed=1), unit_vectors(n, seed=2)
    for start in range(0, n, 2500):
        store.add_vectors("image", old[start : start + 2500], keys=keys[start : start + 2500])
    old_ids = [i for _, i in visible_keys(store)]
    for start in range(0, n, 2500):
        store.upsert_vectors("image", new[start : start + 2500], keys=keys[start : start + 2500])
    rows = visible_keys(store)
    assert len(store) == n == len(rows) and sorted(k for k, _ in rows) == sorted(keys)
    assert not {i for _, i in rows} & set(old_ids)  # every item was replaced by a new one
    by_key = dict(rows)
    np.testing.assert_allclose(store.vectors([by_key[k] for k in keys]), new, atol=1e-6)
    for i in range(0, n, 997):
        hit = store.search(vector=new[i], to="image", k=1)[0]
        assert hit.key == keys[i] and hit.score == pytest.approx(1.0, abs=1e-5)
        stale = store.search(vector=old[i], to="image", k=1)[0]
        assert stale.score < 0.999  # the old vector is gone
    assert store.info()["partitions"]["image"]["count"] == n


def test_upsert_mixes_new_and_existing_keys_in_one_commit(store):
    store.add_vectors("text", unit_vectors(2, seed=1), keys=["a", "b"])
    generation = store.generation
    ids = store.upsert_vectors("text", unit_vectors(2, seed=2), keys=["b", "c"], texts=["bee", "sea"])
    assert store.generation == generation + 1
    assert [(r.key, r.text) for r in store.get(keys=["a", "b", "c"])] == [("a", None), ("b", "bee"), ("c", "sea")]
    assert [r.id for r in store.get(keys=["b", "c"])] == ids


def test_remove_by_key_reports_missing_keys(store):
    ids = store.add_vectors("image", unit_vectors(3, seed=1), keys=["a", "b", "c"])
    report = store.remove(keys=["b", "zzz"])
    assert (report.removed, report.missing) == ([ids[1]], ["zzz"])
    assert [k for k, _ in visible_keys(store)] == ["a", "c"]
    both = store.remove([ids[0]], keys=["c"])
    assert both.removed == [ids[0], ids[2]] and len(store) == 0


def test_add_with_keys_embeds_and_upserts_items(store, clip_space):
    report = store.add("text", SENTENCES[:2], keys=["s0", "s1"])
    assert not report.errors and len(report.ids) == 2
    again = store.upsert("text", [SENTENCES[2]], keys=["s0"])
    (new_id,) = again.ids
    rows = {r.key: r for r in store.get(keys=["s0", "s1"])}
    assert rows["s0"].id == new_id and rows["s0"].text == SENTENCES[2]
    expected = clip_space.embed("text", [SENTENCES[2]])[0]
    np.testing.assert_allclose(store.vectors([new_id])[0], expected, atol=1e-5)
    with pytest.raises(anybind.StoreError, match="keys already in the store: 's1'"):
        store.add("text", [SENTENCES[3]], keys=["s1"])
