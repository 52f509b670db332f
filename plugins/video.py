"""The ``video`` modality: video files cut into time segments of sampled frames, embedded by the image tower.

A video becomes one item per segment ``[j * hop, j * hop + window)`` (the last one ends at the video's end);
a segment's parts are the RGB frames sampled at ``plan.fps`` that fall inside it. Decoding runs in a child
process (:mod:`anybind.plugins.video_decode`), so a hostile file cannot crash, hang or bloat the indexer.
The sound track is the modality's companion stream (:attr:`anybind.Modality.companions`): :func:`audio_track`
cuts it like an audio file, and ``add_files(audio_tracks=True)`` stores its segments as ``audio`` items with the
video's path and times.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from anybind import Modality, hookimpl
from anybind.errors import DecodeError
from anybind.modality import read_file
from anybind.segments import Segment, SegmentPlan

from . import video_decode

EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
# ISO base media (MP4/QuickTime/3GP) brands of files that hold video; audio-only and still-image brands differ.
VIDEO_BRANDS = {
    *(b"iso" + bytes([c]) for c in b"m23456789"),
    *(b"mp4" + bytes([c]) for c in b"12"),
    b"mp71", b"avc1", b"M4V ", b"M4VH", b"M4VP", b"qt  ", b"dash", b"msnv", b"MSNV", b"f4v ", b"mmp4", b"XAVC",
    *(b"3gp" + bytes([c]) for c in b"456789"), b"3gs7", b"3ge6", b"3ge7", b"3gg6", b"3g2a", b"3g2b", b"3g2c",
}  # fmt: skip
AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"heif"}
QUICKTIME_ATOMS = (b"moov", b"mdat", b"wide", b"pnot")  # old QuickTime files start without an ftyp box
DEFAULT_FPS = 1.0
MAX_SIDE = 512  # frames come back with the shorter side at most this (models resize to 224-384 anyway)
DECODE_MAX_SECONDS = 600.0  # decode() holds every frame; longer videos are indexed as segments instead
EPS = 1e-9


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes are a video container: MP4/MOV/3GP (not audio-only M4A), Matroska/WebM, AVI."""
    if head[4:8] == b"ftyp":
        major = head[8:12]
        if major in AUDIO_BRANDS or major in IMAGE_BRANDS:
            return False
        size = int.from_bytes(head[:4], "big")
        brands = [major] + [head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
        return any(brand in VIDEO_BRANDS for brand in brands)
    return (
        head[4:8] in QUICKTIME_ATOMS
        or head.startswith(b"\x1a\x45\xdf\xa3")
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
    )


@contextlib.contextmanager
def video_file(source: Any) -> Iterator[tuple[str, str]]:
    """``(path, label)`` of a video given as a path or as bytes (written to a temporary file for the decoder).

    Raises :class:`DecodeError` for a missing, empty or unreadable file and for other kinds of input.
    """
    if isinstance(source, (str, os.PathLike)):
        read_file(source, head=16)  # missing, a directory, unreadable, empty: named errors before decoding
        yield os.fspath(source), os.fspath(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = f"<{len(source)} bytes>"
        if len(source) == 0:
            raise DecodeError(label, "empty input (0 bytes)")
        with tempfile.NamedTemporaryFile(prefix="anybind-video-", delete=False) as handle:
            name = handle.name
        try:
            with open(name, "wb") as out:
                out.write(source)
            yield name, label
        finally:
            os.unlink(name)
    else:
        raise DecodeError(f"<{type(source).__name__}>", "videos are paths or bytes")


def _image(header: dict, payload: bytes) -> Image.Image:
    """A frame from the decoder as an RGB image, turned the way the video's display matrix says."""
    image = Image.frombytes("RGB", (header["width"], header["height"]), payload)
    turns = round(header.get("rotation", 0) / 90) % 4  # counter-clockwise quarter turns
    if turns:
        image = image.transpose(
            (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[turns]
        )
    return image


class SampledFrames:
    """The frames of a video sampled at ``fps``, as ``(seconds, RGB image)`` in time order.

    Frame ``j`` is the picture on screen at ``j / fps`` seconds, for every such time before the video's end.
    ``duration`` (seconds) is known once iteration has finished. Decoding runs in a child process that is given
    up after ``timeout`` seconds without progress; every failure is a :class:`DecodeError` naming ``label``.
    """

    def __init__(self, path: str, label: str, fps: float, timeout: float = 30.0, max_side: int = MAX_SIDE) -> None:
        self.path, self.label, self.fps, self.timeout, self.max_side = path, label, fps, timeout, max_side
        self.duration: float | None = None

    def __iter__(self) -> Iterator[tuple[float, Image.Image]]:
        messages = video_decode.run_child(
            "frames", self.path, self.label, self.timeout, fps=self.fps, max_side=self.max_side
        )
        with contextlib.closing(messages):
            for header, payload in messages:
                if header["kind"] == "frame":
                    yield header["time"], _image(header, payload)
                elif header["kind"] == "duration":
                    self.duration = header["seconds"]


def windows(frames: SampledFrames, plan: SegmentPlan) -> Iterator[Segment]:
    """Segments ``[j * hop, j * hop + window)`` holding the frames that fall inside; the last ends at the end.

    Streams: holds only the frames of the current window. A segment without frames (a clipped tail shorter
    than the sampling interval) is skipped.
    """
    pending: deque[tuple[float, Image.Image]] = deque()
    j = 0

    def bounds(j: int) -> tuple[float, float]:
        start = round(j * plan.hop, 9)
        return start, round(start + plan.window, 9)

    def parts(start: float, end: float) -> list[Image.Image]:
        while pending and pending[0][0] < start - EPS:
            pending.popleft()
        return [image for t, image in pending if t < end - EPS]

    for t, image in frames:
        while t >= bounds(j)[1] - EPS:  # every frame of segment j has arrived
            start, end = bounds(j)
            if chosen := parts(start, end):
                yield Segment(start, end, chosen)
            j += 1
        pending.append((t, image))
    duration = frames.duration
    if duration is None:  # the decoder always reports it; guard against a stream cut short
        raise DecodeError(frames.label, "video decoder ended without reporting the duration")
    while (start_end := bounds(j))[0] < duration - EPS:
        start, end = start_end[0], min(start_end[1], duration)
        if chosen := parts(start, end):
            yield Segment(start, end, chosen)
        if end >= duration - EPS:
            break
        j += 1


class FrameList:
    """Frames already in memory (PIL images), taken as sampled at ``fps``: frame ``j`` is at ``j / fps`` s."""

    def __init__(self, frames: Sequence[Image.Image], fps: float) -> None:
        self.frames, self.fps = frames, fps
        self.duration: float | None = len(frames) / fps
        self.label = f"<{len(frames)} frames>"

    def __iter__(self) -> Iterator[tuple[float, Image.Image]]:
        for j, frame in enumerate(self.frames):
            yield j / self.fps, frame.convert("RGB")


def segment(source: Any, plan: SegmentPlan) -> Iterator[Segment]:
    """A video (path or bytes) as time segments whose parts are the RGB frames sampled inside them.

    A list of PIL images is taken as frames already sampled at the plan's fps (1 frame/s by default).
    """
    if isinstance(source, (list, tuple)):  # frames in memory (bytes, bytearray and memoryview are files)
        frames = decode(source)  # validates: a non-empty list of images
        yield from windows(FrameList(frames, plan.fps or DEFAULT_FPS), plan)  # type: ignore[arg-type]
        return
    with video_file(source) as (path, label):
        fps = plan.fps or max(DEFAULT_FPS, 1.0 / plan.window)  # at least one frame per window
        frames = SampledFrames(path, label, fps, plan.timeout)
        yield from windows(frames, plan)


def audio_track(source: Any, plan: SegmentPlan) -> Iterator[Segment]:
    """The video's first audio track cut like an audio file (one :class:`AudioClip` part per segment).

    A video without an audio track has no segments. Chunks are ``plan.window`` long every ``plan.hop``
    seconds, resampled to ``plan.sample_rate``, on the same timeline as the frames.
    """
    from anybind.plugins.audio_chunks import chunk_blocks

    with video_file(source) as (path, label):
        messages = video_decode.run_child("audio", path, label, plan.timeout)
        with contextlib.closing(messages):
            header, _ = next(messages)
            if header.get("rate") is None:
                return
            yield from chunk_blocks(_blocks(messages), int(header["rate"]), plan, label)


def _blocks(messages: Iterable[tuple[dict, bytes]]) -> Iterator[np.ndarray]:
    for header, payload in messages:
        if header["kind"] == "audio":
            yield np.frombuffer(payload, dtype=np.float32)


def decode(source: Any) -> list[Image.Image]:
    """A short video as its frames sampled at 1 frame/s (RGB images); a list of images passes through.

    Videos over :data:`DECODE_MAX_SECONDS` are refused: index them as segments instead.
    """
    if isinstance(source, (list, tuple)):  # frames in memory (bytes, bytearray and memoryview are files)
        if not source or not all(isinstance(frame, Image.Image) for frame in source):
            raise DecodeError(f"<{type(source).__name__}>", "a decoded video is a non-empty list of PIL images")
        return [frame.convert("RGB") for frame in source]
    with video_file(source) as (path, label):
        images = []
        for t, image in SampledFrames(path, label, DEFAULT_FPS):
            if t >= DECODE_MAX_SECONDS:
                raise DecodeError(
                    label,
                    f"video is longer than {DECODE_MAX_SECONDS:g} s, too long to decode whole; index it as segments",
                )
            images.append(image)
        return images


def frame_at(
    path: str | os.PathLike[str], seconds: float, timeout: float = 30.0, max_side: int = MAX_SIDE
) -> Image.Image:
    """The RGB frame on screen ``seconds`` into the video (decoded in a child process, like every frame here).

    Raises :class:`DecodeError` naming the file for a time outside the video and for undecodable files.
    """
    with video_file(path) as (file, label):
        messages = video_decode.run_child("frame_at", file, label, timeout, seconds=float(seconds), max_side=max_side)
        with contextlib.closing(messages):
            for header, payload in messages:
                if header["kind"] == "frame":
                    return _image(header, payload)
    raise DecodeError(label, f"no frame at {seconds} s")  # pragma: no cover - the child always sends one


@hookimpl
def anybind_modalities(register: Any) -> None:
    register(
        Modality(
            name="video",
            decode=decode,
            sniff=sniff,
            extensions=EXTENSIONS,
            embeds_as="image",
            description="Video files (MP4, MOV, MKV, WebM, AVI): frames sampled per time segment; sound track as audio",
            segment=segment,
            segment_defaults={"window": 2.0, "overlap": 0.0, "fps": DEFAULT_FPS},
            companions={"audio": audio_track},
        )
    )
