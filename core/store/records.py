"""Small records shared by the store's modules: write reports, metadata normalisation, names, file digests."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from anybind.errors import ItemError, MetadataError, UnknownNameError

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
Metadata = Mapping[str, Any] | Sequence[Mapping[str, Any]] | Callable[[Any], Mapping[str, Any]] | None


@dataclass
class IndexReport:
    """What an ``add``/``add_files`` call did. ``errors`` holds one :class:`ItemError` per input that failed."""

    added: dict[str, list[int]] = field(default_factory=dict)  # input label -> new ids
    unchanged: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    generation: int = 0

    @property
    def ids(self) -> list[int]:
        return [i for ids in self.added.values() for i in ids]

    def to_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "added": [{"item": k, "ids": v} for k, v in self.added.items()],
            "unchanged": self.unchanged,
            "replaced": self.replaced,
            "errors": [{"item": e.source, "error": e.reason} for e in self.errors],
        }


@dataclass
class RemoveReport:
    removed: list[int]
    missing: list[int]
    generation: int


def check_name(modality: str) -> str:
    if not isinstance(modality, str) or not NAME_RE.match(modality):
        raise UnknownNameError("modality", str(modality), [], "modality names are lower-case tags such as 'image'")
    return modality


def file_digest(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def metadata_list(metadata: Metadata, items: Sequence[Any]) -> list[Mapping[str, Any]]:
    """One metadata dict per item from a dict (shared), a list (one each) or a callable(item)."""
    if metadata is None:
        return [{} for _ in items]
    if callable(metadata):
        values = [metadata(item) or {} for item in items]
    elif isinstance(metadata, Mapping):
        values = [metadata] * len(items)
    else:
        values = list(metadata)
        if len(values) != len(items):
            raise MetadataError(f"metadata has {len(values)} entries for {len(items)} items")
    for position, value in enumerate(values):
        if not isinstance(value, Mapping):
            raise MetadataError(f"metadata for item {position} is {type(value).__name__}, not a dict")
        try:
            json.dumps(dict(value), allow_nan=False, sort_keys=True)  # as stored
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"metadata for item {position} cannot be stored as JSON: {exc}") from None
    return values
