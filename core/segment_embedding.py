"""Embedding time-segmented inputs: the parts of many files' segments share encoder batches.

:class:`SegmentBatcher` pulls :class:`~anybind.segments.Segment` s from one file at a time, queues their parts
(audio chunks, video frames) into batches of the encoder's batch size (so a folder of 2-second sound effects still
fills the model), and hands back each file's segment vectors once all its parts are embedded. A segment's vector
is the re-normalised mean of its parts' unit vectors. A file whose decoding or encoding fails anywhere is dropped
whole, with one error naming it and the time; the other files go on. Memory: the queued parts of at most one
batch, plus the finished vectors. A batch is also cut at :data:`MAX_BATCH_BYTES` of part data: 32 ten-second
clips at 48 kHz are 61 MB of samples and several times that in the feature extractor's float64 spectrograms,
so long audio runs in batches of about 8 windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ItemError
from .segments import Segment

MAX_BATCH_BYTES = 16 << 20

# encode(values, labels) -> an EmbedResult: vectors + indices of the values that embedded, errors + failed positions
EncodeFn = Callable[[list[Any], list[str]], Any]


@dataclass
class SegmentedItem:
    """One input's segments: ``starts``/``ends`` in seconds and ``vectors`` ``(n, d)`` unit rows; or its error."""

    key: Any
    label: str
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    vectors: np.ndarray | None = None
    error: ItemError | None = None
    _parts: list[int] = field(default_factory=list)  # parts per segment
    _sums: list[np.ndarray | None] = field(default_factory=list)
    _pending: int = 0
    _fed: bool = False

    @property
    def done(self) -> bool:
        return self.error is not None or (self._fed and self._pending == 0)

    def pooled(self) -> np.ndarray:
        """The item as one unit vector: the normalised mean of its segment vectors."""
        assert self.vectors is not None
        total = self.vectors.astype(np.float64).sum(axis=0)
        return (total / np.linalg.norm(total)).astype(np.float32)


def lazy_segments(segment: Callable[..., Iterator[Segment]], *args: Any) -> Iterator[Segment]:
    """``segment(*args)`` called on first use, so that a segmenter failing at once fails inside the iteration."""
    yield from segment(*args)


def _segments(item: SegmentedItem, segments: Iterator[Segment], optional: bool) -> Iterator[tuple[int, Segment]]:
    """Number the segments and turn a plugin's failure into an ItemError naming the input."""
    index = 0
    try:
        for segment in segments:
            start, end = float(segment.start), float(segment.end)
            if not (np.isfinite([start, end]).all() and 0 <= start <= end) or not len(segment.parts):
                problem = f"decoder yielded an invalid segment {start}-{end} s with {len(segment.parts)} parts"
                raise ItemError(item.label, problem)
            yield index, segment
            index += 1
    except ItemError:
        raise
    except Exception as exc:  # a plugin's segmenter failing in its own way
        raise ItemError(item.label, f"{type(exc).__name__}: {exc}") from exc
    if index == 0 and not optional:
        raise ItemError(item.label, "has no segments to embed (zero length?)")


class SegmentBatcher:
    """Feeds segments of many inputs through ``encode`` in shared batches of ``batch_size`` parts."""

    def __init__(self, encode: EncodeFn, batch_size: int, dim: int, max_bytes: int = MAX_BATCH_BYTES) -> None:
        self.encode = encode
        self.batch_size = max(1, batch_size)
        self.max_bytes = max_bytes
        self.dim = dim
        self._queue: list[tuple[SegmentedItem, int, Any]] = []  # (item, segment index, part)
        self._queued_bytes = 0
        self._open: list[SegmentedItem] = []

    def feed(self, key: Any, label: str, segments: Iterator[Segment], optional: bool = False) -> list[SegmentedItem]:
        """Read all of one input's segments (encoding full batches on the way); returns the inputs now finished.

        ``optional``: an input without segments (a video's absent sound track) finishes with none, not an error.
        """
        item = SegmentedItem(key, label)
        self._open.append(item)
        finished: list[SegmentedItem] = []
        try:
            for index, segment in _segments(item, segments, optional):
                item.starts.append(float(segment.start))
                item.ends.append(float(segment.end))
                item._parts.append(len(segment.parts))
                item._sums.append(None)
                for part in segment.parts:
                    self._queue.append((item, index, part))
                    self._queued_bytes += part_bytes(part)
                    item._pending += 1
                    if len(self._queue) >= self.batch_size or self._queued_bytes >= self.max_bytes:
                        finished += self._run()
                if item.error is not None:  # a part failed to encode: stop reading the rest of the file
                    break
        except ItemError as exc:
            item.error = item.error or exc
        finally:
            close = getattr(segments, "close", None)
            if close is not None:
                close()  # stop a decoder (and its child process) that we did not read to the end
        item._fed = True
        return finished + self._collect()

    def flush(self) -> list[SegmentedItem]:
        """Encode what is queued; returns the inputs that finished."""
        finished = self._run() if self._queue else []
        return finished + self._collect()

    def _run(self) -> list[SegmentedItem]:
        queue, self._queue, self._queued_bytes = self._queue, [], 0
        live = [(item, index, part) for item, index, part in queue if item.error is None]
        if not live:
            return self._collect()
        labels = [f"{item.label} @ {item.starts[index]:.2f}-{item.ends[index]:.2f} s" for item, index, _ in live]
        result = self.encode([part for _, _, part in live], labels)
        for error, position in zip(result.errors, result.failed, strict=True):
            item, index, _ = live[position]
            span = f"{item.starts[index]:.2f}-{item.ends[index]:.2f} s"
            item.error = item.error or ItemError(item.label, f"segment {span}: {error.reason}")
        for vector, position in zip(result.vectors, result.indices, strict=True):
            item, index, _ = live[position]
            item._sums[index] = vector.astype(np.float64) if item._sums[index] is None else item._sums[index] + vector
            item._pending -= 1
        return self._collect()

    def _collect(self) -> list[SegmentedItem]:
        finished = [item for item in self._open if item.done]
        self._open = [item for item in self._open if not item.done]
        for item in finished:
            if item.error is None:
                _pool(item, self.dim)
        return finished


def part_bytes(part: Any) -> int:
    """Roughly how much memory a decoded part holds (audio samples, array or image pixels); 0 if unknown."""
    samples = getattr(part, "samples", part)
    if isinstance(samples, np.ndarray):
        return int(samples.nbytes)
    size = getattr(part, "size", None)
    if isinstance(size, tuple) and len(size) == 2:  # a PIL image: width, height
        return int(size[0] * size[1] * len(getattr(part, "getbands", lambda: "RGB")()))
    return 0


def _pool(item: SegmentedItem, dim: int) -> None:
    rows = np.empty((len(item._sums), dim), dtype=np.float32)
    for i, total in enumerate(item._sums):
        norm = np.linalg.norm(total) if total is not None else 0.0
        if not norm or not np.isfinite(norm):
            item.error = ItemError(
                item.label, f"segment {item.starts[i]:.2f}-{item.ends[i]:.2f} s pools to a zero vector"
            )
            return
        rows[i] = total / norm
    item.vectors = rows
    item._sums = []
