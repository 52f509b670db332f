"""Training pairs harvested from videos: each audio chunk of a video's sound with the frame shown at its middle.

This is ImageBind's natural pairing for audio (the sound and the picture of the same moment), and needs no
labels: ``anybind bind train --videos clips/``. The audio is cut exactly as the source encoder will see it at
index time (its window, at its sample rate); frames come from the video plugin's isolated decoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from anybind.errors import ItemError, SpaceError
from anybind.segments import SegmentPlan

from .pairs import PairSet, Skipped

FRAME_STEP = 0.5  # seconds between candidate frames; each chunk gets the one shown at its middle


def _frames_at(video: Any, path: str, times: list[float], timeout: float) -> list[Any]:
    """The frame on screen at (the sampled instant just before) each of ``times``, from one decoding pass."""
    plan = SegmentPlan(FRAME_STEP, FRAME_STEP, fps=1 / FRAME_STEP, timeout=timeout)
    frames: list[Any] = []
    for segment in video.segment(path, plan):
        while len(frames) < len(times) and times[len(frames)] < segment.end:
            frames.append(segment.parts[0])
        if len(frames) == len(times):
            break
    if len(frames) < len(times):
        raise ItemError(path, f"no frame at {times[len(frames)]:.2f} s (the video's picture ends before its sound)")
    return frames


def harvest_video_pairs(
    space: Any,
    encoder: str,
    videos: Iterable[str | os.PathLike[str]],
    *,
    progress: Callable[[int], None] | None = None,
) -> PairSet:
    """(audio chunk, frame) pairs from ``videos``: native ``encoder`` audio vectors and anchor image vectors.

    A video without a sound track, or one that cannot be decoded, is skipped and reported in ``skipped``
    (as is a chunk or frame that cannot be embedded).
    """
    host = space.host
    if "video" not in host.modalities or "audio" not in host.modalities:
        raise SpaceError("harvesting pairs from videos needs the video and audio plugins")
    video = host.modalities.get("video")
    track = video.extra.get("audio_track")
    if track is None:
        raise SpaceError(f"the video plugin {host.modalities.entry('video').plugin!r} does not read audio tracks")
    plan: SegmentPlan | None = space.segment_plan("audio", encoder=space.load_encoder(encoder))
    assert plan is not None
    sources, targets, skipped, count = [], [], [], 0
    for done, item in enumerate(videos, 1):
        path = os.fspath(item)
        count += 1
        try:
            chunks = list(track(path, plan))
            if not chunks:
                raise ItemError(path, "has no audio track")
            frames = _frames_at(video, path, [(c.start + c.end) / 2 for c in chunks], plan.timeout)
        except ItemError as exc:
            skipped.append(Skipped(path, exc))
            continue
        audio = space.try_native("audio", [c.parts[0] for c in chunks], encoder=encoder)
        images = space.try_embed("image", frames)
        both = sorted(set(audio.indices) & set(images.indices))
        failures = [*zip(audio.failed, audio.errors, strict=True), *zip(images.failed, images.errors, strict=True)]
        for position, error in failures:
            chunk = chunks[position]
            skipped.append(Skipped(f"{path} @ {chunk.start:.2f}-{chunk.end:.2f} s", error))
        sources.append(audio.vectors[[audio.indices.index(i) for i in both]])
        targets.append(images.vectors[[images.indices.index(i) for i in both]])
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
