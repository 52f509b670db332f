"""``Writer``: the one writer of a store directory — lock, recovery, garbage collection and the commit.

Commit protocol (generation ``g`` -> ``g + 1``):

1. One SQLite transaction stages the new rows (``added_gen = g + 1``), marks removed rows
   (``removed_gen = g + 1``) and records the commit in ``commits``. Readers filter by the manifest's
   generation, so none of it is visible yet.
2. Each changed partition gets new immutable files only: a segment for the added vectors, tombstone files for
   segments that lost rows, at most one merged segment (see :mod:`anybind.store.compaction`), a sealed
   segment's ANN index, and the partition's moments. Each is written to a temp name, fsynced and renamed;
   then the folder is fsynced. Files of generation ``g`` are never touched.
3. A new ``manifest.json`` naming ``g + 1``, every file with its size and CRC-32, is renamed in: the commit.
4. Files that neither ``g + 1`` nor ``g`` names are deleted (readers of ``g`` keep theirs).

A failure before step 3 rolls the SQLite rows back (:meth:`MetaDB.recover`) and leaves ``g``; the writer can
go on. A failure after step 3 is not a failed commit: it is returned in ``Commit.warnings``. A crash at any
point leaves ``g`` or ``g + 1``; the next writer drops what a crashed one staged. The lock is ``flock`` on the
store directory itself, so no file can be deleted to defeat it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anybind.errors import StoreError

from . import ann, compaction
from .files import fsync_dir, is_temp, write_atomic
from .manifest import (
    ITEMS_DB,
    MANIFEST,
    SEGMENTS,
    V1_FILES,
    FileRecord,
    Manifest,
    PartitionRecord,
    SegmentRecord,
    now,
    read_manifest,
    write_manifest,
)
from .metadata import MetaDB, NewItem
from .moments import Moments, read_moments
from .segment import build_index, load_array, verified, with_deleted, write_segment

DEFAULT_LOCK_TIMEOUT = 60.0
SEAL_ROWS = 1000  # an ANN partition indexes (seals) its newest rows once they are at least this many


def lock_timeout_default() -> float:
    """``ANYBIND_LOCK_TIMEOUT`` seconds, else 60."""
    raw = os.environ.get("ANYBIND_LOCK_TIMEOUT")
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"ANYBIND_LOCK_TIMEOUT={raw!r} is not a number of seconds") from None
    if value < 0:
        raise StoreError(f"ANYBIND_LOCK_TIMEOUT={raw!r}: give seconds >= 0")
    return value


@dataclass(frozen=True)
class Commit:
    """What one commit did: its generation, the ids given to the new items (in their order), the removed ids
    per modality, and problems after the commit point (the commit stands; e.g. a failed directory fsync)."""

    generation: int
    ids: list[int]
    removed: dict[str, list[int]]
    warnings: list[str] = field(default_factory=list)


def disk_error(root: Path, exc: OSError, doing: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"{root}: {doing} failed: the disk is full; free space and run the command again")
    return StoreError(f"{root}: {doing} failed: {exc.strerror or exc} ({exc.filename or root})")


class Writer:
    """The writer of one store directory. ``with writer.locked():`` around every write; not thread-safe."""

    def __init__(self, root: Path, *, lock_timeout: float | None = None) -> None:
        self.root = root
        self.lock_timeout = lock_timeout_default() if lock_timeout is None else lock_timeout
        self.manifest: Manifest | None = None
        self._db: MetaDB | None = None
        self._fd: int | None = None
        self._depth = 0
        self._moments_cache: dict[tuple[str, str, str], Moments] = {}  # (modality, file, crc) -> what it holds
        self._written: tuple[int, int, int] | None = None  # stat of the manifest this writer renamed in last

    @property
    def db(self) -> MetaDB:
        if self._db is None:
            self._db = MetaDB(self.root, create=not (self.root / MANIFEST).exists())
        return self._db

    def close(self) -> None:
        """Close the metadata; a writer that committed also deletes the files only the previous generation named
        (if no other writer holds the lock), so a finished ingest leaves one generation on disk. A reader still
        on that generation finds a file gone and searches the current one instead."""
        if self.manifest is not None and not self._depth:
            with contextlib.suppress(StoreError, OSError):
                if self._acquire(wait=False):
                    try:
                        self.collect_garbage(read_manifest(self.root))
                    finally:
                        self._release()
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- locking and recovery ------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[Manifest]:
        """Hold the store's write lock; on first entry read the newest manifest, check the metadata holds its
        generation, drop what a crashed writer staged and delete files no generation names."""
        if self._depth:
            self._depth += 1
            try:
                assert self.manifest is not None
                yield self.manifest
            finally:
                self._depth -= 1
            return
        self._acquire()
        self._depth = 1
        try:
            manifest = self._current_manifest()
            self.db.check_generation(manifest.generation)
            self.db.recover(manifest.generation)
            if self.manifest is None or self.manifest.generation != manifest.generation:  # another writer was here
                self.collect_garbage(manifest)  # (this writer's own commits collect as they go)
            self.manifest = manifest
            yield manifest
        finally:
            self._depth = 0
            self._release()

    def _manifest_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.root / MANIFEST)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _current_manifest(self) -> Manifest:
        """The manifest on disk: the one this writer committed last when the file is still the one it renamed in
        (same inode, size and mtime), else read and verified again."""
        stamp = self._manifest_stamp()
        if self.manifest is not None and stamp is not None and stamp == self._written:
            return self.manifest
        return read_manifest(self.root)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The store directory's lock alone, without reading a manifest or recovering (creating a store,
        migrating one); waits up to ``lock_timeout`` like :meth:`locked`."""
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def _acquire(self, wait: bool = True) -> bool:
        """Take the lock, waiting up to ``lock_timeout`` (then StoreError); ``wait=False``: False at once when
        another writer holds it."""
        try:
            fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot open the store directory: {exc.strerror or exc}") from None
        deadline = time.monotonic() + (self.lock_timeout if wait else 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    if not wait:
                        return False
                    raise StoreError(
                        f"{self.root}: another process is writing to this store (waited {self.lock_timeout:g} s; "
                        "set ANYBIND_LOCK_TIMEOUT or lock_timeout= to wait longer)"
                    ) from None
                time.sleep(0.05)

    def _release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def collect_garbage(self, manifest: Manifest, previous: Manifest | None = None) -> None:
        """Delete segment files neither ``manifest`` nor ``previous`` names, and temp files of crashed writes."""
        keep = manifest.file_names() | (previous.file_names() if previous else set())
        with contextlib.suppress(OSError):
            for entry in self.root.iterdir():
                if is_temp(entry.name):
                    entry.unlink()
                elif entry.name in V1_FILES and manifest.format != 1:  # what a migration left behind
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
        folder = self.root / SEGMENTS
        if not folder.is_dir():
            return
        for part in folder.iterdir():
            if not part.is_dir():
                continue
            for entry in part.iterdir():
                if f"{part.name}/{entry.name}" not in keep:
                    with contextlib.suppress(OSError):
                        entry.unlink()

    # -- the commit -------------------------------------------------------------------------------------

    def commit(
        self,
        items: Sequence[NewItem] = (),
        remove: Iterable[int] = (),
        *,
        upsert: bool = False,
        rebuild: Mapping[str, str] | None = None,
        params: Mapping[str, dict[str, int]] | None = None,
    ) -> Commit:
        """Write one generation: add ``items`` (vectors already unit length), remove ids, rebuild partitions
        (modality -> index_factory: all segments merged into one and indexed), set search parameters.

        Items with a ``key`` that is already in the store are refused, or with ``upsert`` replace it in this
        commit. A partition that receives items with a file and a time segment is recorded as time-segmented
        (searches roll it up per file). Caller holds :meth:`locked`.
        """
        if not self._depth or self.manifest is None:
            raise RuntimeError("Writer.commit outside `with writer.locked()`")
        old = self.manifest
        generation = old.generation + 1
        ids = list(range(old.next_id, old.next_id + len(items)))
        keys = sorted({item.key for item in items if item.key is not None})
        wanted = set(remove)
        with self.db.transaction("staging the commit's rows"):
            if keys:
                present = self.db.by_keys(keys, old.generation)
                if present and not upsert:
                    shown = ", ".join(repr(k) for k in sorted(present)[:5])
                    more = f" and {len(present) - 5} more" if len(present) > 5 else ""
                    raise StoreError(f"{self.root}: keys already in the store: {shown}{more} (use upsert to replace)")
                wanted |= {i for found in present.values() for i in found}
            self.db.purge(old.generation)
            removed = self.db.mark_removed(sorted(wanted), generation)
            self.db.insert(ids, items, generation, now())
            self.db.record_commit(generation, len(items), sum(map(len, removed.values())), now())
        manifest = old.model_copy(deep=True)
        manifest.generation, manifest.next_id = generation, old.next_id + len(items)
        added: dict[str, list[int]] = {}
        for position, item in enumerate(items):
            added.setdefault(item.modality, []).append(position)
        changed = set(added) | set(removed) | set(rebuild or {}) | set(params or {})
        try:
            for modality in sorted(changed):
                record = manifest.partitions.get(modality) or PartitionRecord(factory=manifest.default_index)
                vectors = np.stack([items[p].vector for p in added[modality]]) if modality in added else None
                new_ids = np.asarray([ids[p] for p in added.get(modality, [])], dtype=np.int64)
                manifest.partitions[modality] = self._partition(
                    modality,
                    record,
                    generation,
                    new_ids,
                    vectors,
                    removed.get(modality, []),
                    (rebuild or {}).get(modality),
                )
                if params and modality in params:
                    manifest.partitions[modality].params = dict(params[modality])
                if any(items[p].start is not None and items[p].uri is not None for p in added.get(modality, [])):
                    manifest.partitions[modality].temporal = True
            write_manifest(self.root, manifest)
        except BaseException as exc:
            if self._generation_on_disk() != generation:  # not committed: undo, so this writer can go on
                with contextlib.suppress(Exception):
                    self.db.recover(old.generation)
                with contextlib.suppress(Exception):
                    self.collect_garbage(old)
                if isinstance(exc, OSError):
                    raise disk_error(self.root, exc, "commit") from exc
                if isinstance(exc, StoreError):
                    raise StoreError(f"commit failed, the store is unchanged: {exc}") from exc
                raise
            commit = self._adopt(old, manifest, ids, removed, [f"after the commit point: {exc}"])
            if not isinstance(exc, Exception):  # Ctrl-C after the rename: the commit stands, the interrupt goes on
                raise
            return commit
        return self._adopt(old, manifest, ids, removed, [])

    def _adopt(
        self, old: Manifest, manifest: Manifest, ids: list[int], removed: dict[str, list[int]], warnings: list[str]
    ) -> Commit:
        self.manifest = manifest
        self._written = self._manifest_stamp()
        try:
            self.collect_garbage(manifest, previous=old)
        except OSError as exc:  # pragma: no cover - the next writer collects them
            warnings.append(f"old files not deleted yet: {exc}")
        return Commit(manifest.generation, ids, removed, warnings)

    def _generation_on_disk(self) -> int | None:
        try:
            return read_manifest(self.root).generation
        except StoreError:
            return None

    def _partition(
        self,
        modality: str,
        record: PartitionRecord,
        generation: int,
        new_ids: np.ndarray,
        vectors: np.ndarray | None,
        removed: list[int],
        rebuild: str | None,
    ) -> PartitionRecord:
        """The partition's record at ``generation``: new files for what changed, every other file kept."""
        dim = self.manifest.space.dim  # type: ignore[union-attr]
        folder = self.root / SEGMENTS / modality
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(folder.parent)
            fsync_dir(self.root)
        moments = self._moments(modality, folder, record, dim)
        segments = list(record.segments)
        if removed:
            gone = np.asarray(sorted(removed), dtype=np.int64)
            for n, seg in enumerate(segments):
                inside = gone[(gone >= seg.min_id) & (gone <= seg.max_id)]
                if not len(inside) or not seg.rows:
                    continue
                seg_ids = np.asarray(load_array(folder / seg.ids.name, seg.ids, "<i8", (seg.rows,), mmap=False))
                pos = np.searchsorted(seg_ids, inside)
                pos = pos[(pos < seg.rows) & (seg_ids[np.minimum(pos, seg.rows - 1)] == inside)]
                if not len(pos):
                    continue
                data = load_array(folder / seg.vectors.name, seg.vectors, "<f4", (seg.rows, dim))
                moments.add(np.asarray(data[np.sort(pos)]), sign=-1)
                segments[n] = with_deleted(folder, seg, pos, generation)
        if vectors is not None and len(new_ids):
            seg = write_segment(folder, f"{generation:08d}-a", dim, new_ids, [vectors], len(new_ids))
            moments.add(vectors)
            segments.append(seg)
        factory = record.factory
        if rebuild is not None:
            factory = rebuild
            live = [s for s in segments if s.live]
            merged = compaction.merge(folder, live, dim, f"{generation:08d}-o") if live else None
            segments = [merged] if merged is not None else []
            if merged is not None and merged.rows >= ann.min_train(factory, dim) and factory != ann.EXACT:
                segments = [build_index(folder, merged, dim, factory)]
        else:
            segments = self._merged(folder, [s for s in segments if s.live], dim, factory, generation)
        count = sum(s.live for s in segments)
        payload = moments.to_bytes()
        moments_file = write_atomic(folder / f"moments.{generation}.safetensors", payload, sync_dir=False)
        size = len(payload)
        self._moments_cache[(modality, f"moments.{generation}.safetensors", moments_file)] = moments.copy()
        fsync_dir(folder)
        return record.model_copy(
            update={
                "factory": factory,
                "count": count,
                "segments": segments,
                "moments": FileRecord(name=f"moments.{generation}.safetensors", bytes=size, crc32=moments_file),
                "params": record.params if rebuild is None or rebuild == record.factory else {},
            }
        )

    def _merged(
        self, folder: Path, segments: list[SegmentRecord], dim: int, factory: str, generation: int
    ) -> list[SegmentRecord]:
        """The partition's segments after this commit's merges (at most one log merge, plus sealing).

        An ANN partition keeps its unsealed segments as a contiguous tail: once the tail holds ``max(SEAL_ROWS,
        rows to train factory)`` live rows it is merged into one segment and indexed (sealed). Log merges then run
        among sealed segments only (a Flat partition: among all), each merged segment indexed again.
        """
        sealed_until = len(segments)
        if factory != ann.EXACT:
            seal = max(SEAL_ROWS, ann.min_train(factory, dim))
            while sealed_until and segments[sealed_until - 1].index is None:
                sealed_until -= 1
            tail = segments[sealed_until:]
            if tail and sum(s.live for s in tail) >= seal:
                one = tail[0] if len(tail) == 1 and not tail[0].deleted_rows else None
                one = one or compaction.merge(folder, tail, dim, f"{generation:08d}-s")
                segments[sealed_until:] = [
                    build_index(folder, one, dim, factory, self._trained(folder, segments, factory))
                ]
                sealed_until = len(segments)
        plan = compaction.plan_merge(segments[:sealed_until])
        if plan is not None:
            start, stop = plan
            merged = compaction.merge(folder, segments[start:stop], dim, f"{generation:08d}-m")
            if factory != ann.EXACT and merged.rows >= ann.min_train(factory, dim):
                merged = build_index(folder, merged, dim, factory, self._trained(folder, segments, factory))
            segments[start:stop] = [merged]
        return segments

    def _moments(self, modality: str, folder: Path, record: PartitionRecord, dim: int) -> Moments:
        """The partition's moments at the current generation: a copy of what this writer last wrote for it, or
        read (and verified) from the file when another writer wrote it."""
        if record.moments is None:
            return Moments.empty(dim)
        key = (modality, record.moments.name, record.moments.crc32)
        cached = self._moments_cache.get(key)
        for other in [k for k in self._moments_cache if k[0] == modality and k != key]:
            del self._moments_cache[other]
        if cached is not None:
            return cached.copy()
        return read_moments(folder, record.moments, dim, record.count)

    @staticmethod
    def _trained(folder: Path, segments: Sequence[SegmentRecord], factory: str) -> object | None:
        """A trained index of ``factory`` from another sealed segment, reused so merges do not train again
        (IVF centroids trained on an earlier sample of the same partition)."""
        import faiss

        for seg in segments:
            if seg.index is not None and seg.built == factory and "IVF" in factory:
                return faiss.read_index(str(verified(folder / seg.index.name, seg.index)))
        return None


def create_store(root: Path, manifest: Manifest) -> None:
    """Lay out a new store: the items database (generation 0 recorded), then the manifest (last: the commit)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / SEGMENTS).mkdir(exist_ok=True)
    db = MetaDB(root, create=True)
    try:
        with db.transaction("creating the metadata"):
            db.record_commit(0, 0, 0, now())
    finally:
        db.close()
    fsync_dir(root)
    write_manifest(root, manifest)


def leftover_of_creation(root: Path) -> bool:
    """Whether ``root`` holds only what a writer killed while creating a store leaves (an empty items database,
    an empty segments folder, temp files): safe to create the store over. Anything else is refused."""
    for entry in root.iterdir():
        name = entry.name
        if is_temp(name) or name in (f"{ITEMS_DB}-wal", f"{ITEMS_DB}-shm", f"{ITEMS_DB}-journal"):
            continue
        if name == SEGMENTS and entry.is_dir() and not any(entry.iterdir()):
            continue
        if name == ITEMS_DB:
            try:
                db = MetaDB(root, readonly=True)
            except StoreError:
                return entry.stat().st_size == 0
            try:
                rows = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
                newest = db.execute("SELECT MAX(generation) FROM commits").fetchone()[0] or 0
            finally:
                db.close()
            if rows == 0 and newest == 0:
                continue
        return False
    return True
