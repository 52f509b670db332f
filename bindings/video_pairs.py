"""Training pairs harvested from videos: each audio chunk of a video's sound with the frame shown at its middle.

This is ImageBind's natural pairing for audio (the sound and the picture of the same moment), and needs no
labels: ``anybind bind train --videos clips/``. The audio is cut exactly as the source encoder will see it at
index time (its window, at its sample rate); frames come from the video plugin's isolated decoder. Sound and
picture stream in step and are embedded ``batch`` pairs at a time: only vectors are kept, so an hour of
video costs what its vectors cost.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from anybind.errors import ItemError, SpaceError
from anybind.segments import Segment, SegmentPlan

from .pairs import PairSet, Skipped

FRAME_STEP = 0.5  # seconds between candidate frames; each chunk gets the one shown at its middle


class FrameCursor:
    """The frames of one video sampled every :data:`FRAME_STEP` seconds, read forward on demand."""

    def __init__(self, video: Any, path: str, timeout: float) -> None:
        plan = SegmentPlan(FRAME_STEP, FRAME_STEP, fps=1 / FRAME_STEP, timeout=timeout)
        self.path = path
        self._frames: Iterator[Segment] = iter(video.segment(path, plan))
        self._current: Segment | None = None

    def at(self, seconds: float) -> Any:
        """The frame sampled at or just before ``seconds`` (times must not go backwards)."""
        while self._current is None or seconds >= self._current.end:
            self._current = next(self._frames, None)
            if self._current is None:
                raise ItemError(self.path, f"no frame at {seconds:.2f} s (the picture ends before the sound)")
        return self._current.parts[0]

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()  # stop the decoder's child process


def _embed(
    space: Any, encoder: str, path: str, batch: list[tuple[Segment, Any]]
) -> tuple[np.ndarray, np.ndarray, list[Skipped]]:
    """Native audio vectors and anchor image vectors of the pairs that both embedded, and the rest as skipped."""
    audio = space.try_native("audio", [chunk.parts[0] for chunk, _ in batch], encoder=encoder)
    images = space.try_embed("image", [frame for _, frame in batch])
    failures = [*zip(audio.failed, audio.errors, strict=True), *zip(images.failed, images.errors, strict=True)]
    skipped = [Skipped(f"{path} @ {batch[i][0].start:.2f}-{batch[i][0].end:.2f} s", e) for i, e in failures]
    audio_rows = {item: row for row, item in enumerate(audio.indices)}
    image_rows = {item: row for row, item in enumerate(images.indices)}
    both = [i for i in range(len(batch)) if i in audio_rows and i in image_rows]
    return audio.vectors[[audio_rows[i] for i in both]], images.vectors[[image_rows[i] for i in both]], skipped


def harvest_video_pairs(
    space: Any,
    encoder: str,
    videos: Iterable[str | os.PathLike[str]],
    *,
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
) -> PairSet:
    """(audio chunk, frame) pairs from ``videos``: native ``encoder`` audio vectors and anchor image vectors.

    A video without a sound track, or one that cannot be decoded, is skipped whole and reported in
    ``skipped`` (as is a single chunk or frame that cannot be embedded).
    """
    host = space.host
    if "video" not in host.modalities or "audio" not in host.modalities:
        raise SpaceError("harvesting pairs from videos needs the video and audio plugins")
    video = host.modalities.get("video")
    track = video.companions.get("audio")
    if track is None:
        raise SpaceError(f"the video plugin {host.modalities.entry('video').plugin!r} does not read audio tracks")
    plan: SegmentPlan | None = space.segment_plan("audio", encoder=space.load_encoder(encoder))
    assert plan is not None
    sources: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    skipped: list[Skipped] = []
    count = 0
    for done, item in enumerate(videos, 1):
        path = os.fspath(item)
        count += 1
        embedded: list[tuple[np.ndarray, np.ndarray, list[Skipped]]] = []
        chunks = iter(track(path, plan))
        cursor = FrameCursor(video, path, plan.timeout)
        try:
            pending: list[tuple[Segment, Any]] = []
            for chunk in chunks:
                pending.append((chunk, cursor.at((chunk.start + chunk.end) / 2)))
                if len(pending) == batch:
                    embedded.append(_embed(space, encoder, path, pending))
                    pending = []
            if pending:
                embedded.append(_embed(space, encoder, path, pending))
            if not embedded:
                raise ItemError(path, "has no audio track")
        except ItemError as exc:  # the video is dropped whole: a failure half-way is not half a video's pairs
            skipped.append(Skipped(path, exc))
            continue
        finally:
            cursor.close()
            with contextlib.suppress(Exception):
                chunks.close()  # type: ignore[attr-defined]
        for audio_vectors, image_vectors, failed in embedded:
            sources.append(audio_vectors)
            targets.append(image_vectors)
            skipped.extend(failed)
        if progress:
            progress(done)
    dim = space.load_encoder(encoder).dim
    source = np.concatenate(sources) if sources else np.empty((0, dim), np.float32)
    target = np.concatenate(targets) if targets else np.empty((0, space.dim), np.float32)
    summary = {
        "pairs_source": f"{count} videos (audio chunk + frame at its middle)",
        "videos": count,
        "pairs": len(source),
        "window_s": plan.window,
        "hop_s": plan.hop,
    }
    return PairSet(source, target, summary, skipped)
