"""``manifest.json``: the commit point of a store. A generation is visible once its manifest is renamed in."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anybind.errors import StoreError

from .files import write_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class SpaceRecord(BaseModel):
    """The space a store was built with: its name, the config to reload it, and the fingerprint it must match."""

    model_config = ConfigDict(extra="forbid")

    spec: str
    config: dict[str, Any]
    name: str
    fingerprint: str
    dim: int = Field(gt=0)
    describe: dict[str, Any] = Field(default_factory=dict)


class PartitionRecord(BaseModel):
    """One modality partition at this generation.

    ``factory`` is the index_factory string asked for; ``built`` the one in ``file`` (``Flat`` until an
    index that needs training has enough vectors); ``params`` are search-time parameters (nprobe, efSearch).
    """

    model_config = ConfigDict(extra="forbid")

    factory: str = "Flat"
    built: str = "Flat"
    count: int = Field(default=0, ge=0)
    file: str
    stats: str
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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{directory}: not an anybind store (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise StoreError(f"{path}: store format {found!r}; this anybind reads format {FORMAT_VERSION}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise StoreError(f"{path}: invalid manifest: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    manifest.updated_at = now()
    data = json.dumps(manifest.model_dump(), indent=2, sort_keys=True).encode()
    write_atomic(directory / MANIFEST, data + b"\n")
