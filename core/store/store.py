"""``Store``: a directory holding one FAISS partition per modality, SQLite metadata and a manifest.

Layout::

    DIR/manifest.json               format, generation, next id, space (spec + fingerprint), partitions
    DIR/metadata.sqlite             items: id, modality, uri, segment, text, metadata, hash, generations, vector
    DIR/partitions/<modality>.<generation>.faiss              IDMap2 index (inner product)
    DIR/partitions/<modality>.<generation>.moments.safetensors  score statistics for calibration
    DIR/lock                        held (flock) by the one writer

A commit stages SQLite rows for generation g+1 (invisible to readers, who filter by the manifest's
generation), writes the changed partitions under new names (temp file, fsync, rename), and finally renames a
new manifest in. A crash at any point leaves generation g or g+1; the next writer drops what g+1 staged.
"""

from __future__ import annotations

import contextlib
import fcntl
import operator
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anybind.errors import AnybindError, EmbeddingError, MetadataError, StoreError
from anybind.modality import describe_item
from anybind.plugin_host import PluginHost, get_host
from anybind.space import Space
from anybind.space_config import SpaceConfig
from anybind.space_loader import load_space

from .files import directory_bytes
from .hits import SearchResult
from .manifest import Manifest, PartitionRecord, SpaceRecord, now, read_manifest, write_manifest
from .metadata import MetaDB, NewItem
from .partition import Partition, make_index, min_train
from .records import IndexReport, Metadata, RemoveReport, check_name, file_digest, metadata_list

PARTITIONS = "partitions"
LOCK = "lock"
DEFAULT_SPACE = "anybind-mini"
"""The space of a new store opened without one (the small space the ``mini`` plugin ships)."""


def _is_segment(value: Any) -> bool:
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite([start, end]).all()) and 0 <= start <= end


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


def _leftover_of_creation(name: str) -> bool:
    """Files a writer killed while creating a store can leave behind (the next one creates it again)."""
    return name in (LOCK, PARTITIONS) or name.startswith(("metadata.sqlite", ".manifest.json."))


class Store:
    """A persistent, modality-partitioned FAISS store. Open with :meth:`Store.open`; not thread-safe."""

    def __init__(self, path: Path, manifest: Manifest, space: Space | None, options: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._space = space
        self._options = options
        self.db = MetaDB(path)
        self._cache: dict[str, Partition] = {}  # partition file name -> loaded partition
        self._stamp = self._manifest_stamp()
        self._lock_depth = 0

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
    ) -> Store:
        """Open (or create) the store at ``path``.

        ``space`` is a loaded :class:`Space`, a spec, a TOML space file or a ``SpaceConfig``; a new store opened
        without one uses :data:`DEFAULT_SPACE` (``anybind-mini``). When given for an existing store it must have
        the fingerprint the store was built with; without it the store's recorded space is loaded on first use.
        ``index`` is the faiss ``index_factory`` string of a new store (default Flat).
        """
        root = Path(path)
        options = {"device": device, "batch_size": batch_size, "host": host}
        if space is not None and not isinstance(space, Space):  # a spec, a space file or a SpaceConfig
            space = load_space(space, device=device, batch_size=batch_size, host=host)
        if (root / "manifest.json").exists():
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
            return cls(root, manifest, space, options)
        if not create:
            raise StoreError(f"{root}: not an anybind store (no manifest.json)")
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root}: exists and is not a directory")
        if root.exists() and not all(_leftover_of_creation(p.name) for p in root.iterdir()):
            raise StoreError(f"{root}: directory is not empty and is not an anybind store; choose a new --db")
        if space is None:
            space = _default_space(root, device, batch_size, host)
        make_index(space.dim, index or "Flat")  # refuse a bad factory string before creating anything
        (root / PARTITIONS).mkdir(parents=True, exist_ok=True)
        record = SpaceRecord(
            spec=space.name,
            config=space.config.model_dump(),
            name=space.name,
            fingerprint=space.fingerprint,
            dim=space.dim,
            describe=space.describe(),
        )
        store = cls(root, Manifest(space=record, default_index=index or "Flat"), space, options)
        with store._writing():
            if not (root / "manifest.json").exists():
                write_manifest(root, store.manifest)
        store.close()
        return cls.open(root, space, create=False, index=index, device=device, batch_size=batch_size, host=host)

    def close(self) -> None:
        self.db.close()
        self._cache.clear()

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

    @property
    def dim(self) -> int:
        return self.manifest.space.dim

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def modalities(self) -> list[str]:
        """Partitions with at least one item."""
        return sorted(name for name, p in self.manifest.partitions.items() if p.count)

    def __len__(self) -> int:
        return sum(p.count for p in self.manifest.partitions.values())

    # -- generations, partitions, locking --------------------------------------------------------------

    def _manifest_stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path / "manifest.json")
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_ino)

    def refresh(self) -> None:
        """Pick up a generation committed by another process (searches do this themselves)."""
        stamp = self._manifest_stamp()
        if stamp != self._stamp:
            self.manifest = read_manifest(self.path)
            self._stamp = stamp
            records = {p.file: p for p in self.manifest.partitions.values()}
            self._cache = {name: part for name, part in self._cache.items() if name in records}
            for name, part in self._cache.items():  # optimize may retune a partition without rewriting it
                if part.params != records[name].params:
                    part.params, part._gpu = dict(records[name].params), False

    def partition(self, modality: str) -> Partition | None:
        """The loaded partition of a modality at the current generation (None if the store has none)."""
        for attempt in range(3):
            record = self.manifest.partitions.get(modality)
            if record is None:
                return None
            if record.file not in self._cache:
                try:
                    self._cache[record.file] = Partition.load(
                        self.dim,
                        record.factory,
                        record.built,
                        record.params,
                        self.path / PARTITIONS / record.file,
                        self.path / PARTITIONS / record.stats,
                    )
                except StoreError:
                    if attempt == 2:
                        raise
                    time.sleep(0.05)  # a writer replaced the generation between manifest and file: reread
                    self._stamp = (0, 0)
                    self.refresh()
                    continue
            return self._cache[record.file]
        return None  # pragma: no cover

    @contextlib.contextmanager
    def _writing(self, timeout: float = 60.0) -> Iterator[None]:
        """Hold the store's write lock; on first entry, catch up with the latest generation and recover."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise StoreError(
                        f"{self.path}: another process is writing to this store (waited {timeout:.0f}s)"
                    ) from None
                time.sleep(0.05)
        self._lock_depth = 1
        try:
            if (self.path / "manifest.json").exists():
                self._stamp = (0, 0)
                self.refresh()
                self.db.recover(self.manifest.generation)
                self._collect_garbage()
            yield
        finally:
            self._lock_depth = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _collect_garbage(self) -> None:
        """Delete partition files (and temp files) that the current manifest does not name."""
        live = {name for p in self.manifest.partitions.values() for name in (p.file, p.stats)}
        for entry in (self.path / PARTITIONS).iterdir():
            if entry.name not in live:
                with contextlib.suppress(OSError):
                    entry.unlink()

    def _factory(self, modality: str) -> str:
        record = self.manifest.partitions.get(modality)
        return record.factory if record else self.manifest.default_index

    def _commit(self, items: Sequence[NewItem], remove: Iterable[int] = (), rebuild: Mapping[str, str] = ()) -> dict:
        """Write one generation: add ``items``, remove ids, rebuild partitions (modality -> factory).

        Returns ``{"ids": [...], "removed": {modality: [ids]}}``. Caller holds the write lock.
        """
        assert self._lock_depth, "commit without the write lock"
        old = self.manifest
        generation = old.generation + 1
        ids = list(range(old.next_id, old.next_id + len(items)))
        with self.db.transaction():
            removed = self.db.mark_removed(remove, generation)
            self.db.insert(ids, items, generation, now())
        added: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        for item_id, item in zip(ids, items, strict=True):
            entry = added.setdefault(item.modality, ([], []))
            entry[0].append(item_id)
            entry[1].append(item.vector)
        manifest = old.model_copy(deep=True)
        manifest.generation, manifest.next_id = generation, old.next_id + len(items)
        saved: dict[str, Partition] = {}
        try:
            for modality in sorted(set(added) | set(removed) | set(rebuild)):
                part = self.partition(modality) or Partition.new(self.dim, self._factory(modality))
                factory = dict(rebuild).get(modality, part.factory)
                full = modality in rebuild
                if modality in removed and not full:
                    gone = np.asarray(removed[modality], dtype=np.int64)
                    full = not part.remove(gone, self.db.vectors(gone.tolist(), self.dim))
                if modality in added and not full:
                    new_ids, vectors = added[modality]
                    part.add(np.asarray(new_ids, dtype=np.int64), np.stack(vectors))
                    full = part.pending_training and part.count >= min_train(part.factory, self.dim)
                if full:
                    retrain = modality in rebuild
                    part.rebuild(factory, self.db.partition(modality, generation), retrain=retrain)
                files = part.save(self.path / PARTITIONS, generation, modality)
                saved[files[0]] = part
                manifest.partitions[modality] = PartitionRecord(
                    factory=part.factory,
                    built=part.built,
                    count=part.count,
                    file=files[0],
                    stats=files[1],
                    params=part.params,
                )
            write_manifest(self.path, manifest)
        except BaseException as exc:
            if self._generation_on_disk() != generation:  # not committed: undo, so this writer can go on
                self._cache.clear()  # in-memory partitions may hold half a commit; reload from disk
                with contextlib.suppress(Exception):
                    self.db.recover(old.generation)
                if isinstance(exc, OSError):
                    raise StoreError(f"{self.path}: commit failed, the store is unchanged: {exc}") from exc
                raise
            self._adopt(manifest, saved)  # the manifest rename happened: generation g+1 is the store now
            raise
        self._adopt(manifest, saved)
        return {"ids": ids, "removed": removed}

    def _generation_on_disk(self) -> int | None:
        try:
            return read_manifest(self.path).generation
        except StoreError:
            return None

    def _adopt(self, manifest: Manifest, saved: dict[str, Partition]) -> None:
        self.manifest = manifest
        self._stamp = self._manifest_stamp()
        live = {p.file for p in manifest.partitions.values()}
        self._cache = {name: part for name, part in self._cache.items() if name in live} | saved
        with contextlib.suppress(OSError):
            self._collect_garbage()

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
    ) -> list[int]:
        """Add precomputed anchor-space vectors (normalised here); all or nothing. Returns the new ids.

        Raises :class:`EmbeddingError` naming the row for a wrong shape, NaN/inf or an all-zero vector.
        """
        check_name(modality)
        try:
            array = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise EmbeddingError(f"vectors for {modality!r} are not numeric: {exc}") from None
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise EmbeddingError(f"vectors for {modality!r} have shape {array.shape}; this store needs (n, {self.dim})")
        if len(array) == 0:
            return []
        bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
        if len(bad):
            raise EmbeddingError(f"vector {int(bad[0])} for {modality!r} has NaN or infinite values; nothing added")
        wide = array.astype(np.float64)
        norms = np.linalg.norm(wide, axis=1)
        if (norms == 0).any():
            raise EmbeddingError(f"vector {int(np.argmax(norms == 0))} for {modality!r} is all zeros; nothing added")
        array = (wide / norms[:, None]).astype(np.float32)
        n = len(array)
        for name, values in (("uris", uris), ("texts", texts), ("segments", segments)):
            if values is not None and len(values) != n:
                raise EmbeddingError(f"{name} has {len(values)} entries for {n} vectors")
        for row in range(n):
            text = texts[row] if texts is not None else None
            segment = segments[row] if segments is not None else None
            if text is not None and not isinstance(text, str):
                raise MetadataError(f"texts[{row}] is a {type(text).__name__}, not a string")
            if segment is not None and not _is_segment(segment):
                raise MetadataError(f"segments[{row}] is {segment!r}; give (start, end) seconds with 0 <= start <= end")
        metas = metadata_list(metadata, [None] * n if uris is None else list(uris))
        items = []
        for row in range(n):
            segment = segments[row] if segments is not None else None
            items.append(
                NewItem(
                    modality,
                    array[row],
                    uri=uris[row] if uris is not None else None,
                    text=texts[row] if texts is not None else None,
                    start=segment[0] if segment else None,
                    end=segment[1] if segment else None,
                    metadata=metas[row],
                )
            )
        with self._writing():
            return self._commit(items)["ids"]

    def add(self, modality: str, items: Any, *, metadata: Metadata = None) -> IndexReport:
        """Embed ``items`` with the store's space and add every one that can be embedded, in one commit.

        A path becomes the item's ``uri``; a string given for ``text`` is stored as the item's text. Audio and
        video inputs become one item per time segment (``start``/``end`` seconds).
        Items that fail are in the report's ``errors`` (with the input named); the rest are added.
        """
        seq = [items] if isinstance(items, (str, bytes, os.PathLike)) else list(items)
        metas = metadata_list(metadata, seq)
        report = IndexReport()
        new, labels = [], []
        for position, vectors, spans in self._embedded(modality, seq, report):
            item = seq[position]
            uri = os.path.realpath(item) if isinstance(item, os.PathLike) else None
            if isinstance(item, str) and modality != "text":
                uri = os.path.realpath(item)
            text = item if isinstance(item, str) and uri is None else None
            digest = file_digest(uri) if uri and os.path.isfile(uri) else None
            for vector, (start, end) in zip(vectors, spans, strict=True):
                new.append(
                    NewItem(
                        modality,
                        vector,
                        uri=uri,
                        start=start,
                        end=end,
                        text=text,
                        metadata=metas[position],
                        content_hash=digest,
                    )
                )
                labels.append(describe_item(item, position))
        if new:
            with self._writing():
                ids = self._commit(new)["ids"]
            for label, item_id in zip(labels, ids, strict=True):
                report.added.setdefault(label, []).append(item_id)
        report.generation = self.generation
        return report

    def _embedded(
        self, modality: str, seq: Sequence[Any], report: IndexReport
    ) -> Iterator[tuple[int, np.ndarray, list[tuple[float | None, float | None]]]]:
        """(position, vectors, spans) per input that embedded; errors go to the report."""
        mod, _ = self.space.route(modality)
        if mod.temporal:
            for item in self.space.try_embed_segments(modality, seq):
                if item.error is not None:
                    report.errors.append(item.error)
                else:
                    assert item.vectors is not None
                    yield item.key, item.vectors, list(zip(item.starts, item.ends, strict=True))
            return
        result = self.space.try_embed(modality, seq)
        report.errors.extend(result.errors)
        for vector, position in zip(result.vectors, result.indices, strict=True):
            yield position, vector[None, :], [(None, None)]

    def add_files(self, paths: Iterable[str | os.PathLike[str]], **options: Any) -> IndexReport:
        """Index files (and folders): sniff each file's modality, decode in worker threads, embed, commit.

        An unchanged file (same content hash at the same path) is skipped; a changed one replaces its old
        items. Options: ``recursive``, ``modality``, ``metadata`` (dict or callable(path) -> dict),
        ``workers``, ``commit_every``, ``progress`` (callable(done, total)). See :mod:`anybind.store.ingest`.
        """
        from .ingest import index_files

        return index_files(self, list(paths), **options)

    def remove(self, ids: Iterable[int]) -> RemoveReport:
        """Remove items by id in one commit; ids that are not in the store are reported as ``missing``."""
        try:
            wanted = sorted({operator.index(i) for i in ids})
        except TypeError as exc:
            raise StoreError(f"item ids are integers: {exc}") from None
        out_of_range = [i for i in wanted if not 0 < i < 2**63]
        if out_of_range:
            raise StoreError(f"item id {out_of_range[0]} is out of range (ids are positive 64-bit integers)")
        if not wanted:
            return RemoveReport([], [], self.generation)
        with self._writing():
            present = set(self.db.rows(wanted, self.generation))
            if not present:
                return RemoveReport([], wanted, self.generation)
            removed = self._commit([], remove=sorted(present))["removed"]
        gone = sorted(i for ids in removed.values() for i in ids)
        return RemoveReport(gone, [i for i in wanted if i not in present], self.generation)

    # -- reading ---------------------------------------------------------------------------------------

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
        Audio and video hits roll up per file: each file's best segment, with its ``start``/``end``;
        ``segments=True`` returns every matching segment instead.
        """
        from .search import run_search

        inputs = {
            name: value
            for name, value in (
                ("text", text),
                ("image", image),
                ("audio", audio),
                ("video", video),
                ("vector", vector),
            )
            if value is not None
        }
        inputs.update(query or {})
        return run_search(self, inputs, weights=weights, to=to, k=k, where=where, rerank=rerank, rollup=not segments)

    def info(self) -> dict[str, Any]:
        """Space, generation, items per partition, index types and bytes on disk."""
        self.refresh()
        manifest = self.manifest
        partitions = {}
        for name, record in sorted(manifest.partitions.items()):
            files = [self.path / PARTITIONS / record.file, self.path / PARTITIONS / record.stats]
            partitions[name] = {
                "count": record.count,
                "index": record.built,
                "requested_index": record.factory,
                "pending_training": record.built != record.factory,
                "params": record.params,
                "bytes": sum(f.stat().st_size for f in files if f.exists()),
            }
        return {
            "path": str(self.path),
            "format": manifest.format,
            "generation": manifest.generation,
            "space": {"name": manifest.space.name, "fingerprint": manifest.space.fingerprint, "dim": self.dim},
            "items": len(self),
            "default_index": manifest.default_index,
            "partitions": partitions,
            "bytes": directory_bytes(self.path),
            "created_at": manifest.created_at,
            "updated_at": manifest.updated_at,
        }

    def check_recall(self, k: int = 10, queries: int = 200, seed: int = 0) -> dict[str, dict[str, Any]]:
        """ANN recall@k of each partition against exact search, with stored vectors as queries."""
        from .tuning import partition_recall

        self.refresh()
        return {name: partition_recall(self, name, k=k, queries=queries, seed=seed) for name in self.modalities}

    def optimize(
        self, modality: str | None = None, index: str | None = None, target_recall: float = 0.95
    ) -> dict[str, dict[str, Any]]:
        """Rebuild grown Flat partitions as IVF (or any partition as ``index``); tune nprobe/efSearch of ANN
        partitions to the smallest value reaching ``target_recall`` (recall@10 against exact search)."""
        from .tuning import optimize

        return optimize(self, modality=modality, index=index, target_recall=target_recall)
