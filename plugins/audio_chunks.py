"""Cutting a stream of audio blocks into time segments, resampled for the encoder.

Shared by the ``audio`` modality and the audio tracks of ``video``. The stream is read block by block and
only what the current window needs (about one window plus one block) is held, so a long recording never
sits whole in memory.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from anybind.errors import DecodeError
from anybind.segments import AudioClip, Segment, SegmentPlan

MAX_SHORT_TAIL = 1.0  # seconds: a last chunk shorter than min(this, window / 2) is shifted back, see chunk_blocks


@functools.lru_cache(maxsize=16)
def _resampler(source_rate: int, target_rate: int) -> Any:
    """A torchaudio ``Resample`` transform for one pair of rates (its filter is built once)."""
    import torchaudio

    return torchaudio.transforms.Resample(source_rate, target_rate)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 ``samples`` at ``target_rate`` (torchaudio's band-limited sinc resampling), clipped to [-1, 1].

    ``ceil(len(samples) * target_rate / source_rate)`` samples come back; the input comes back unchanged
    when the rates agree.
    """
    if source_rate == target_rate or len(samples) == 0:
        return samples
    import torch

    with torch.inference_mode():
        out = _resampler(source_rate, target_rate)(torch.from_numpy(np.ascontiguousarray(samples, np.float32)))
    return np.clip(out.numpy(), -1.0, 1.0).astype(np.float32, copy=False)


def clip_samples(clip: Any, sample_rate: int, encoder: str) -> np.ndarray:
    """An :class:`AudioClip`'s samples at ``sample_rate``, for ``encoder``'s audio tower; :class:`DecodeError` for
    another kind of value or an empty clip."""
    if not isinstance(clip, AudioClip):
        raise DecodeError(
            f"<{type(clip).__name__}>", f"the {encoder} audio tower embeds anybind.segments.AudioClip values"
        )
    if len(clip.samples) == 0:
        raise DecodeError(f"<AudioClip at {clip.start:.3f} s>", "empty audio clip (0 samples)")
    return resample(np.asarray(clip.samples, dtype=np.float32), clip.sample_rate, sample_rate)


class _Window:
    """The samples of a stream from ``first`` (an absolute sample index) to what has arrived, as a deque of blocks."""

    def __init__(self) -> None:
        self.blocks: deque[np.ndarray] = deque()
        self.first = 0  # absolute index of blocks[0][0]
        self.received = 0  # samples seen so far (absolute index one past the newest)

    def push(self, block: np.ndarray) -> None:
        if len(block):
            self.blocks.append(block)
            self.received += len(block)

    def take(self, start: int, stop: int) -> np.ndarray:
        """A copy of absolute samples ``[start, stop)``, which must still be held."""
        assert self.first <= start <= stop <= self.received
        out = np.empty(stop - start, dtype=np.float32)
        position, filled = self.first, 0
        for block in self.blocks:
            lo, hi = max(start, position), min(stop, position + len(block))
            if lo < hi:
                out[filled : filled + hi - lo] = block[lo - position : hi - position]
                filled += hi - lo
            position += len(block)
            if position >= stop:
                break
        return out

    def drop_before(self, index: int) -> None:
        """Forget whole blocks that end at or before absolute sample ``index``."""
        while self.blocks and self.first + len(self.blocks[0]) <= index:
            self.first += len(self.blocks.popleft())

    @property
    def held(self) -> int:
        return self.received - self.first


def _checked(block: Any, received: int, rate: int, label: str) -> np.ndarray:
    block = np.asarray(block, dtype=np.float32)
    if block.ndim != 1:
        raise ValueError(f"audio blocks must be mono (1-D); got shape {block.shape} for {label}")
    finite = np.isfinite(block)
    if not finite.all():
        at = (received + int(np.argmin(finite))) / rate
        raise DecodeError(label, f"non-finite sample (NaN or infinity) at {at:.3f} s: corrupt audio data")
    return np.clip(block, -1.0, 1.0)  # float files may hold overs; an AudioClip lies in [-1, 1]


def chunk_blocks(
    blocks: Iterable[np.ndarray], rate: int, plan: SegmentPlan, label: str, *, offset: float = 0.0
) -> Iterator[Segment]:
    """Segments of ``plan.window`` seconds every ``plan.hop`` seconds over a stream of mono float32 blocks.

    ``blocks`` are consecutive mono samples at ``rate`` Hz, in blocks of any size. Chunk ``i`` covers samples
    ``[i * hop_n, i * hop_n + win_n)`` (``win_n = round(window * rate)``, ``hop_n = round(hop * rate)``), cut
    short at the end of the stream; chunking stops after the chunk that reaches the end. A last chunk holding
    less than ``min(1 s, window / 2)`` of audio is shifted back to end at the end of the stream (a full window
    ending there) when an earlier chunk exists; a stream shorter than the window is one chunk of its length.

    Yields ``Segment(start, end, [AudioClip])`` with sample-accurate ``start``/``end`` seconds (plus
    ``offset``: where the stream begins in its source) and the chunk resampled to ``plan.sample_rate``
    (when set). Raises :class:`DecodeError` naming ``label`` for a stream with no samples, or a NaN or
    infinite sample (naming its time).
    """
    if not isinstance(rate, int) or rate < 1:
        raise DecodeError(label, f"invalid sample rate {rate!r}")
    win_n = max(1, round(plan.window * rate))
    hop_n = max(1, min(win_n, round(plan.hop * rate)))
    min_tail = min(MAX_SHORT_TAIL, plan.window / 2) * rate
    target = plan.sample_rate or rate

    def segment(first: int, stop: int, window: _Window) -> Segment:
        samples = resample(window.take(first, stop), rate, target)
        start = offset + first / rate
        return Segment(start, offset + stop / rate, [AudioClip(samples, target, start)])

    window = _Window()
    index = 0  # the next chunk to emit
    for block in blocks:
        window.push(_checked(block, window.received, rate, label))
        while index * hop_n + win_n <= window.received:  # a full chunk: emit it whatever follows
            first = index * hop_n
            yield segment(first, first + win_n, window)
            index += 1
        # Keep what the next chunk needs, and the last full window (a short tail is shifted back onto it).
        window.drop_before(min(index * hop_n, window.received - win_n))
    total = window.received
    if total == 0:
        raise DecodeError(label, "no audio frames (empty or header-only file)")
    first = index * hop_n
    if index > 0 and first + win_n - hop_n >= total:
        return  # the previous chunk already reached the end of the stream
    if index > 0 and total - first < min_tail:
        first = total - win_n  # a short tail: a full window ending at the end instead
    yield segment(first, total, window)
