"""``manifest.json``: the commit point of a store. A generation is visible once its manifest is renamed in.

The manifest names every file of its generation with its size and CRC-32, and carries a CRC-32 of its own
content, so a truncated, edited or bit-flipped manifest or segment is detected and named instead of read.
"""

from __future__ import annotations

import json
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anybind.errors import StoreError

from .files import RECOVER_HINT, write_atomic

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ITEMS_DB = "items.sqlite"
SEGMENTS = "segments"
V1_FILES = ("metadata.sqlite", "metadata.sqlite-wal", "metadata.sqlite-shm", "partitions", "lock")  # format 1's


class SpaceRecord(BaseModel):
    """The space a store was built with: its name, the config to reload it, and the fingerprint it must match."""

    model_config = ConfigDict(extra="forbid")

    spec: str
    config: dict[str, Any]
    name: str
    fingerprint: str
    dim: int = Field(gt=0)
    describe: dict[str, Any] = Field(default_factory=dict)


class FileRecord(BaseModel):
    """One immutable file of a generation: its name (relative to the partition's folder), size and CRC-32."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    bytes: int = Field(ge=0)
    crc32: str = Field(pattern=r"^[0-9a-f]{8}$")


class SegmentRecord(BaseModel):
    """An immutable run of vectors (raw float32) and their ids (sorted), plus this generation's tombstones.

    ``deleted`` is a file of the row positions removed so far (None: none); ``index`` is the ANN index built for
    the segment when it was sealed (None: searched exactly).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    rows: int = Field(ge=0)
    min_id: int = Field(ge=0)
    max_id: int = Field(ge=0)
    vectors: FileRecord
    ids: FileRecord
    deleted: FileRecord | None = None
    deleted_rows: int = Field(default=0, ge=0)
    index: FileRecord | None = None
    built: str | None = None  # the index_factory string of ``index``

    @property
    def live(self) -> int:
        return self.rows - self.deleted_rows


class PartitionRecord(BaseModel):
    """One modality partition at this generation.

    ``factory`` is the index_factory string asked for (segments are sealed with it once big enough); ``params``
    are search-time parameters (nprobe, efSearch); ``temporal`` says whether its items are time segments of
    files (recorded when written, so searches roll up per file without asking the installed plugins).
    """

    model_config = ConfigDict(extra="forbid")

    factory: str = "Flat"
    temporal: bool = False
    count: int = Field(default=0, ge=0)
    segments: list[SegmentRecord] = Field(default_factory=list)
    moments: FileRecord | None = None
    params: dict[str, int] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT_VERSION
    generation: int = Field(default=0, ge=0)
    next_id: int = Field(default=1, ge=1)
    space: SpaceRecord
    default_index: str = "Flat"
    created_at: str = Field(default_factory=lambda: now())
    updated_at: str = Field(default_factory=lambda: now())
    partitions: dict[str, PartitionRecord] = Field(default_factory=dict)
    checksum: str = ""

    def file_names(self) -> set[str]:
        """Every file this generation names, as paths relative to the store's ``segments`` folder."""
        names = set()
        for modality, part in self.partitions.items():
            if part.moments is not None:
                names.add(f"{modality}/{part.moments.name}")
            for seg in part.segments:
                for record in (seg.vectors, seg.ids, seg.deleted, seg.index):
                    if record is not None:
                        names.add(f"{modality}/{record.name}")
        return names


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _body(data: dict[str, Any]) -> bytes:
    data = {key: value for key, value in data.items() if key != "checksum"}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()  # compact: the C encoder, 10x faster


def _checksum(data: dict[str, Any]) -> str:
    return f"{zlib.crc32(_body(data)) & 0xFFFFFFFF:08x}"


def read_raw(directory: Path) -> dict[str, Any]:
    """The manifest as JSON, without validation (for migrations and ``check``)."""
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(f"{directory}: not an anybind store (no {MANIFEST})") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StoreError(f"{path}: the manifest is not valid JSON ({exc}); {RECOVER_HINT}") from None
    if not isinstance(raw, dict):
        raise StoreError(f"{path}: the manifest is not a JSON object; {RECOVER_HINT}")
    return raw


def read_manifest(directory: Path) -> Manifest:
    """The current manifest. :class:`StoreError` naming the file for a missing, damaged or other-format one."""
    path = directory / MANIFEST
    raw = read_raw(directory)
    found = raw.get("format")
    if found == 1:
        raise StoreError(
            f"{path}: store format 1 (anybind 0.1); this anybind reads format {FORMAT_VERSION}. Run "
            f"`anybind migrate --db {directory}` to convert it in place (every item is kept)"
        )
    if found != FORMAT_VERSION:
        newer = isinstance(found, int) and found > FORMAT_VERSION
        hint = "upgrade anybind to read it" if newer else "it is not a store this anybind knows"
        raise StoreError(f"{path}: store format {found!r}; this anybind reads format {FORMAT_VERSION} ({hint})")
    if raw.get("checksum") != _checksum(raw):
        raise StoreError(
            f"{path}: the manifest's checksum does not match its content (edited or damaged); {RECOVER_HINT}"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise StoreError(f"{path}: invalid manifest: {error['msg']} at {error['loc']}; {RECOVER_HINT}") from None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Rename a new manifest in (the commit point); its checksum is computed here."""
    manifest.updated_at = now()
    data = manifest.model_dump()
    data["checksum"] = _checksum(data)
    manifest.checksum = data["checksum"]
    write_atomic(directory / MANIFEST, json.dumps(data, sort_keys=True, separators=(",", ":")).encode() + b"\n")
