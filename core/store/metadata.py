"""SQLite metadata for a store: one row per item, with its vector, stamped with the generations it lives in.

A row is visible at generation ``g`` when ``added_gen <= g`` and it was not removed at or before ``g``.
Writers stage rows for generation ``g + 1`` before the manifest says ``g + 1``; until then readers (who
filter by the manifest's generation) cannot see them, and a crashed writer's rows are dropped by
:meth:`MetaDB.recover`. SQLite runs in WAL mode with full sync, so a transaction is all-or-nothing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anybind.errors import MetadataError, StoreError

DB_NAME = "metadata.sqlite"
VISIBLE = "added_gen <= :g AND (removed_gen IS NULL OR removed_gen > :g)"
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    modality TEXT NOT NULL,
    uri TEXT,
    start REAL,
    "end" REAL,
    text TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    content_hash TEXT,
    added_at TEXT NOT NULL,
    added_gen INTEGER NOT NULL,
    removed_gen INTEGER,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_modality ON items (modality, added_gen);
CREATE INDEX IF NOT EXISTS items_uri ON items (uri);
"""
TEXT_PREVIEW = 1000  # characters of a text item kept for display


@dataclass(frozen=True)
class Row:
    """One item as stored (without its vector)."""

    id: int
    modality: str
    uri: str | None
    start: float | None
    end: float | None
    text: str | None
    metadata: dict[str, Any]
    content_hash: str | None
    added_at: str


@dataclass
class NewItem:
    """An item about to be added (its id is assigned by the store)."""

    modality: str
    vector: np.ndarray
    uri: str | None = None
    start: float | None = None
    end: float | None = None
    text: str | None = None
    metadata: Mapping[str, Any] | None = None
    content_hash: str | None = None


INT64 = 2**63


def _json_path(key: str) -> str:
    if '"' in key or not key:
        raise MetadataError(f"filter key {key!r}: keys must be non-empty and cannot contain '\"'")
    return '$."' + key + '"'


def _condition(path: str, slot: str, value: Any) -> str:
    """SQL matching one filter value with its JSON type: true is not 1, and "1" is not 1."""
    if value is None:
        return f"json_type(metadata, {path}) = 'null'"
    if isinstance(value, bool):
        return f"json_type(metadata, {path}) = '{'true' if value else 'false'}'"
    if isinstance(value, (int, float)):
        if isinstance(value, int) and not -INT64 <= value < INT64:
            raise MetadataError(f"filter value {value} does not fit a 64-bit integer")
        return f"(json_type(metadata, {path}) IN ('integer', 'real') AND json_extract(metadata, {path}) = {slot})"
    return f"(json_type(metadata, {path}) = 'text' AND json_extract(metadata, {path}) = {slot})"


class MetaDB:
    """The metadata database of one store directory."""

    def __init__(self, directory: Path) -> None:
        path = directory / DB_NAME
        try:
            self.conn = sqlite3.connect(path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
            self.conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the metadata database: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    # -- writes (the caller holds the store's write lock) ---------------------------------------------

    def recover(self, generation: int) -> int:
        """Drop what a crashed writer staged after ``generation``, and rows removed before it."""
        with self.transaction():
            staged = self.conn.execute("DELETE FROM items WHERE added_gen > ?", (generation,)).rowcount
            self.conn.execute("UPDATE items SET removed_gen = NULL WHERE removed_gen > ?", (generation,))
            # rows removed at `generation` stay one more generation, for readers still on the one before
            self.conn.execute("DELETE FROM items WHERE removed_gen < ?", (generation,))
        return staged

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every query inside sees the same database state (WAL snapshot)."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def transaction(self) -> sqlite3.Connection:
        """``with db.transaction():`` commits on success and rolls back on any exception."""
        return _Transaction(self.conn)  # type: ignore[return-value]

    def insert(self, ids: Sequence[int], items: Sequence[NewItem], generation: int, added_at: str) -> None:
        rows = [
            (
                item_id,
                item.modality,
                item.uri,
                item.start,
                item.end,
                item.text[:TEXT_PREVIEW] if item.text is not None else None,
                json.dumps(dict(item.metadata or {}), ensure_ascii=False, allow_nan=False, sort_keys=True),
                item.content_hash,
                added_at,
                generation,
                np.ascontiguousarray(item.vector, dtype=np.float32).tobytes(),
            )
            for item_id, item in zip(ids, items, strict=True)
        ]
        self.conn.executemany(
            'INSERT INTO items (id, modality, uri, start, "end", text, metadata, content_hash, added_at, added_gen, '
            "vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def mark_removed(self, ids: Iterable[int], generation: int) -> dict[str, list[int]]:
        """Mark visible ids removed at ``generation``; returns the removed ids grouped by modality."""
        removed: dict[str, list[int]] = {}
        for chunk in _chunks(list(ids)):
            params: dict[str, Any] = {"g": generation - 1, **{f"i{n}": v for n, v in enumerate(chunk)}}
            marks = ",".join(f":i{n}" for n in range(len(chunk)))
            found = self.conn.execute(f"SELECT id, modality FROM items WHERE id IN ({marks}) AND {VISIBLE}", params)
            found = found.fetchall()
            for item_id, modality in found:
                removed.setdefault(modality, []).append(item_id)
            self.conn.executemany(
                "UPDATE items SET removed_gen = ? WHERE id = ?", [(generation, item_id) for item_id, _ in found]
            )
        return removed

    # -- reads ------------------------------------------------------------------------------------------

    def counts(self, generation: int) -> dict[str, int]:
        query = f"SELECT modality, COUNT(*) FROM items WHERE {VISIBLE} GROUP BY modality"
        rows = self.conn.execute(query, {"g": generation})
        return dict(rows.fetchall())

    def rows(self, ids: Iterable[int], generation: int) -> dict[int, Row]:
        found: dict[int, Row] = {}
        for chunk in _chunks(list(ids)):
            for r in self.conn.execute(_rows_query(len(chunk)), (*chunk, generation, generation)):
                meta = {} if r[6] == "{}" else json.loads(r[6])  # most items carry no metadata: skip the parser
                found[r[0]] = Row(r[0], r[1], r[2], r[3], r[4], r[5], meta, r[7], r[8])
        return found

    def vectors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Stored vectors of ``ids`` in the given order; rows of ids that no longer exist are NaN."""
        out = np.full((len(ids), dim), np.nan, dtype=np.float32)
        position = {item_id: n for n, item_id in enumerate(ids)}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for item_id, blob in self.conn.execute(f"SELECT id, vector FROM items WHERE id IN ({marks})", chunk):
                out[position[item_id]] = np.frombuffer(blob, dtype=np.float32)
        return out

    def partition(self, modality: str, generation: int, batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) blocks of every visible item of a modality, in id order."""
        query = f"SELECT id, vector FROM items WHERE modality = :m AND {VISIBLE} ORDER BY id"
        cursor = self.conn.execute(query, {"m": modality, "g": generation})
        while block := cursor.fetchmany(batch):
            ids = np.fromiter((r[0] for r in block), dtype=np.int64, count=len(block))
            vectors = np.frombuffer(b"".join(r[1] for r in block), dtype=np.float32).reshape(len(block), -1)
            yield ids, vectors

    def ids(self, modality: str, generation: int) -> np.ndarray:
        rows = self.conn.execute(
            f"SELECT id FROM items WHERE modality = :m AND {VISIBLE}", {"m": modality, "g": generation}
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def matching(self, modality: str, generation: int, where: Mapping[str, Any]) -> np.ndarray:
        """Ids of a modality's visible items whose metadata matches every ``key: value`` (a list means any of)."""
        clauses, params = [], {"m": modality, "g": generation}
        for n, (key, wanted) in enumerate(where.items()):
            values = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
            params[f"p{n}"] = _json_path(str(key))
            options = []
            for v, value in enumerate(values):
                if not isinstance(value, (str, int, float, bool, type(None))):
                    raise MetadataError(
                        f"filter {key!r}: {value!r} is a {type(value).__name__}; filter values are strings, numbers, "
                        "booleans or None (a list means any of)"
                    )
                if not isinstance(value, bool) and value is not None:
                    params[f"v{n}_{v}"] = value
                options.append(_condition(f":p{n}", f":v{n}_{v}", value))
            clauses.append("(" + " OR ".join(options or ["0"]) + ")")
        query = f"SELECT id FROM items WHERE modality = :m AND {VISIBLE} AND " + " AND ".join(clauses or ["1"])
        return np.fromiter((r[0] for r in self.conn.execute(query, params)), dtype=np.int64)

    def files(self, uris: Iterable[str], generation: int) -> dict[str, tuple[str | None, list[int]]]:
        """For each uri already stored: its content hash and its item ids."""
        found: dict[str, tuple[str | None, list[int]]] = {}
        for chunk in _chunks(list(uris)):
            params: dict[str, Any] = {"g": generation, **{f"u{n}": v for n, v in enumerate(chunk)}}
            marks = ",".join(f":u{n}" for n in range(len(chunk)))
            query = f"SELECT uri, content_hash, id FROM items WHERE uri IN ({marks}) AND {VISIBLE} ORDER BY id"
            for uri, digest, item_id in self.conn.execute(query, params):
                found.setdefault(uri, (digest, []))[1].append(item_id)
        return found

    def uris_with(self, modality: str, uris: Iterable[str], generation: int) -> set[str]:
        """Which of ``uris`` have at least one visible item of ``modality`` (a video's sound track, say)."""
        found: set[str] = set()
        for chunk in _chunks(list(uris)):
            params: dict[str, Any] = {"g": generation, "m": modality, **{f"u{n}": v for n, v in enumerate(chunk)}}
            marks = ",".join(f":u{n}" for n in range(len(chunk)))
            query = f"SELECT DISTINCT uri FROM items WHERE modality = :m AND uri IN ({marks}) AND {VISIBLE}"
            found.update(uri for (uri,) in self.conn.execute(query, params))
        return found


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if kind is not None else "COMMIT")


@functools.lru_cache(maxsize=64)
def _rows_query(n: int) -> str:
    """The SELECT of ``n`` rows by id that are visible at a generation (given twice, after the ids)."""
    return (
        'SELECT id, modality, uri, start, "end", text, metadata, content_hash, added_at FROM items '
        f"WHERE id IN ({','.join('?' * n)}) AND added_gen <= ? AND (removed_gen IS NULL OR removed_gen > ?)"
    )


def _chunks(values: list[Any], size: int = 900) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
