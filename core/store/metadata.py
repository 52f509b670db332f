"""SQLite metadata for a store: one row per item (no vectors: those live in segments), stamped with the
generations it lives in.

A row is visible at generation ``g`` when ``added_gen <= g`` and it was not removed at or before ``g``.
Writers stage rows for generation ``g + 1`` before the manifest says ``g + 1``; until then readers (who
filter by the manifest's generation) cannot see them, and a crashed writer's rows are dropped by
:meth:`MetaDB.recover`. SQLite runs in WAL mode with full sync, so a transaction is all-or-nothing.

Table ``commits`` holds one row per generation, written in the same transaction as the generation's rows:
a database that lacks the manifest's generation (a lost ``-wal`` file, a restored old copy, an empty file) is
refused instead of read. Table ``state`` records ``purged_below``: rows removed before that generation are
gone, so a reader pinned to an older generation knows its view would be incomplete and re-reads the manifest.
Readers open the database read-only (``mode=ro``; ``immutable=1`` on a read-only directory).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anybind.errors import MetadataError, StoreError

from .files import RECOVER_HINT

DB_NAME = "items.sqlite"
VISIBLE = "added_gen <= :g AND (removed_gen IS NULL OR removed_gen > :g)"
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT,
    part INTEGER NOT NULL DEFAULT 0,
    modality TEXT NOT NULL,
    uri TEXT,
    start REAL,
    "end" REAL,
    text TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    content_hash TEXT,
    added_at TEXT NOT NULL,
    added_gen INTEGER NOT NULL,
    removed_gen INTEGER
);
CREATE INDEX IF NOT EXISTS items_modality ON items (modality, added_gen);
CREATE INDEX IF NOT EXISTS items_uri ON items (uri) WHERE uri IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_removed ON items (removed_gen) WHERE removed_gen IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS items_key ON items (key, part) WHERE key IS NOT NULL AND removed_gen IS NULL;
CREATE TABLE IF NOT EXISTS commits (generation INTEGER PRIMARY KEY, added INTEGER NOT NULL, removed INTEGER NOT NULL,
                                    at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
TEXT_PREVIEW = 1000  # characters of a text item kept for display


@dataclass(frozen=True)
class Row:
    """One item as stored (without its vector)."""

    id: int
    key: str | None
    modality: str
    uri: str | None
    start: float | None
    end: float | None
    text: str | None
    metadata: dict[str, Any]
    content_hash: str | None
    added_at: str
    generation: int  # the generation that added it


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
    key: str | None = None
    part: int = 0  # the n-th time segment of a keyed input (all of an input's segments share its key)


INT64 = 2**63


def _json_path(key: Any) -> str:
    """The JSON path of a top-level key. SQLite matches a quoted path label against the key's JSON-escaped text
    as stored (a backslash is ``\\\\`` there), so the label is the key as JSON writes it."""
    if not isinstance(key, str) or not key or '"' in key:
        raise MetadataError(f"filter key {key!r}: keys are non-empty strings and cannot contain '\"'")
    _check_text(key, "filter key")
    return "$." + json.dumps(key, ensure_ascii=False)


def _condition(path: str, slot: str, value: Any) -> str:
    """SQL matching one filter value with its JSON type: true is not 1, and "1" is not 1."""
    if value is None:
        return f"json_type(metadata, {path}) = 'null'"
    if isinstance(value, bool):
        return f"json_type(metadata, {path}) = '{'true' if value else 'false'}'"
    if isinstance(value, (int, float)):
        if isinstance(value, int) and not -INT64 <= value < INT64:  # beyond SQLite's integers: its exact digits
            if sqlite3.sqlite_version_info < (3, 38):
                raise MetadataError(f"filter value {value}: integers beyond 64 bits need SQLite 3.38 or newer")
            return f"(json_type(metadata, {path}) = 'integer' AND (metadata -> {path}) = {slot})"
        return f"(json_type(metadata, {path}) IN ('integer', 'real') AND json_extract(metadata, {path}) = {slot})"
    return f"(json_type(metadata, {path}) = 'text' AND json_extract(metadata, {path}) = {slot})"


def db_error(path: Path, exc: BaseException, doing: str) -> StoreError:
    """A :class:`StoreError` naming the database file and saying what failed (disk full said as such)."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorname", "")
    if code == "SQLITE_FULL" or "database or disk is full" in text:
        return StoreError(f"{path}: {doing} failed: the disk is full; free space and run the command again")
    if code in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in text or "not a database" in text:
        return StoreError(f"{path}: {doing} failed: the metadata database is damaged ({text}); {RECOVER_HINT}")
    if code == "SQLITE_IOERR" or "disk I/O error" in text:
        return StoreError(f"{path}: {doing} failed: I/O error ({text}); the store is unchanged")
    if code == "SQLITE_READONLY" or "readonly" in text:
        return StoreError(f"{path}: {doing} failed: the store is read-only here ({text})")
    return StoreError(f"{path}: {doing} failed: {text}")


class Fetched(list):
    """The rows of one statement, fetched (a list), with the cursor methods the callers use."""

    def fetchone(self) -> Any:
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        return list(self)


class MetaDB:
    """The metadata database of one store directory (``readonly``: as a reader, never creating or changing it)."""

    def __init__(self, directory: Path, *, readonly: bool = False, create: bool = False) -> None:
        self.path = path = directory / DB_NAME
        self.readonly = readonly
        if not create and not path.exists():
            raise StoreError(f"{path}: missing (the manifest needs it); {RECOVER_HINT}")
        try:
            if readonly:
                self.conn = _open_readonly(path)
            else:
                self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                self.conn.execute("PRAGMA busy_timeout=30000")
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                if create:
                    self.conn.executescript(SCHEMA)
            self.conn.execute("PRAGMA busy_timeout=30000")
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                self.conn.close()  # opened, then a PRAGMA or the table list failed
            raise db_error(path, exc, "opening the metadata database") from None
        if not {"items", "commits", "state"} <= tables:
            self.conn.close()
            raise StoreError(
                f"{path}: not an anybind items database (tables missing: empty or replaced); {RECOVER_HINT}"
            )

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Any = (), doing: str = "reading the metadata") -> Fetched:
        """Run one statement and fetch its rows; SQLite errors, also those met while reading the rows (a corrupt
        page under them), become a :class:`StoreError` naming the database."""
        try:
            return Fetched(self.conn.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise db_error(self.path, exc, doing) from None

    # -- generations -------------------------------------------------------------------------------------

    def check_generation(self, generation: int) -> None:
        """Refuse a database that does not hold ``generation`` (the manifest's): lost WAL, old copy, empty file."""
        newest = self.execute("SELECT MAX(generation) FROM commits").fetchone()[0] or 0
        if newest < generation:
            raise StoreError(
                f"{self.path}: holds generations up to {newest} but the manifest is at {generation} (its last "
                f"commits are lost: a deleted -wal file or an older copy of the database); {RECOVER_HINT}"
            )

    def purged_below(self) -> int:
        row = self.execute("SELECT value FROM state WHERE name = 'purged_below'").fetchone()
        return int(row[0]) if row else 0

    # -- writes (the caller holds the store's write lock) ---------------------------------------------

    def recover(self, generation: int) -> int:
        """Drop what a crashed (or failed) writer staged after ``generation``; returns the number of rows dropped.

        Staged rows have the highest ids (ids only grow), so three indexed lookups tell whether anything is
        staged; the common case writes nothing."""
        staged_marks = self.execute(
            "SELECT (SELECT added_gen FROM items ORDER BY id DESC LIMIT 1) > :g"
            " OR EXISTS (SELECT 1 FROM items WHERE removed_gen > :g)"
            " OR (SELECT MAX(generation) FROM commits) > :g",
            {"g": generation},
        ).fetchone()[0]
        if not staged_marks:
            return 0
        with self.transaction("recovering the metadata"):
            staged = self.conn.execute("DELETE FROM items WHERE added_gen > ?", (generation,)).rowcount
            self.conn.execute("UPDATE items SET removed_gen = NULL WHERE removed_gen > ?", (generation,))
            self.conn.execute("DELETE FROM commits WHERE generation > ?", (generation,))
        return staged

    def purge(self, generation: int) -> None:
        """Delete rows removed before ``generation`` (rows removed at it stay, for readers still on the one
        before); inside the caller's transaction. Readers of older generations then get StaleSnapshot."""
        if generation > self.purged_below():
            self.conn.execute("DELETE FROM items WHERE removed_gen < ?", (generation,))  # the items_removed index
            self.conn.execute("INSERT OR REPLACE INTO state (name, value) VALUES ('purged_below', ?)", (generation,))

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every query inside sees the same database state (WAL snapshot)."""
        if self.conn.in_transaction:
            yield
            return
        self.execute("BEGIN")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("COMMIT")

    def transaction(self, doing: str = "writing the metadata") -> _Transaction:
        """``with db.transaction():`` commits on success and rolls back on any exception, including a failed
        COMMIT (disk full, I/O error), so the connection can be used again; SQLite errors become StoreError."""
        return _Transaction(self, doing)

    def insert(self, ids: Sequence[int], items: Sequence[NewItem], generation: int, added_at: str) -> None:
        rows = [
            (
                item_id,
                item.key,
                item.part,
                item.modality,
                item.uri,
                item.start,
                item.end,
                item.text[:TEXT_PREVIEW] if item.text is not None else None,
                json.dumps(dict(item.metadata), ensure_ascii=False, allow_nan=False, sort_keys=True)
                if item.metadata
                else "{}",
                item.content_hash,
                added_at,
                generation,
            )
            for item_id, item in zip(ids, items, strict=True)
        ]
        self.conn.executemany(
            'INSERT INTO items (id, key, part, modality, uri, start, "end", text, metadata, content_hash, added_at, '
            "added_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def record_commit(self, generation: int, added: int, removed: int, at: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO commits (generation, added, removed, at) VALUES (?, ?, ?, ?)",
            (generation, added, removed, at),
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
        return dict(self.execute(query, {"g": generation}).fetchall())

    def rows(self, ids: Iterable[int], generation: int) -> dict[int, Row]:
        found: dict[int, Row] = {}
        for chunk in _chunks(list(ids)):
            for r in self.execute(_rows_query(len(chunk)), (*chunk, generation, generation)):
                meta = {} if r[7] == "{}" else json.loads(r[7])  # most items carry no metadata: skip the parser
                found[r[0]] = Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], meta, r[8], r[9], r[10])
        return found

    def hit_rows(self, ids: Sequence[int], generation: int) -> dict[int, tuple[Any, ...]]:
        """What a search hit shows of each visible id: (key, uri, start, end, text, metadata dict); the columns a
        hit does not need are not read."""
        found: dict[int, tuple[Any, ...]] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            query = (
                f'SELECT id, key, uri, start, "end", text, metadata FROM items WHERE id IN ({marks}) '
                "AND added_gen <= ? AND (removed_gen IS NULL OR removed_gen > ?)"
            )
            for r in self.execute(query, (*chunk, generation, generation)):
                found[r[0]] = (r[1], r[2], r[3], r[4], r[5], {} if r[6] == "{}" else json.loads(r[6]))
        return found

    def by_keys(self, keys: Sequence[str], generation: int) -> dict[str, list[int]]:
        """Visible ids (every time segment) of each caller-supplied key present at ``generation``."""
        found: dict[str, list[int]] = {}
        for chunk in _chunks(list(keys)):
            marks = ",".join("?" * len(chunk))
            query = (
                f"SELECT key, id FROM items WHERE key IN ({marks}) "
                "AND added_gen <= ? AND (removed_gen IS NULL OR removed_gen > ?) ORDER BY id"
            )
            for key, item_id in self.execute(query, (*chunk, generation, generation)):
                found.setdefault(key, []).append(item_id)
        return found

    def ids(self, modality: str, generation: int) -> np.ndarray:
        rows = self.execute(f"SELECT id FROM items WHERE modality = :m AND {VISIBLE}", {"m": modality, "g": generation})
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def matching(self, modality: str, generation: int, where: Mapping[str, Any]) -> np.ndarray:
        """Ids of a modality's visible items whose metadata matches every ``key: value`` (a list means any of)."""
        clauses, params = [], {"m": modality, "g": generation}
        for n, (key, wanted) in enumerate(where.items()):
            values = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
            params[f"p{n}"] = _json_path(key)
            options = []
            for v, value in enumerate(values):
                if not isinstance(value, (str, int, float, bool, type(None))):
                    raise MetadataError(
                        f"filter {key!r}: {value!r} is a {type(value).__name__}; filter values are strings, numbers, "
                        "booleans or None (a list means any of)"
                    )
                if isinstance(value, float) and not np.isfinite(value):
                    raise MetadataError(f"filter {key!r}: {value!r} is not a finite number")
                if isinstance(value, str):
                    _check_text(value, f"filter {key!r} value")
                if not isinstance(value, bool) and value is not None:
                    big = isinstance(value, int) and not -INT64 <= value < INT64
                    params[f"v{n}_{v}"] = str(value) if big else value
                options.append(_condition(f":p{n}", f":v{n}_{v}", value))
            clauses.append("(" + " OR ".join(options or ["0"]) + ")")
        query = f"SELECT id FROM items WHERE modality = :m AND {VISIBLE} AND " + " AND ".join(clauses or ["1"])
        return np.sort(np.fromiter((r[0] for r in self.execute(query, params)), dtype=np.int64))

    def files(self, uris: Iterable[str], generation: int) -> dict[str, tuple[str | None, list[int], set[str]]]:
        """For each uri already stored: its content hash, its item ids and the modalities of those items."""
        found: dict[str, tuple[str | None, list[int], set[str]]] = {}
        for chunk in _chunks(list(uris)):
            params: dict[str, Any] = {"g": generation, **{f"u{n}": v for n, v in enumerate(chunk)}}
            marks = ",".join(f":u{n}" for n in range(len(chunk)))
            query = (
                f"SELECT uri, content_hash, id, modality FROM items WHERE uri IN ({marks}) AND {VISIBLE} ORDER BY id"
            )
            for uri, digest, item_id, modality in self.execute(query, params):
                entry = found.setdefault(uri, (digest, [], set()))
                entry[1].append(item_id)
                entry[2].add(modality)
        return found

    def integrity(self) -> list[str]:
        """``PRAGMA integrity_check`` problems (empty when the database is sound)."""
        rows = [r[0] for r in self.execute("PRAGMA integrity_check", doing="checking the metadata")]
        return [] if rows == ["ok"] else rows


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; on a read-only directory (no -shm can be made) the file is opened immutable."""
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        if os.access(path.parent, os.W_OK):
            raise
    conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
    return conn


def _check_text(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MetadataError(f"{what} {value!r} is not valid Unicode text (lone surrogate)") from None
    if "\x00" in value:
        raise MetadataError(f"{what} {value!r} contains a NUL character")


class _Transaction:
    def __init__(self, db: MetaDB, doing: str) -> None:
        self.db, self.doing = db, doing

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise db_error(self.db.path, exc, self.doing) from None
        return self.db.conn

    def __exit__(self, kind: object, value: BaseException | None, _tb: object) -> None:
        conn = self.db.conn
        if kind is None:
            try:
                conn.execute("COMMIT")
                return
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise db_error(self.db.path, exc, self.doing) from None
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(value, sqlite3.IntegrityError) and "items.key" in str(value):
            raise StoreError(f"{self.db.path}: a key given is already in the store (use upsert to replace)") from None
        if isinstance(value, sqlite3.Error):
            raise db_error(self.db.path, value, self.doing) from None


@functools.lru_cache(maxsize=64)
def _rows_query(n: int) -> str:
    """The SELECT of ``n`` rows by id that are visible at a generation (given twice, after the ids)."""
    return (
        'SELECT id, key, modality, uri, start, "end", text, metadata, content_hash, added_at, added_gen FROM items '
        f"WHERE id IN ({','.join('?' * n)}) AND added_gen <= ? AND (removed_gen IS NULL OR removed_gen > ?)"
    )


def _chunks(values: list[Any], size: int = 900) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
