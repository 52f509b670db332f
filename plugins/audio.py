"""The ``audio`` modality: sound files (WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF), bytes, or :class:`AudioClip` s.

Files are read with libsndfile (``soundfile``) block by block, downmixed to mono, and cut into windows
(:func:`segment`) resampled to the encoder's rate; :func:`decode` returns a short file whole.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import soundfile as sf

from anybind import Modality, hookimpl
from anybind.errors import DecodeError
from anybind.modality import read_file
from anybind.segments import AudioClip, Segment, SegmentPlan

from .audio_chunks import chunk_blocks

EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc")
BLOCK_SECONDS = 1.0  # how much is read from a file at a time
MAX_DECODE_SECONDS = 600.0  # decode() holds a whole file in memory; longer files are indexed as segments
OGG_AUDIO_CODECS = (b"\x01vorbis", b"OpusHead", b"\x7fFLAC")  # what libsndfile decodes inside Ogg
# libsndfile's parser log says "data : 80000 (should be 39978)" when a chunk runs past the end of the file.
CUT_CHUNK = re.compile(rb"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
PLACEHOLDER_SIZES = (0, 0x7FFFFFFF, 0xFFFFFFFF)  # written by streaming recorders that never fix the header

# MPEG audio frame headers: bitrates (kbit/s) by (version 1?, layer) and sample rates by version bits.
_BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mpeg_frame(head: bytes, at: int) -> tuple[int, int] | None:
    """``(frame length, header key)`` of a valid MPEG audio frame header at ``at``, else None."""
    if len(head) < at + 4 or head[at] != 0xFF or head[at + 1] & 0xE0 != 0xE0:
        return None
    version, layer_bits = (head[at + 1] >> 3) & 3, (head[at + 1] >> 1) & 3
    bitrate_index, rate_index = head[at + 2] >> 4, (head[at + 2] >> 2) & 3
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3 or head[at + 3] & 3 == 2:
        return None  # reserved values (free-format streams are refused too: libsndfile reads them badly)
    layer, v1 = 4 - layer_bits, version == 3
    bitrate = _BITRATES[(v1, layer)][bitrate_index - 1] * 1000
    rate, padding = _SAMPLE_RATES[version][rate_index], (head[at + 2] >> 1) & 1
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    else:
        length = (144 if layer == 2 or v1 else 72) * bitrate // rate + padding
    return length, (head[at + 1] & 0xFE) << 8 | (head[at + 2] & 0x0C)


def _mpeg_audio(head: bytes, at: int = 0) -> bool:
    """An MPEG audio frame at ``at``, followed by a matching one when ``head`` is long enough to hold it."""
    frame = _mpeg_frame(head, at)
    if frame is None:
        return False
    length, key = frame
    if len(head) < at + length + 4:
        return True
    following = _mpeg_frame(head, at + length)
    return following is not None and following[1] == key


def _id3_audio(head: bytes) -> bool:
    """An ID3v2 tag (with a well-formed header) followed, when visible, by MP3 or FLAC data."""
    if len(head) < 10 or head[3] not in (2, 3, 4) or head[4] == 0xFF or any(b >= 0x80 for b in head[6:10]):
        return False
    end = 10 + (head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]) + (10 if head[5] & 0x10 else 0)
    if len(head) < end + 4:
        return True
    return head[end : end + 4] == b"fLaC" or _mpeg_audio(head, end)


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes are an audio format this modality reads (by magic numbers, not extension)."""
    tag, kind = head[:4], head[8:12]
    if tag in (b"RIFF", b"RF64", b"BW64"):
        return kind == b"WAVE"
    if tag == b"FORM":
        return kind in (b"AIFF", b"AIFC")
    if tag == b"fLaC":
        return True
    if tag == b"OggS":  # Ogg also carries video (Theora): look for an audio codec in the first page
        return any(codec in head[:512] for codec in OGG_AUDIO_CODECS)
    if head[:3] == b"ID3":
        return _id3_audio(head)
    return _mpeg_audio(head)


# -- reading --------------------------------------------------------------------------------------------------


class _BytesSource(io.BytesIO):
    """In-memory bytes for libsndfile's virtual I/O; a seek before the start fails quietly instead of raising
    inside a C callback (where the exception could not reach us)."""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return super().seek(offset, whence)
        except ValueError:
            return self.tell()


def _label(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, AudioClip):
        return f"<AudioClip: {len(source.samples)} samples at {source.sample_rate} Hz>"
    return f"<{type(source).__name__}>"


def _reason(exc: Exception) -> str:
    message = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
    if message.startswith("File does not exist or is not a regular file"):  # libsndfile's word for a bad MP3 stream
        return "the decoder found no readable stream (corrupt or truncated data)"
    return message.removeprefix("Error : ").strip()


@contextmanager
def _open(source: Any, label: str) -> Iterator[sf.SoundFile]:
    """An open :class:`soundfile.SoundFile`; :class:`DecodeError` naming ``label`` when it is not audio."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DecodeError(label, "empty input (0 bytes)")
        file: Any = _BytesSource(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        read_file(source, head=16)  # missing, a directory, unreadable, or 0 bytes: a typed error naming the file
        file = os.fspath(source)
    else:
        raise DecodeError(label, "audio items are paths, bytes or anybind.segments.AudioClip")
    try:
        handle = sf.SoundFile(file)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise DecodeError(label, f"not a readable audio file: {_reason(exc)}") from None
    with handle:
        yield handle


def _truncation(handle: sf.SoundFile, frames_read: int) -> str | None:
    """Why a file that decoded without an error is still cut short (its header promised more), or None."""
    log = handle.extra_info.encode("utf-8", "replace")
    for declared, actual in CUT_CHUNK.findall(log):
        if int(declared) > int(actual) and int(declared) not in PLACEHOLDER_SIZES:
            return f"the header promises {int(declared)} bytes of audio data but the file holds {int(actual)}"
    if frames_read == 0 and b"ended unexpectedly" in log:
        return "the Ogg stream ends without its end-of-stream page"
    promised = handle.frames
    slack = max(0.05 * promised, handle.samplerate) if handle.format == "MP3" else 0  # MP3 lengths are estimates
    if frames_read < promised - slack:
        return f"the header promises {promised / handle.samplerate:.1f} s"
    return None


def _read_blocks(
    handle: sf.SoundFile, label: str, max_seconds: float | None = None, timeout: float | None = None
) -> Iterator[np.ndarray]:
    """Mono float32 blocks of about :data:`BLOCK_SECONDS` (channels averaged) until the end of the file.

    A read that takes longer than ``timeout`` seconds gives the file up (a hostile or pathological stream);
    libsndfile cannot be interrupted, so this is checked when the read returns.
    """
    rate = handle.samplerate
    block = max(1024, round(BLOCK_SECONDS * rate))
    done = 0
    while True:
        began = time.monotonic()
        try:
            frames = handle.read(block, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, ValueError, OSError) as exc:
            raise DecodeError(label, f"corrupt or truncated audio after {done / rate:.1f} s: {_reason(exc)}") from None
        took = time.monotonic() - began
        if timeout is not None and took > timeout:
            raise DecodeError(
                label, f"decoding stalled after {done / rate:.1f} s: one read took {took:.1f} s (limit {timeout:g} s)"
            )
        if len(frames) == 0:
            break
        done += len(frames)
        if max_seconds is not None and done > max_seconds * rate:
            raise DecodeError(label, _too_long(max_seconds))
        yield frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
    cut = _truncation(handle, done)
    if cut is not None:
        raise DecodeError(label, f"corrupt or truncated audio after {done / rate:.1f} s: {cut}")


def _too_long(limit: float) -> str:
    return (
        f"longer than {limit / 60:g} minutes: decode() holds a whole file in memory; index it instead "
        "(audio is cut into segments by space.try_embed_segments / anybind index)"
    )


def _clip_blocks(clip: AudioClip, label: str) -> Iterator[np.ndarray]:
    samples = np.asarray(clip.samples)
    if samples.ndim != 1:
        raise DecodeError(label, f"AudioClip samples must be mono (1-D), got shape {samples.shape}")
    step = max(1024, round(BLOCK_SECONDS * clip.sample_rate))
    for start in range(0, len(samples), step):
        yield samples[start : start + step]


# -- the modality -----------------------------------------------------------------------------------------------


def segment(source: Any, plan: SegmentPlan) -> Iterator[Segment]:
    """Stream ``source`` (a path, bytes or :class:`AudioClip`) as :class:`Segment` s of ``plan.window`` seconds.

    Each segment holds one mono :class:`AudioClip` at ``plan.sample_rate`` (the file's own rate when None);
    see :func:`anybind.plugins.audio_chunks.chunk_blocks` for the cutting rules. Raises
    :class:`DecodeError` naming the file for missing, empty, non-audio, header-only or corrupt input.
    """
    label = _label(source)
    if isinstance(source, AudioClip):
        yield from chunk_blocks(_clip_blocks(source, label), source.sample_rate, plan, label, offset=source.start)
        return
    with _open(source, label) as handle:
        yield from chunk_blocks(_read_blocks(handle, label, timeout=plan.timeout), handle.samplerate, plan, label)


def decode(source: Any) -> AudioClip:
    """A whole path, bytes or :class:`AudioClip` -> one mono float32 :class:`AudioClip` at the file's rate.

    Meant for short sounds (a query); files over :data:`MAX_DECODE_SECONDS` are refused with a
    :class:`DecodeError` (index them: they are cut into segments).
    """
    label = _label(source)
    start = 0.0
    if isinstance(source, AudioClip):
        samples = np.concatenate([np.zeros(0, np.float32), *_clip_blocks(source, label)])
        rate, start = source.sample_rate, source.start
    else:
        with _open(source, label) as handle:
            rate = handle.samplerate
            if handle.frames > MAX_DECODE_SECONDS * rate and handle.format != "MP3":
                raise DecodeError(label, _too_long(MAX_DECODE_SECONDS))
            samples = np.concatenate([np.zeros(0, np.float32), *_read_blocks(handle, label, MAX_DECODE_SECONDS)])
    if len(samples) == 0:
        raise DecodeError(label, "no audio frames (empty or header-only file)")
    finite = np.isfinite(samples)
    if not finite.all():
        at = int(np.argmin(finite)) / rate
        raise DecodeError(label, f"non-finite sample (NaN or infinity) at {at:.3f} s: corrupt audio data")
    return AudioClip(np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False), rate, start)


@hookimpl
def anybind_modalities(register: Any) -> None:
    register(
        Modality(
            name="audio",
            decode=decode,
            sniff=sniff,
            extensions=EXTENSIONS,
            segment=segment,
            segment_defaults={"window": 10.0, "overlap": 0.0},
            description="Sound files (WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF), bytes or AudioClips; cut into windows",
        )
    )
