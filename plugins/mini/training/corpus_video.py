"""Short synthetic videos of emoji concepts (PyAV): stills, slow pans, zooms and cuts between concepts.

A video is a list of :class:`Shot`; :func:`write_concept_video` encodes it (H.264 when PyAV's FFmpeg has
libx264, else MPEG-4 Part 2; yuv420p) and returns when each concept is on screen, so that a video search can be
scored against the true time ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MOTIONS = ("still", "pan", "zoom")


@dataclass(frozen=True)
class Shot:
    """``seconds`` of one concept's image on a white canvas.

    ``motion``: ``"still"`` (centred), ``"pan"`` (moving slowly from the left edge to the right edge) or
    ``"zoom"`` (growing from 40% to 100% of the frame, centred). ``image`` is a PIL image or a path to one.
    """

    image: Image.Image | str | Path
    label: str
    seconds: float
    motion: str = "still"


def _load(image: Image.Image | str | Path) -> Image.Image:
    """An RGB image from a PIL image or a path (transparency composited on white)."""
    picture = image if isinstance(image, Image.Image) else Image.open(image)
    picture.load()
    rgba = picture.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def shot_frame(image: Image.Image, motion: str, progress: float, size: int) -> np.ndarray:
    """One ``size`` x ``size`` RGB frame of a shot, ``progress`` (0-1) of the way through it."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}: use one of {', '.join(MOTIONS)}")
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    if motion == "zoom":
        side = max(2, round(size * (0.4 + 0.6 * progress)))
        left = top = (size - side) // 2
    elif motion == "pan":
        side = round(size * 0.6)
        left = round((size - side) * progress)
        top = (size - side) // 2
    else:
        side = round(size * 0.75)
        left = top = (size - side) // 2
    canvas.paste(image.resize((side, side), Image.Resampling.BICUBIC), (left, top))
    return np.asarray(canvas)


def _open_stream(container: Any, fps: int, size: int) -> Any:
    """A yuv420p video stream: libx264 (CRF 30) if available, else mpeg4."""
    import av

    if "libx264" in av.codecs_available:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "30", "preset": "slow", "threads": "1"})
    else:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.bit_rate = 150_000
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    return stream


def write_concept_video(
    path: str | Path, frames_spec: Sequence[Shot], fps: int = 10, size: int = 128
) -> list[dict[str, Any]]:
    """Encode the shots one after another; returns ``[{"label", "start", "end"}]`` in seconds, one per shot.

    A shot lasts ``round(seconds * fps)`` frames (at least one); frame ``j`` is on screen from ``j / fps``.
    """
    import av

    if not frames_spec:
        raise ValueError("a video needs at least one shot")
    if size % 2:
        raise ValueError(f"size must be even for yuv420p, got {size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ranges = []
    index = 0
    with av.open(str(path), "w") as container:
        stream = _open_stream(container, fps, size)
        for shot in frames_spec:
            image = _load(shot.image)
            count = max(1, round(shot.seconds * fps))
            ranges.append({"label": shot.label, "start": round(index / fps, 6), "end": round((index + count) / fps, 6)})
            for k in range(count):
                frame = av.VideoFrame.from_ndarray(shot_frame(image, shot.motion, k / max(1, count - 1), size), "rgb24")
                frame.pts = index
                frame.time_base = Fraction(1, fps)
                container.mux(stream.encode(frame))
                index += 1
        container.mux(stream.encode(None))
    return ranges


def frame_at(path: str | Path, seconds: float) -> np.ndarray:
    """The decoded RGB frame on screen at ``seconds`` (the last frame starting at or before it)."""
    import av

    chosen = None
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time > seconds + 1e-6:
                break
            chosen = frame.to_ndarray(format="rgb24")
    if chosen is None:
        raise ValueError(f"{path} has no frame at {seconds} s")
    return chosen
