"""Tiny deterministic videos for tests (yours and ours), written with PyAV; no network, no fixtures on disk.

``write_video(path, [RED, RED, RED, BLUE, BLUE, BLUE])`` writes a 6 s clip that is red for 0-3 s and blue for
3-6 s (64x48 pixels at 5 frames/s, H.264); ``audio=(samples, rate)`` muxes an AAC track beside it::

    from anybind.testing_video import write_video, tone
    write_video(tmp / "clip.mp4", [RED] * 3 + [BLUE] * 4, audio=(tone(440.0, 7.0), 16000))
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)

Color = tuple[int, int, int]


def tone(frequency: float, seconds: float, sample_rate: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    """A float32 mono sine of ``frequency`` Hz lasting ``seconds``."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def _frames(content: Sequence[Color] | Sequence[np.ndarray], fps: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Per-second colours -> ``fps`` flat frames per colour; explicit ``(H, W, 3)`` uint8 frames pass through."""
    width, height = size
    frames: list[np.ndarray] = []
    for entry in content:
        if isinstance(entry, np.ndarray):
            frames.append(np.ascontiguousarray(entry, dtype=np.uint8))
        else:
            flat = np.empty((height, width, 3), dtype=np.uint8)
            flat[:] = entry
            frames.extend([flat] * fps)
    return frames


def write_video(
    path: str | Path,
    content: Sequence[Color] | Sequence[np.ndarray],
    fps: int = 5,
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    audio: tuple[np.ndarray, int] | None = None,
    faststart: bool = False,
    video: bool = True,
    rotation: int = 0,
    audio_delay: float = 0.0,
) -> Path:
    """Write a small video file and return its path; the container follows the suffix (.mp4, .mkv, .avi, ...).

    ``content`` is one RGB colour per second (each shown for ``fps`` frames) or a list of ``(H, W, 3)`` uint8
    frames (one per ``1/fps`` s). ``codec`` is ``libx264`` or ``mpeg4``. ``audio=(samples, rate)`` adds a mono
    AAC track; ``faststart`` puts the MP4 index (``moov``) before the media data instead of after it;
    ``video=False`` writes the audio track alone (an audio-only MP4); ``rotation`` (degrees counter-clockwise)
    tags the stream to be shown rotated, as phones do for portrait clips; ``audio_delay`` starts the audio
    track that many seconds after the video.
    """
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        vstream = None
        if video:
            frames = _frames(content, fps, size)
            vstream = container.add_stream(codec, rate=fps)
            vstream.width, vstream.height = frames[0].shape[1], frames[0].shape[0]
            vstream.pix_fmt = "yuv420p"
            vstream.codec_context.time_base = Fraction(1, fps)
            if rotation:
                vstream.set_display_rotation(rotation)
            if codec == "libx264":
                vstream.options = {"crf": "1", "threads": "1", "bframes": "0"}
            else:
                vstream.codec_context.bit_rate = 2_000_000
        astream = None
        if audio is not None:
            samples, rate = audio
            astream = container.add_stream("aac", rate=rate, layout="mono")
        if vstream is not None:
            for index, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = index
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            _write_audio(container, astream, np.asarray(samples, dtype=np.float32), rate, round(audio_delay * rate))
    return path


def _write_audio(
    container: av.container.OutputContainer, stream: av.AudioStream, samples: np.ndarray, rate: int, delay: int
) -> None:
    size = stream.codec_context.frame_size or 1024
    for start in range(0, len(samples), size):
        block = np.ascontiguousarray(samples[None, start : start + size])
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = delay + start
        frame.time_base = Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
