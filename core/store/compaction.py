"""The merge policy of a partition's segments, and merging itself.

Policy (Lucene's log merge policy, by live rows): a segment's *level* is ``floor(log10(live / 1024))``; when
``MERGE_FACTOR`` (10) adjacent segments (in id order) share a level, the writer merges them into one segment
of the next level, at most one merge per commit and never beyond ``MAX_MERGE_ROWS`` rows, so a commit's extra
work is bounded and every row is rewritten about ``log10(n / 1024)`` times in all. A segment that lost more
than half its rows to deletions is rewritten alone. Merging only adjacent segments keeps every segment's ids a
sorted, disjoint range, so a merge is a concatenation streamed block by block (bounded memory).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .manifest import SegmentRecord
from .segment import ROW_BLOCK, load_array, read_blocks, write_segment

MERGE_FACTOR = 10
LEVEL_BASE = 1024
MAX_MERGE_ROWS = 1 << 20  # the writer never merges into a bigger segment; `anybind optimize` may
EXPUNGE_FRACTION = 0.5


def level(record: SegmentRecord) -> int:
    return max(0, int(math.log10(max(record.live, 1) / LEVEL_BASE))) if record.live >= LEVEL_BASE else 0


def plan_merge(segments: Sequence[SegmentRecord]) -> tuple[int, int] | None:
    """``(start, stop)``: the run of adjacent segments (ordered by id) to merge in this commit, or None."""
    for lowest in range(0, 8):
        run_start = None
        for position, record in enumerate([*segments, None]):
            fits = record is not None and level(record) == lowest
            if fits and run_start is None:
                run_start = position
            if not fits and run_start is not None:
                if position - run_start >= MERGE_FACTOR:
                    stop = run_start + MERGE_FACTOR
                    if sum(s.live for s in segments[run_start:stop]) <= MAX_MERGE_ROWS:
                        return run_start, stop
                run_start = None
    for position, record in enumerate(segments):
        if record.rows and record.deleted_rows > EXPUNGE_FRACTION * record.rows:
            return position, position + 1
    return None


def live_ids(folder: Path, record: SegmentRecord) -> np.ndarray:
    ids = np.asarray(load_array(folder / record.ids.name, record.ids, "<i8", (record.rows,), mmap=False))
    if record.deleted is None:
        return ids
    dead = np.asarray(load_array(folder / record.deleted.name, record.deleted, "<i8", (record.deleted_rows,), False))
    keep = np.ones(record.rows, dtype=bool)
    keep[dead] = False
    return ids[keep]


def _live_blocks(folder: Path, records: Sequence[SegmentRecord], dim: int) -> Iterator[np.ndarray]:
    for record in records:
        keep = None
        if record.deleted is not None:
            dead = load_array(folder / record.deleted.name, record.deleted, "<i8", (record.deleted_rows,), False)
            keep = np.ones(record.rows, dtype=bool)
            keep[np.asarray(dead)] = False
        start = 0
        for block in read_blocks(folder, record, dim, ROW_BLOCK):
            yield block if keep is None else block[keep[start : start + len(block)]]
            start += len(block)


def merge(folder: Path, records: Sequence[SegmentRecord], dim: int, name: str) -> SegmentRecord:
    """One new segment ``name`` holding the live rows of ``records`` (adjacent, in id order)."""
    ids = np.concatenate([live_ids(folder, r) for r in records]) if records else np.empty(0, np.int64)
    return write_segment(folder, name, dim, ids, _live_blocks(folder, records, dim), len(ids))
