"""Migration of stores written by anybind 0.1 (format 1) to format 2: every id, vector, row and segment kept.

The fixtures in tests/data/v1 were written by 0.1's own store code (tests/data/make_v1_stores.py says how);
expected values come from that script's seeds and from the format-1 SQLite file, read before migrating.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import anybind
from anybind.cli import main
from anybind.store import manifest as manifest_module
from anybind.store.check import check

V1 = Path(__file__).parent / "data" / "v1"


def unit_vectors(n: int, seed: int, dim: int = 16) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def v1_rows(db: Path) -> dict[int, tuple]:
    """Visible rows of a format-1 store, read with plain sqlite3: id -> (modality, uri, start, end, text, metadata,
    vector)."""
    g = json.loads((db / "manifest.json").read_text())["generation"]
    with contextlib.closing(sqlite3.connect(db / "metadata.sqlite")) as conn:
        rows = conn.execute(
            'SELECT id, modality, uri, start, "end", text, metadata, vector FROM items '
            "WHERE added_gen <= ? AND (removed_gen IS NULL OR removed_gen > ?)",
            (g, g),
        ).fetchall()
    return {r[0]: (*r[1:6], json.loads(r[6]), np.frombuffer(r[7], dtype=np.float32)) for r in rows}


@pytest.fixture
def flat_v1(tmp_path: Path) -> Path:
    shutil.copytree(V1 / "flat", tmp_path / "flat")
    return tmp_path / "flat"


def test_a_format_1_store_is_refused_until_migrated(flat_v1):
    before = sorted(p.name for p in flat_v1.rglob("*"))
    with pytest.raises(anybind.StoreError, match=r"store format 1 .*anybind migrate --db"):
        anybind.Store.open(flat_v1)
    assert sorted(p.name for p in flat_v1.rglob("*")) == before  # refusing changed nothing


def test_migrate_keeps_every_item_vector_and_segment(flat_v1, capsys):
    old = v1_rows(flat_v1)
    # the fixture is what make_v1_stores.py says: ids 1-40 images (2 and 5 removed), 41-50 texts, 51-56 audio
    images = unit_vectors(40, seed=1)
    expected = {i + 1: images[i] for i in range(40) if i + 1 not in (2, 5)}
    expected |= {41 + i: v for i, v in enumerate(unit_vectors(10, seed=2))}
    expected |= {51 + i: v for i, v in enumerate(unit_vectors(6, seed=3))}
    expected |= {57 + i: v for i, v in enumerate(unit_vectors(5, seed=4))}
    assert sorted(old) == sorted(expected)
    assert main(["migrate", "--db", str(flat_v1)]) == 0
    assert "migrated" in capsys.readouterr().err
    manifest = json.loads((flat_v1 / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["next_id"] == 62
    assert sorted(p.name for p in flat_v1.iterdir()) == ["items.sqlite", "manifest.json", "segments"]
    assert check(flat_v1)["ok"]
    store = anybind.Store.open(flat_v1)
    assert len(store) == len(old) and store.modalities == ["audio", "image", "text"]
    got = store.vectors(sorted(old))
    np.testing.assert_allclose(got, np.stack([expected[i] for i in sorted(old)]), atol=1e-6)
    rows = {row.id: row for row in store.get(sorted(old))}
    for item_id, (modality, uri, start, end, text, metadata, _) in old.items():
        row = rows[item_id]
        assert (row.modality, row.uri, row.start, row.end, row.text, row.metadata) == (
            modality,
            uri,
            start,
            end,
            text,
            metadata,
        )
    assert store.get([2, 5]) == []
    assert store.manifest.partitions["audio"].temporal and not store.manifest.partitions["image"].temporal
    q = unit_vectors(1, seed=9)[0]
    ids = np.array(sorted(i for i in old if old[i][0] == "image"))
    want = ids[np.argsort(-(np.stack([expected[i] for i in ids]) @ q), kind="stable")][:10].tolist()
    assert store.search(vector=q, to="image", k=10).ids() == want
    assert sorted(store.search(vector=q, k=10, where={"late": True}).ids()) == list(range(57, 62))
    audio = store.search(vector=expected[53], to="audio", k=3)  # one file: rolled up to its best segment
    assert [(h.id, h.segment) for h in audio] == [(53, (2.0, 3.0))]
    new = store.add_vectors("image", unit_vectors(1, seed=10))
    assert new == [62]  # ids go on from where 0.1 stopped


def test_migrate_rebuilds_an_ann_partition_and_keeps_its_tuning(tmp_path):
    db = tmp_path / "ivf"
    shutil.copytree(V1 / "ivf", db)
    store = anybind.Store.open(db, migrate=True)
    part = store.partition("image")
    assert part.built == "IVF16,Flat" and part.count == 1200 and part.record.params == {"nprobe": 8}
    (segment,) = part.segments
    assert segment.ann[1].nprobe == 8
    vectors = unit_vectors(1200, seed=5)
    np.testing.assert_allclose(store.vectors(range(1, 1201)), vectors, atol=1e-6)
    assert store.search(vector=vectors[17], to="image", k=1).ids() == [18]
    assert check(db)["ok"]


def test_a_migration_that_crashes_before_its_manifest_leaves_the_format_1_store(flat_v1, monkeypatch):
    old = v1_rows(flat_v1)

    def crash(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("anybind.store.migrate.write_manifest", crash)
    with pytest.raises(OSError):
        anybind.Store.open(flat_v1, migrate=True)
    assert json.loads((flat_v1 / "manifest.json").read_text())["format"] == 1
    assert v1_rows(flat_v1).keys() == old.keys()
    monkeypatch.setattr("anybind.store.migrate.write_manifest", manifest_module.write_manifest)
    store = anybind.Store.open(flat_v1, migrate=True)  # run again: starts over and completes
    assert len(store) == len(old) and check(flat_v1)["ok"]


def test_a_newer_format_is_refused_with_a_clear_error(flat_v1):
    manifest = json.loads((flat_v1 / "manifest.json").read_text())
    manifest["format"] = 99
    (flat_v1 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(anybind.StoreError, match=r"store format 99; .*upgrade anybind"):
        anybind.Store.open(flat_v1, migrate=True)
    assert main(["migrate", "--db", str(flat_v1)]) == 2
