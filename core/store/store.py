"""``Store``: a directory of modality partitions (immutable segments), SQLite metadata and a manifest.

Layout (docs/store.md has the whole story)::

    DIR/manifest.json                       format 2, generation, next id, space, per partition its files + CRC-32
    DIR/items.sqlite                        items: id, key, modality, uri, segment, text, metadata, generations
    DIR/segments/<modality>/<seg>.vectors.npy / .ids.npy    raw float32 vectors and sorted int64 ids
    DIR/segments/<modality>/<seg>.<gen>.deleted.npy         tombstones (row positions)
    DIR/segments/<modality>/<seg>.index.faiss               the ANN index of a sealed segment
    DIR/segments/<modality>/moments.<gen>.safetensors       score statistics for calibration

``Store`` is a façade: a :class:`~anybind.store.writer.Writer` (lock, recovery, commits) for writes, a
:class:`~anybind.store.snapshot.Snapshot` (one generation, read-only) for reads, and
:class:`~anybind.store.ingest.Ingest` for embedding inputs. Not thread-safe: use one ``Store`` per thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anybind.errors import AnybindError, MetadataError, StoreError
from anybind.plugin_host import PluginHost, get_host
from anybind.space import Space
from anybind.space_config import SpaceConfig
from anybind.space_loader import load_space

from . import inputs
from .files import directory_bytes
from .hits import SearchResult
from .manifest import ITEMS_DB, MANIFEST, SEGMENTS, Manifest, SpaceRecord, read_manifest, read_raw
from .metadata import MetaDB, Row
from .partition import PartitionView
from .records import IndexReport, Metadata, RemoveReport, check_name
from .search import query_vector, run_search
from .snapshot import Snapshot, StaleSnapshot
from .writer import Writer, create_store, leftover_of_creation

DEFAULT_SPACE = "anybind-mini"
"""The space of a new store opened without one (the small space the ``mini`` plugin ships)."""
STORE_FILES = (MANIFEST, ITEMS_DB, SEGMENTS, "metadata.sqlite", "partitions")  # v2 and v1 names
SEARCH_RETRIES = 5


def _default_space(root: Path, device: str, batch_size: int, host: PluginHost | None) -> Space:
    """:data:`DEFAULT_SPACE` for a new store opened without a space; a :class:`StoreError` saying how to pass one
    when it cannot be loaded (the ``mini`` plugin blocked or missing, its weights unreadable)."""
    try:
        return load_space(DEFAULT_SPACE, device=device, batch_size=batch_size, host=host)
    except AnybindError as exc:
        raise StoreError(
            f"{root}: a new store needs a space, and the default space {DEFAULT_SPACE!r} is not available ({exc}); "
            "pass space=... (CLI: --space or ANYBIND_SPACE)"
        ) from exc


def _refuse_without_manifest(root: Path) -> None:
    """A directory with store files but no manifest is damaged: never re-created over, never read as empty."""
    found = sorted(p.name for p in root.iterdir() if p.name in STORE_FILES)
    if found:
        raise StoreError(
            f"{root}: holds store files ({', '.join(found)}) but no readable {MANIFEST}: the store is damaged and is "
            "not re-created over. Restore manifest.json from a backup (run `anybind check --db DIR` to see what is "
            "there), or index into a new --db"
        )
    raise StoreError(f"{root}: directory is not empty and is not an anybind store; choose a new --db")


class Store:
    """A persistent, modality-partitioned vector store. Open with :meth:`Store.open`; not thread-safe."""

    def __init__(self, path: Path, space: Space | None, options: dict[str, Any]) -> None:
        self.path = path
        self._manifest_path = str(path / MANIFEST)  # stat()ed before every search: a new generation?
        self._space = space
        self._options = options
        self._writer: Writer | None = None
        self._db: MetaDB | None = None
        self._snap: Snapshot | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._segments: dict[tuple[str, ...], Any] = {}  # loaded segments, shared by this store's snapshots
        self._scanner: Any = False  # a TorchScanner on a CUDA machine; False = not looked for yet
        self.snapshot()

    # -- opening ---------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        space: Space | str | os.PathLike[str] | SpaceConfig | None = None,
        *,
        create: bool = True,
        index: str | None = None,
        device: str = "auto",
        batch_size: int = 32,
        host: PluginHost | None = None,
        lock_timeout: float | None = None,
        migrate: bool = False,
    ) -> Store:
        """Open (or create) the store at ``path``.

        ``space`` is a loaded :class:`Space`, a spec, a TOML space file or a ``SpaceConfig``; a new store opened
        without one uses :data:`DEFAULT_SPACE` (``anybind-mini``). When given for an existing store it must have
        the fingerprint the store was built with; without it the store's recorded space is loaded on first use.
        ``index`` is the faiss ``index_factory`` string of a new store (default Flat). ``lock_timeout``: seconds a
        write waits for another writer (default ``ANYBIND_LOCK_TIMEOUT`` or 60). ``migrate=True`` converts a
        store of format 1 in place first (see :mod:`anybind.store.migrate`); without it such a store is refused.
        """
        root = Path(path)
        options = {"device": device, "batch_size": batch_size, "host": host, "lock_timeout": lock_timeout}
        if space is not None and not isinstance(space, Space):  # a spec, a space file or a SpaceConfig
            space = load_space(space, device=device, batch_size=batch_size, host=host)
        if (root / MANIFEST).exists():
            if migrate and read_raw(root).get("format") == 1:
                from .migrate import migrate_v1

                migrate_v1(root, lock_timeout=lock_timeout)
            manifest = read_manifest(root)
            if space is not None and space.fingerprint != manifest.space.fingerprint:
                raise StoreError(
                    f"{root} was built with space {manifest.space.name!r} ({manifest.space.fingerprint}), not "
                    f"{space.name!r} ({space.fingerprint}); a store cannot mix spaces (use another --db)"
                )
            if index is not None and index != manifest.default_index:
                raise StoreError(
                    f"{root} creates {manifest.default_index!r} partitions; to change an existing partition's index "
                    f"type, run `anybind optimize --db {root} --index {index}` (Store.optimize(index=...))"
                )
            return cls(root, space, options)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root}: exists and is not a directory")
        if not create:
            if root.is_dir() and any(p.name in STORE_FILES for p in root.iterdir()):
                _refuse_without_manifest(root)
            raise StoreError(f"{root}: not an anybind store (no {MANIFEST})")
        if root.exists() and not leftover_of_creation(root):
            _refuse_without_manifest(root)
        if space is None:
            space = _default_space(root, device, batch_size, host)
        from .ann import make_index

        make_index(space.dim, index or "Flat")  # refuse a bad factory string before creating anything
        root.mkdir(parents=True, exist_ok=True)
        record = SpaceRecord(
            spec=space.name,
            config=space.config.model_dump(),
            name=space.name,
            fingerprint=space.fingerprint,
            dim=space.dim,
            describe=space.describe(),
        )
        writer = Writer(root, lock_timeout=lock_timeout)
        with writer.exclusive():  # two processes creating the same store: one creates, the other opens it
            if not (root / MANIFEST).exists():
                if not leftover_of_creation(root):
                    _refuse_without_manifest(root)
                for name in (ITEMS_DB, f"{ITEMS_DB}-wal", f"{ITEMS_DB}-shm"):
                    (root / name).unlink(missing_ok=True)
                create_store(root, Manifest(space=record, default_index=index or "Flat"))
        return cls.open(
            root,
            space,
            create=False,
            index=index,
            device=device,
            batch_size=batch_size,
            host=host,
            lock_timeout=lock_timeout,
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._db is not None:
            self._db.close()
        self._writer = self._db = self._snap = None
        self._segments.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def host(self) -> PluginHost:
        """The plugin host whose modalities the store knows (without loading the space's models)."""
        if self._space is not None:
            return self._space.host
        return self._options["host"] or get_host()

    @property
    def space(self) -> Space:
        """The store's space (loaded from the manifest's spec on first use when not given to ``open``)."""
        if self._space is None:
            record = self.manifest.space
            space = load_space(
                SpaceConfig.model_validate(record.config),
                device=self._options["device"],
                batch_size=self._options["batch_size"],
                host=self._options["host"],
            )
            if space.fingerprint != record.fingerprint:
                raise StoreError(
                    f"{self.path}: its space {record.spec!r} now loads as {space.fingerprint}, but the store was "
                    f"built with {record.fingerprint} (the model changed); re-index into a new store"
                )
            self._space = space
        return self._space

    # -- the two halves: a writer and the current snapshot --------------------------------------------

    @property
    def writer(self) -> Writer:
        """The store's :class:`Writer` (opened on first write)."""
        if self._writer is None:
            self._writer = Writer(self.path, lock_timeout=self._options["lock_timeout"])
        return self._writer

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self._manifest_path)
        except FileNotFoundError:
            raise StoreError(f"{self.path}: {MANIFEST} is gone (the store was deleted or damaged)") from None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def snapshot(self) -> Snapshot:
        """The current generation's read view (re-read when another process or this one committed)."""
        stamp = self._stat()
        if self._snap is None or stamp != self._stamp:
            if self._db is None:
                self._db = MetaDB(self.path, readonly=True)
            if self._scanner is False:
                from .torch_scan import TorchScanner

                self._scanner = TorchScanner.create() if self._options["device"] != "cpu" else None
            snap = Snapshot.open(self.path, self._db, self._scanner, self._segments)
            live = {(name, s.vectors.name) for name, p in snap.manifest.partitions.items() for s in p.segments}
            gone = [key for key in self._segments if (key[0], key[1]) not in live]  # merged away
            for key in gone:
                del self._segments[key]
            if self._scanner is not None and gone:  # their device copies too
                self._scanner.drop(f"{key[0]}/{key[1].removesuffix('.vectors.npy')}" for key in gone)
            self._snap, self._stamp = snap, stamp
        return self._snap

    def refresh(self) -> None:
        """Pick up a generation committed by another process (searches do this themselves)."""
        self.snapshot()

    @property
    def manifest(self) -> Manifest:
        return self.snapshot().manifest

    @property
    def dim(self) -> int:
        return self.manifest.space.dim

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def modalities(self) -> list[str]:
        """Partitions with at least one item."""
        return self.snapshot().modalities

    def __len__(self) -> int:
        return len(self.snapshot())

    # -- writing ---------------------------------------------------------------------------------------

    def add_vectors(
        self,
        modality: str,
        vectors: Any,
        *,
        uris: Sequence[str | None] | None = None,
        texts: Sequence[str | None] | None = None,
        segments: Sequence[tuple[float, float] | None] | None = None,
        metadata: Metadata = None,
        keys: Sequence[str] | None = None,
        upsert: bool = False,
    ) -> list[int]:
        """Add precomputed anchor-space vectors (normalised here) in one commit; all or nothing. Returns the ids.

        ``keys``: one caller string per vector, unique in the store (a key already present is an error, or with
        ``upsert=True`` its item is replaced in the same commit). Raises :class:`EmbeddingError` naming the row for
        a wrong shape, NaN/inf or an all-zero vector, :class:`MetadataError` for bad keys, segments or metadata.
        """
        check_name(modality)
        array = inputs.unit_vectors(vectors, modality, self.dim)
        if len(array) == 0:
            return []
        items = inputs.vector_items(
            modality, array, uris=uris, texts=texts, segments=segments, metadata=metadata, keys=keys
        )
        with self.writer.locked():
            commit = self.writer.commit(items, upsert=upsert)
        return commit.ids

    def upsert_vectors(self, modality: str, vectors: Any, *, keys: Sequence[str], **columns: Any) -> list[int]:
        """:meth:`add_vectors` that replaces the items whose keys are already in the store (one commit)."""
        return self.add_vectors(modality, vectors, keys=keys, upsert=True, **columns)

    def add(
        self,
        modality: str,
        items: Any,
        *,
        metadata: Metadata = None,
        keys: Sequence[str] | None = None,
        upsert: bool = False,
    ) -> IndexReport:
        """Embed ``items`` with the store's space and add every one that can be embedded, in one commit.

        A path becomes the item's ``uri``; a string given for ``text`` is stored as the item's text. Time-segmented
        inputs (audio, video) become one item per segment (``start``/``end`` seconds). Items that fail are in the
        report's ``errors`` (with the input named); the rest are added. ``keys``/``upsert`` as in
        :meth:`add_vectors` (all segments of one input share its key's replacement).
        """
        from .ingest import Ingest

        return Ingest(self.space, self.writer, exclude=[self.path]).items(
            modality, items, metadata=metadata, keys=keys, upsert=upsert
        )

    def upsert(self, modality: str, items: Any, *, keys: Sequence[str], metadata: Metadata = None) -> IndexReport:
        """:meth:`add` that replaces the items whose keys are already in the store (one commit)."""
        return self.add(modality, items, metadata=metadata, keys=keys, upsert=True)

    def add_files(self, paths: Iterable[str | os.PathLike[str]], **options: Any) -> IndexReport:
        """Index files (and folders): sniff each file's modality, decode in worker threads, embed, commit.

        An unchanged file (same content hash at the same path, same modality) is skipped; a changed one replaces
        its old items. Options: ``recursive``, ``modality``, ``metadata`` (dict or callable(path) -> dict),
        ``workers``, ``commit_every``, ``progress`` (callable(done, total)). See :mod:`anybind.store.ingest`.
        """
        from .ingest import Ingest

        return Ingest(self.space, self.writer, exclude=[self.path]).files(list(paths), **options)

    def remove(self, ids: Iterable[int] | None = None, *, keys: Iterable[str] | None = None) -> RemoveReport:
        """Remove items by id and/or by key in one commit; those not in the store are reported as ``missing``."""
        wanted = inputs.item_ids(ids or [])
        key_list = inputs.check_keys(list(keys), len(list(keys))) if keys is not None else []
        if not wanted and not key_list:
            return RemoveReport([], [], self.generation)
        with self.writer.locked() as manifest:
            db = self.writer.db
            by_key = db.by_keys([k for k in key_list if k is not None], manifest.generation)
            present = set(db.rows(wanted, manifest.generation)) | {i for found in by_key.values() for i in found}
            missing: list[Any] = [i for i in wanted if i not in present]
            missing += [k for k in key_list if k not in by_key]
            if not present:
                return RemoveReport([], missing, manifest.generation)
            commit = self.writer.commit(remove=sorted(present))
        gone = sorted(i for ids in commit.removed.values() for i in ids)
        return RemoveReport(gone, missing, commit.generation)

    # -- reading ---------------------------------------------------------------------------------------

    def get(self, ids: Iterable[int] | None = None, *, keys: Iterable[str] | None = None) -> list[Row]:
        """The stored rows (metadata, not vectors) of ``ids`` and/or ``keys`` present now, in id order."""
        snap = self.snapshot()
        wanted = set(inputs.item_ids(ids or []))
        with snap.reading() as db:
            if keys is not None:
                key_list = [k for k in inputs.check_keys(list(keys), len(list(keys))) if k is not None]
                wanted |= {i for found in db.by_keys(key_list, snap.generation).values() for i in found}
            rows = db.rows(sorted(wanted), snap.generation)
        return [rows[i] for i in sorted(rows)]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored unit vectors of ``ids`` (anchor space, float32 ``(n, d)``); rows of absent ids are NaN."""
        snap = self.snapshot()
        want = np.asarray(list(ids), dtype=np.int64)
        out = np.full((len(want), snap.dim), np.nan, dtype=np.float32)
        for name in snap.manifest.partitions:
            part = snap.partition(name)
            if part is not None and len(want):
                found = part.vectors(want)
                hit = ~np.isnan(found[:, 0])
                out[hit] = found[hit]
        return out

    def partition(self, modality: str) -> PartitionView | None:
        """The partition of ``modality`` at the current generation (its segments, moments, index types)."""
        return self.snapshot().partition(modality)

    def search(
        self,
        text: Any = None,
        image: Any = None,
        audio: Any = None,
        video: Any = None,
        vector: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        weights: Mapping[str, float] | None = None,
        to: str | Sequence[str] | None = None,
        k: int = 10,
        where: Mapping[str, Any] | None = None,
        rerank: int | None = None,
        segments: bool = False,
    ) -> SearchResult:
        """Search the ``to`` partitions (default: all) with a query of any modality.

        Give one input (``text=``, ``image=``, ``audio=``, ``video=``, ``vector=``, or ``query={modality:
        item}`` for plugin modalities); several inputs make a composed query (their weighted sum, e.g. an image
        plus a text modifier). ``where`` filters on metadata inside the search (``{"album": "x"}``, a list
        means any of). ``rerank=N`` re-scores the top N ANN candidates exactly from the stored vectors.
        Hits from several partitions are ranked by calibrated score (see :class:`~anybind.store.hits.Hit`).
        Hits of time-segmented partitions roll up per file: each file's best segment, with its ``start``/``end``;
        ``segments=True`` returns every matching segment instead. Every hit comes from one generation.
        """
        named = {"text": text, "image": image, "audio": audio, "video": video, "vector": vector}
        given = {name: value for name, value in named.items() if value is not None}
        if query is not None and not isinstance(query, Mapping):
            raise MetadataError(f"query must be a dict of modality -> item, got {type(query).__name__}")
        given.update(query or {})
        snap = self.snapshot()
        q = query_vector(snap.dim, lambda modality, item: self.space.embed(modality, [item])[0], given, weights)
        for attempt in range(SEARCH_RETRIES):
            if attempt or "vector" not in given or len(given) > 1:  # embedding took a while: look again
                snap = self.snapshot()
            names = [] if to is None else ([t.strip() for t in to.split(",")] if isinstance(to, str) else list(to))
            known = () if all(n in snap.manifest.partitions for n in names) else list(self.host.modalities)
            try:
                return run_search(snap, q, to=to, known=known, k=k, where=where, rerank=rerank, rollup=not segments)
            except StaleSnapshot:
                self._stamp = None  # a writer moved on under this search: search the new generation instead
        raise StoreError(f"{self.path}: writers kept replacing the generation under a search ({SEARCH_RETRIES} tries)")

    def info(self) -> dict[str, Any]:
        """Space, generation, items per partition, index types, segments and bytes on disk. Every partition's
        files are checked (size, CRC-32) on the way: a damaged one raises :class:`StoreError` naming it."""
        snap = self.snapshot()
        manifest = snap.manifest
        for name in manifest.partitions:
            snap.partition(name)
        partitions = {}
        for name, record in sorted(manifest.partitions.items()):
            sealed = [s.built for s in record.segments if s.built]
            built = sealed[0] if sealed and len(sealed) == len(record.segments) else "Flat"
            files = [f for s in record.segments for f in (s.vectors, s.ids, s.deleted, s.index) if f is not None]
            files += [record.moments] if record.moments else []
            partitions[name] = {
                "count": record.count,
                "index": built,
                "requested_index": record.factory,
                "pending_training": built != record.factory,
                "params": record.params,
                "segments": len(record.segments),
                "sealed_segments": len(sealed),
                "deleted_rows": sum(s.deleted_rows for s in record.segments),
                "temporal": record.temporal,
                "bytes": sum(f.bytes for f in files),
            }
        return {
            "path": str(self.path),
            "format": manifest.format,
            "generation": manifest.generation,
            "space": {"name": manifest.space.name, "fingerprint": manifest.space.fingerprint, "dim": self.dim},
            "items": sum(p.count for p in manifest.partitions.values()),
            "default_index": manifest.default_index,
            "partitions": partitions,
            "bytes": directory_bytes(self.path),
            "created_at": manifest.created_at,
            "updated_at": manifest.updated_at,
        }

    def check_recall(self, k: int = 10, queries: int = 200, seed: int = 0) -> dict[str, dict[str, Any]]:
        """ANN recall@k of each partition against exact search, with stored vectors as queries."""
        from .tuning import partition_recall

        snap = self.snapshot()
        return {name: partition_recall(snap, name, k=k, queries=queries, seed=seed) for name in snap.modalities}

    def optimize(
        self, modality: str | None = None, index: str | None = None, target_recall: float = 0.95
    ) -> dict[str, dict[str, Any]]:
        """Merge each partition into one segment indexed with its ANN type (a grown Flat partition becomes IVF,
        any becomes ``index``) and tune nprobe/efSearch to the smallest value reaching ``target_recall``."""
        from .tuning import optimize

        return optimize(self.writer, self.snapshot, modality=modality, index=index, target_recall=target_recall)

    def check(self) -> dict[str, Any]:
        """Verify every file (checksums, counts, ids) and the metadata; see :func:`anybind.store.check.check`."""
        from .check import check

        return check(self.path)
