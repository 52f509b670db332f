"""Segments: immutable runs of one partition's vectors, written once and memory-mapped by every reader.

A segment is two NumPy ``.npy`` files (no pickle: plain float32 ``(rows, d)`` and int64 ``(rows,)``, ids
sorted ascending), optional tombstones (a ``.npy`` of deleted row positions, rewritten by the commit that
deletes) and, once sealed, an ANN index built for it. Every file is named in the manifest with its size and
CRC-32, which are checked the first time this process reads it.
"""

from __future__ import annotations

import io
import threading
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from anybind.errors import StoreError

from . import ann
from .files import RECOVER_HINT, file_crc32, verify_file, write_new
from .manifest import FileRecord, SegmentRecord

ROW_BLOCK = 65_536  # rows per block when a segment is streamed (merges, rebuilds, exact scans of many queries)

_verified: set[tuple[str, int, str]] = set()  # (path, bytes, crc32) checked by this process; files never change
_verified_lock = threading.Lock()


def verified(path: Path, record: FileRecord) -> Path:
    """``path`` after checking its size and CRC-32 once per process (a :class:`StoreError` naming it if damaged)."""
    key = (str(path), record.bytes, record.crc32)
    with _verified_lock:
        if key in _verified:
            return path
    verify_file(path, record.bytes, record.crc32)
    with _verified_lock:
        _verified.add(key)
    return path


def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (format 1.0) header of a C-ordered array of ``dtype`` and ``shape``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_array(path: Path, array: np.ndarray) -> FileRecord:
    """A new immutable ``.npy`` file holding ``array``; returns its record."""
    array = np.ascontiguousarray(array)
    size, crc = write_new(path, [npy_header(array.dtype.str, array.shape), memoryview(array).cast("B")])
    return FileRecord(name=path.name, bytes=size, crc32=crc)


def write_blocks(path: Path, dim: int, rows: int, blocks: Iterable[np.ndarray]) -> FileRecord:
    """A new ``(rows, dim)`` float32 ``.npy`` written block by block (bounded memory)."""

    def chunks() -> Iterator[bytes | memoryview]:
        yield npy_header("<f4", (rows, dim))
        written = 0
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=np.float32)
            written += len(block)
            yield memoryview(block).cast("B")
        if written != rows:
            raise StoreError(f"{path}: wrote {written} rows, expected {rows}")

    size, crc = write_new(path, chunks())
    return FileRecord(name=path.name, bytes=size, crc32=crc)


def load_array(path: Path, record: FileRecord, dtype: str, shape: tuple[int, ...], mmap: bool = True) -> np.ndarray:
    """A checked ``.npy`` file as an array (memory-mapped when ``mmap``), of exactly ``dtype`` and ``shape``."""
    verified(path, record)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable array file ({exc}); {RECOVER_HINT}") from None
    if array.dtype.str != dtype or array.shape != shape or not array.flags.c_contiguous:
        raise StoreError(
            f"{path}: holds {array.dtype.str} {array.shape}, the manifest expects {dtype} {shape}; {RECOVER_HINT}"
        )
    return array


class Segment:
    """One segment as this process reads it: mapped vectors, ids, the live mask and the ANN index if sealed."""

    def __init__(self, folder: Path, record: SegmentRecord, dim: int, params: dict[str, int]) -> None:
        self.folder, self.record, self.dim = folder, record, dim
        n = record.rows
        self.vectors = load_array(folder / record.vectors.name, record.vectors, "<f4", (n, dim))
        self.ids = np.asarray(load_array(folder / record.ids.name, record.ids, "<i8", (n,), mmap=False))
        if n and (int(self.ids[0]) != record.min_id or int(self.ids[-1]) != record.max_id):
            raise StoreError(f"{folder / record.ids.name}: ids do not match the manifest's range; {RECOVER_HINT}")
        self.live: np.ndarray | None = None
        self.deleted = np.empty(0, np.int64)
        if record.deleted is not None:
            path = folder / record.deleted.name
            self.deleted = np.asarray(load_array(path, record.deleted, "<i8", (record.deleted_rows,), mmap=False))
            if len(self.deleted) and (self.deleted.min() < 0 or self.deleted.max() >= n):
                raise StoreError(f"{path}: tombstones point outside the segment's {n} rows; {RECOVER_HINT}")
            self.live = np.ones(n, dtype=bool)
            self.live[self.deleted] = False
        self.index: Any = None
        self.ann: tuple[str, Any] | None = None
        if record.index is not None:
            path = verified(folder / record.index.name, record.index)
            try:
                self.index = faiss.read_index(str(path))
            except RuntimeError as exc:
                raise StoreError(f"{path}: cannot read the segment's index ({exc}); {RECOVER_HINT}") from None
            if self.index.d != dim or self.index.ntotal != n:
                raise StoreError(f"{path}: index of {self.index.ntotal} x {self.index.d}, segment is {n} x {dim}")
            self.ann = ann.ann_structure(self.index)
        self.params: dict[str, int] = {}
        self.set_params(params)
        self.gpu: Any = False  # faiss GPU copy of the index: False = not tried yet

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def exact(self) -> bool:
        return self.index is None

    def set_params(self, params: dict[str, int]) -> None:
        self.params = dict(params)
        self.gpu = False
        if self.ann is not None and self.ann[0] in params:
            key, structure = self.ann
            if key == "nprobe":
                structure.nprobe = int(params[key])
            else:
                structure.hnsw.efSearch = int(params[key])

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of those ``ids`` that are live rows of this segment (ids given sorted or not)."""
        if not len(ids) or not self.record.rows:
            return np.empty(0, np.int64)
        pos = np.searchsorted(self.ids, ids)
        ok = (pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == ids)
        pos = pos[ok]
        if self.live is not None:
            pos = pos[self.live[pos]]
        return pos.astype(np.int64)

    def live_blocks(self, block: int = ROW_BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of the live rows, block by block (vectors copied out of the map)."""
        for start in range(0, self.record.rows, block):
            ids = self.ids[start : start + block]
            vectors = np.array(self.vectors[start : start + block])
            if self.live is not None:
                keep = self.live[start : start + block]
                ids, vectors = ids[keep], vectors[keep]
            if len(ids):
                yield ids, vectors


def read_blocks(folder: Path, record: SegmentRecord, dim: int, block: int = ROW_BLOCK) -> Iterator[np.ndarray]:
    """The vectors of a segment's file, read (not mapped) block by block, checking its CRC-32 as they are read:
    merges stream segments without mapping them, so a writer's memory stays bounded."""
    path = folder / record.vectors.name
    header = len(npy_header("<f4", (record.rows, dim)))
    expected = header + record.rows * dim * 4
    if record.vectors.bytes != expected:
        raise StoreError(f"{path}: the manifest records {record.vectors.bytes} bytes for {record.rows} x {dim}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(header)
            crc = zlib.crc32(head)
            for start in range(0, record.rows, block):
                want = min(block, record.rows - start)
                data = handle.read(want * dim * 4)
                if len(data) != want * dim * 4:
                    raise StoreError(f"{path}: truncated (the manifest records {record.vectors.bytes} bytes)")
                crc = zlib.crc32(data, crc)
                last = start + want >= record.rows
                if last and handle.read(1):
                    raise StoreError(f"{path}: longer than the manifest records; {RECOVER_HINT}")
                if last and f"{crc & 0xFFFFFFFF:08x}" != record.vectors.crc32:
                    raise StoreError(f"{path}: checksum does not match the manifest's (damaged); {RECOVER_HINT}")
                yield np.frombuffer(data, dtype=np.float32).reshape(want, dim)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing (the manifest names it); {RECOVER_HINT}") from None


def write_segment(
    folder: Path, name: str, dim: int, ids: np.ndarray, blocks: Iterable[np.ndarray], rows: int
) -> SegmentRecord:
    """A new segment ``name`` of ``rows`` rows: ``ids`` (sorted ascending) and their vectors given block by block."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) != rows or (rows > 1 and not (np.diff(ids) > 0).all()):
        raise StoreError(f"segment {name}: ids must be {rows} distinct ascending integers")
    vectors = write_blocks(folder / f"{name}.vectors.npy", dim, rows, blocks)
    id_file = write_array(folder / f"{name}.ids.npy", ids)
    return SegmentRecord(
        name=name,
        rows=rows,
        min_id=int(ids[0]) if rows else 0,
        max_id=int(ids[-1]) if rows else 0,
        vectors=vectors,
        ids=id_file,
    )


def with_deleted(folder: Path, record: SegmentRecord, positions: np.ndarray, generation: int) -> SegmentRecord:
    """The record of ``record`` with these row positions deleted too (a new tombstone file for ``generation``)."""
    old = np.empty(0, np.int64)
    if record.deleted is not None:
        path = folder / record.deleted.name
        old = np.asarray(load_array(path, record.deleted, "<i8", (record.deleted_rows,), mmap=False))
    merged = np.union1d(old, positions.astype(np.int64))
    tomb = write_array(folder / f"{record.name}.{generation}.deleted.npy", merged)
    return record.model_copy(update={"deleted": tomb, "deleted_rows": len(merged)})


def build_index(folder: Path, record: SegmentRecord, dim: int, factory: str, seed_index: Any = None) -> SegmentRecord:
    """Seal a segment: build its ``factory`` index over every row (dead rows are filtered at search time).

    ``seed_index`` (a trained index of the same type) is emptied and refilled instead of training again.
    """
    if seed_index is not None:
        inner = faiss.clone_index(faiss.downcast_index(seed_index.index))
        inner.reset()
        index = faiss.IndexIDMap2(inner)
    else:
        index = ann.make_index(dim, factory)
    blocks = list(read_blocks(folder, record, dim))
    vectors = np.concatenate(blocks) if blocks else np.empty((0, dim), np.float32)
    ids = np.load(folder / record.ids.name, allow_pickle=False)
    if not index.is_trained:
        sample = vectors
        if len(vectors) > ann.TRAIN_SAMPLE:
            pick = np.random.default_rng(0).choice(len(vectors), ann.TRAIN_SAMPLE, replace=False)
            sample = vectors[np.sort(pick)]
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise StoreError(f"index {factory!r} cannot be trained on {len(sample)} vectors: {exc}") from None
    index.add_with_ids(vectors, ids)
    data = faiss.serialize_index(index)
    size, crc = write_new(folder / f"{record.name}.index.faiss", [memoryview(data).cast("B")])
    del vectors, blocks
    return record.model_copy(
        update={"index": FileRecord(name=f"{record.name}.index.faiss", bytes=size, crc32=crc), "built": factory}
    )


__all__ = ["Segment", "build_index", "file_crc32", "read_blocks", "verified", "with_deleted", "write_segment"]
