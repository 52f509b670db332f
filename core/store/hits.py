"""What a search returns: hits with raw and calibrated scores, and the per-partition score statistics."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, overload


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``score`` is the raw inner product (cosine) of the query and the item in the anchor space.
    ``calibrated`` is the same score as a z-score within the item's partition for this query:
    ``(score - mean) / std`` over every item of that partition. Hits from several partitions are ranked
    by ``calibrated`` (within one partition the two orders are the same).
    """

    id: int
    modality: str
    score: float
    calibrated: float
    uri: str | None = None
    start: float | None = None
    end: float | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str | None = None  # the caller's key, for items added with keys=

    @property
    def segment(self) -> tuple[float, float] | None:
        if self.start is None or self.end is None:
            return None
        return (self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PartitionScores:
    """How one target partition was searched, and its score distribution for this query."""

    modality: str
    count: int
    mean: float
    std: float
    index: str
    exact: bool
    candidates: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SearchResult(Sequence[Hit]):
    """The fused hits (best first) plus ``partitions``: modality -> :class:`PartitionScores`."""

    def __init__(self, hits: list[Hit], partitions: dict[str, PartitionScores]) -> None:
        self.hits = hits
        self.partitions = partitions

    @overload
    def __getitem__(self, index: int) -> Hit: ...
    @overload
    def __getitem__(self, index: slice) -> list[Hit]: ...
    def __getitem__(self, index: int | slice) -> Hit | list[Hit]:
        return self.hits[index]

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def ids(self) -> list[int]:
        return [hit.id for hit in self.hits]

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": [hit.to_dict() for hit in self.hits],
            "partitions": {name: p.to_dict() for name, p in self.partitions.items()},
        }

    def __repr__(self) -> str:
        return f"SearchResult({len(self.hits)} hits from {sorted(self.partitions)})"
