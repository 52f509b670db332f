"""Time segments: how long audio and video files become many searchable items.

A *temporal* modality (``audio``, ``video``) registers a ``segment(source, plan)`` function next to its
decoder. It yields :class:`Segment` s in time order, streaming: a 10-minute recording is never held whole at
model rate. Each segment carries one or more *parts* for the modality's encoder tower (one audio chunk; the
frames sampled inside a video window); the space embeds every part and averages their unit vectors into the
segment's vector. The :class:`SegmentPlan` says how to cut: the window and hop in seconds, the sample rate the
encoder wants, the frame rate to sample video at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SpaceError


@dataclass(frozen=True)
class AudioClip:
    """Mono audio: float32 samples in [-1, 1] at ``sample_rate`` Hz; what an ``audio`` tower embeds.

    ``start`` is where the clip begins in its source file, in seconds (0 for a whole clip).
    """

    samples: np.ndarray
    sample_rate: int
    start: float = 0.0

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Segment:
    """One time span ``[start, end)`` of a file, in seconds, and the decoded parts that embed into its vector."""

    start: float
    end: float
    parts: Sequence[Any]


@dataclass(frozen=True)
class SegmentPlan:
    """How to cut a temporal input into segments.

    - ``window``: seconds per segment; ``hop``: seconds between segment starts (``window - overlap``).
    - ``sample_rate``: audio parts come resampled to this rate (the encoder's); ``None`` keeps the file's.
    - ``fps``: video frames sampled per second; every segment gets the frames that fall inside it.
    - ``timeout``: seconds a decoder may go without progress before the file is given up (hostile input).
    """

    window: float
    hop: float
    sample_rate: int | None = None
    fps: float | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("window", "hop", "timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SpaceError(f"segment {name} must be a positive number of seconds, got {value!r}")
        if self.hop > self.window:
            raise SpaceError(f"segment hop ({self.hop} s) exceeds the window ({self.window} s)")
        if self.sample_rate is not None and (not isinstance(self.sample_rate, int) or self.sample_rate < 1):
            raise SpaceError(f"sample_rate must be a positive integer, got {self.sample_rate!r}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise SpaceError(f"fps must be a positive number, got {self.fps!r}")
        if self.fps is not None and self.window * self.fps < 1 - 1e-9:
            raise SpaceError(
                f"a {self.window} s window at {self.fps} frames/s would hold no frame; raise fps or the window"
            )

    @property
    def overlap(self) -> float:
        return self.window - self.hop
