"""What a search returns: hits with raw and calibrated scores, and the per-partition score statistics."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload


@dataclass(frozen=True)
class PartitionScores:
    """How one target partition was searched, and its score distribution for this query: ``mean`` and ``std`` of
    the query's score over every item of the partition (from its moments; computed when first asked for, since a
    search of one partition ranks by raw score and need not pay for them)."""

    modality: str
    count: int
    index: str
    exact: bool
    candidates: int
    moments: Any = field(default=None, repr=False, compare=False)  # (Moments, unit query (1, d)), or None
    fixed: tuple[float, float] = field(default=(0.0, 1.0), repr=False, compare=False)  # mean, std without moments

    @functools.cached_property
    def _mean_std(self) -> tuple[float, float]:
        if self.moments is None:
            return self.fixed
        moments, query = self.moments
        mean, std = moments.score_moments(query)
        return float(mean[0]), float(std[0])

    @property
    def mean(self) -> float:
        return self._mean_std[0]

    @property
    def std(self) -> float:
        return self._mean_std[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "count": self.count,
            "mean": self.mean,
            "std": self.std,
            "index": self.index,
            "exact": self.exact,
            "candidates": self.candidates,
        }


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``score`` is the raw inner product (cosine) of the query and the item in the anchor space.
    ``calibrated`` is the same score as a z-score within the item's partition for this query:
    ``(score - mean) / std`` over every item of that partition (``stats``). Hits from several partitions are
    ranked by ``calibrated`` (within one partition the two orders are the same).
    """

    id: int
    modality: str
    score: float
    uri: str | None = None
    start: float | None = None
    end: float | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str | None = None  # the caller's key, for items added with keys=
    stats: PartitionScores | None = field(default=None, repr=False, compare=False)

    @property
    def calibrated(self) -> float:
        if self.stats is None:
            return self.score
        return (self.score - self.stats.mean) / self.stats.std

    @property
    def segment(self) -> tuple[float, float] | None:
        if self.start is None or self.end is None:
            return None
        return (self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "modality": self.modality,
            "score": self.score,
            "calibrated": self.calibrated,
            "uri": self.uri,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "metadata": dict(self.metadata),
            "key": self.key,
        }


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
