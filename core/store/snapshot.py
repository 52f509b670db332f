"""``Snapshot``: one generation's read view of a store — its manifest, its partitions and the metadata.

A snapshot never changes: its partitions are the segment files its manifest names (memory-mapped when first
searched, each checked against its CRC-32 once per process) and its SQLite reads filter rows by its generation,
inside one read transaction per search. The database is opened read-only (a store on a read-only directory
can be searched). When a writer has moved on far enough that this view would be incomplete (files of an old
generation deleted, rows purged), reading it raises :class:`StaleSnapshot` and the caller takes a new one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anybind.errors import StoreError

from .manifest import MANIFEST, SEGMENTS, Manifest, read_manifest
from .metadata import MetaDB
from .partition import PartitionView


class StaleSnapshot(Exception):
    """This generation's files or rows are gone (a writer moved on): take a new snapshot and search again."""


class Snapshot:
    """The store at one generation. Like the store, not shared between threads: one per thread."""

    def __init__(
        self, root: Path, manifest: Manifest, db: MetaDB, scanner: Any = None, cache: dict | None = None
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.db = db
        self.scanner = scanner
        self.cache = cache
        self._partitions: dict[str, PartitionView | None] = {}

    @classmethod
    def open(cls, root: Path, db: MetaDB | None = None, scanner: Any = None, cache: dict | None = None) -> Snapshot:
        """The current generation (a read-only metadata connection is opened unless one is given; ``cache``: loaded
        segments shared with earlier snapshots, see :class:`~anybind.store.partition.PartitionView`)."""
        manifest = read_manifest(root)
        db = db or MetaDB(root, readonly=True)
        db.check_generation(manifest.generation)
        return cls(root, manifest, db, scanner, cache)

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def dim(self) -> int:
        return self.manifest.space.dim

    @property
    def modalities(self) -> list[str]:
        """Partitions with at least one item."""
        return sorted(name for name, p in self.manifest.partitions.items() if p.count)

    def __len__(self) -> int:
        return sum(p.count for p in self.manifest.partitions.values())

    def temporal(self, name: str) -> bool:
        record = self.manifest.partitions.get(name)
        return bool(record and record.temporal)

    def partition(self, name: str) -> PartitionView | None:
        """The partition of ``name`` at this generation (None if the store has none). Files are checked as they
        are first read; a missing file of a generation the store has left raises :class:`StaleSnapshot`."""
        if name not in self._partitions:
            record = self.manifest.partitions.get(name)
            if record is None:
                return None
            try:
                self._partitions[name] = PartitionView(
                    self.root / SEGMENTS, name, record, self.dim, self.scanner, self.cache
                )
            except StoreError:
                if self.moved_on():
                    raise StaleSnapshot(name) from None
                raise
        return self._partitions[name]

    def moved_on(self) -> bool:
        """Whether a newer generation has been committed since this snapshot was taken."""
        try:
            return read_manifest(self.root).generation != self.generation
        except StoreError:
            return (self.root / MANIFEST).exists()

    @contextlib.contextmanager
    def reading(self) -> Iterator[MetaDB]:
        """One read transaction at this generation; :class:`StaleSnapshot` if rows it needs were purged."""
        with self.db.snapshot():
            if self.db.purged_below() > self.generation + 1:
                raise StaleSnapshot("rows purged")
            yield self.db

    def set_params(self, name: str, params: dict[str, int]) -> None:
        part = self._partitions.get(name)
        if part is not None:
            part.set_params(params)
