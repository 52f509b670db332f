"""``anybind migrate``: convert a store of format 1 (anybind 0.1) to format 2 in place, keeping every item.

Format 1 kept one FAISS file per partition, rewritten by every commit, and every vector a second time in
SQLite (``metadata.sqlite``, column ``vector``: its source of truth). Migration, under both the new directory
lock and format 1's ``lock`` file (so no 0.1 writer runs meanwhile):

1. reads the format-1 manifest; rows visible at its generation are the store (a crashed 0.1 writer's staged
   rows are not);
2. writes ``items.sqlite`` (the rows without vectors) and, per partition, one segment streamed from SQLite's
   vectors in id order, plus its moments; an ANN partition's segment is indexed with its index type again;
3. checks every partition's count against the old manifest, then renames the format-2 manifest in (the
   commit point) and deletes the format-1 files.

A crash before step 3's rename leaves the format-1 store as it was (the next run starts over); after it, the
format-2 store is complete. Nothing is migrated silently: ``Store.open`` refuses format 1 unless asked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from anybind.errors import StoreError

from . import ann
from .files import fsync_dir, write_atomic
from .manifest import ITEMS_DB, SEGMENTS, V1_FILES, FileRecord, Manifest, PartitionRecord, read_raw, write_manifest
from .metadata import MetaDB
from .moments import Moments
from .segment import build_index, write_segment
from .writer import Writer

V1_VISIBLE = "added_gen <= :g AND (removed_gen IS NULL OR removed_gen > :g)"
BLOCK = 65_536


def migrate_v1(root: Path, *, lock_timeout: float | None = None) -> dict[str, Any]:
    """Convert the format-1 store at ``root``; returns ``{"generation", "partitions": {name: count}}``.

    Raises :class:`StoreError` (and changes nothing) when the old store is not consistent: a partition's rows in
    SQLite do not match its manifest count, a vector of the wrong size, or the old database is unreadable.
    """
    with Writer(root, lock_timeout=lock_timeout).exclusive():
        old_lock = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(old_lock, fcntl.LOCK_EX)
            raw = read_raw(root)
            if raw.get("format") != 1:
                raise StoreError(f"{root}: store format {raw.get('format')!r}, not 1: nothing to migrate")
            return _migrate(root, raw)
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(old_lock, fcntl.LOCK_UN)
            os.close(old_lock)


def _migrate(root: Path, raw: dict[str, Any]) -> dict[str, Any]:
    generation = int(raw["generation"])
    dim = int(raw["space"]["dim"])
    for leftover in (ITEMS_DB, f"{ITEMS_DB}-wal", f"{ITEMS_DB}-shm"):  # an earlier migration that crashed
        (root / leftover).unlink(missing_ok=True)
    shutil.rmtree(root / SEGMENTS, ignore_errors=True)
    (root / SEGMENTS).mkdir()
    old_path = root / "metadata.sqlite"
    if not old_path.is_file():
        raise StoreError(f"{old_path}: missing; a format-1 store keeps its items there, so it cannot be migrated")
    try:
        old = sqlite3.connect(f"file:{old_path}?mode=ro", uri=True)
        counts = dict(
            old.execute(f"SELECT modality, COUNT(*) FROM items WHERE {V1_VISIBLE} GROUP BY modality", {"g": generation})
        )
    except sqlite3.Error as exc:
        raise StoreError(f"{old_path}: cannot read the format-1 metadata ({exc}); it cannot be migrated") from None
    partitions: dict[str, PartitionRecord] = {}
    try:
        for name, record in sorted(raw.get("partitions", {}).items()):
            if counts.get(name, 0) != record["count"]:
                raise StoreError(
                    f"{old_path}: partition {name!r} has {counts.get(name, 0)} rows, the manifest counts "
                    f"{record['count']}; the format-1 store is inconsistent and was not migrated"
                )
            partitions[name] = _partition(root, old, name, record, generation, dim)
        for name in counts:
            if name not in partitions:
                raise StoreError(f"{old_path}: rows of partition {name!r}, which the manifest does not name")
        _copy_rows(root, old_path, generation)
    finally:
        old.close()
    manifest = Manifest.model_validate(
        {
            "generation": generation + 1,
            "next_id": raw["next_id"],
            "space": raw["space"],
            "default_index": raw.get("default_index", "Flat"),
            "created_at": raw.get("created_at"),
            "partitions": partitions,
        }
    )
    db = MetaDB(root)
    try:
        with db.transaction("recording the migration"):
            db.record_commit(generation + 1, 0, 0, manifest.updated_at)
    finally:
        db.close()
    fsync_dir(root)
    write_manifest(root, manifest)  # the commit point
    remove_v1_files(root)
    return {"generation": manifest.generation, "partitions": {n: p.count for n, p in partitions.items()}}


def _partition(
    root: Path, old: sqlite3.Connection, name: str, record: dict[str, Any], generation: int, dim: int
) -> PartitionRecord:
    folder = root / SEGMENTS / name
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.fromiter(
        (
            r[0]
            for r in old.execute(
                f"SELECT id FROM items WHERE modality = :m AND {V1_VISIBLE} ORDER BY id", {"m": name, "g": generation}
            )
        ),
        dtype=np.int64,
    )
    moments = Moments.empty(dim)

    def blocks() -> Any:
        query = f"SELECT id, vector FROM items WHERE modality = :m AND {V1_VISIBLE} ORDER BY id"
        cursor = old.execute(query, {"m": name, "g": generation})
        while rows := cursor.fetchmany(BLOCK):
            data = b"".join(r[1] for r in rows)
            if len(data) != len(rows) * dim * 4:
                raise StoreError(f"partition {name!r}: a stored vector is not {dim} float32 values; not migrated")
            vectors = np.frombuffer(data, dtype=np.float32).reshape(len(rows), dim)
            moments.add(vectors)
            yield vectors

    segment = write_segment(folder, f"{generation:08d}-v1", dim, ids, blocks(), len(ids))
    factory = record.get("factory", "Flat")
    if factory != ann.EXACT and len(ids) >= ann.min_train(factory, dim):
        segment = build_index(folder, segment, dim, factory)
    crc = write_atomic(folder / f"moments.{generation}.safetensors", moments.to_bytes(), sync_dir=False)
    size = (folder / f"moments.{generation}.safetensors").stat().st_size
    fsync_dir(folder)
    temporal = old.execute(
        f"SELECT 1 FROM items WHERE modality = :m AND start IS NOT NULL AND uri IS NOT NULL AND {V1_VISIBLE} LIMIT 1",
        {"m": name, "g": generation},
    ).fetchone()
    return PartitionRecord(
        factory=factory,
        temporal=temporal is not None,
        count=len(ids),
        segments=[segment] if len(ids) else [],
        moments=FileRecord(name=f"moments.{generation}.safetensors", bytes=size, crc32=crc),
        params=record.get("params", {}) if segment.index is not None else {},
    )


def _copy_rows(root: Path, old_path: Path, generation: int) -> None:
    db = MetaDB(root, create=True)
    try:
        db.conn.execute("ATTACH DATABASE ? AS old", (str(old_path),))
        with db.transaction("copying the items") as conn:
            conn.execute(
                'INSERT INTO items (id, key, part, modality, uri, start, "end", text, metadata, content_hash, '
                'added_at, added_gen, removed_gen) SELECT id, NULL, 0, modality, uri, start, "end", text, metadata, '
                f"content_hash, added_at, added_gen, NULL FROM old.items WHERE {V1_VISIBLE} ORDER BY id",
                {"g": generation},
            )
            db.record_commit(0, 0, 0, "migrated")
            db.record_commit(generation, 0, 0, "migrated")
        db.conn.execute("DETACH DATABASE old")
    finally:
        db.close()


def remove_v1_files(root: Path) -> None:
    """Delete what format 1 kept (its database, partition files and lock file) once format 2 is committed."""
    for name in V1_FILES:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    fsync_dir(root)
