"""Video decoding isolated in a child process: a hostile file can crash, hang or bloat only the child.

The parent (:func:`run_child`) starts a fresh interpreter that runs this very file: ``python -I -c BOOT``
loads it by path, so the child imports the standard library and PyAV only, never ``anybind`` (whose import
pulls in faiss and torch). Results come back over a pipe wrapped in :class:`multiprocessing.connection.Connection`
(one message: a JSON header line, then raw bytes). The parent waits with ``poll(timeout)`` and kills the child
(SIGTERM, then SIGKILL) when it makes no progress for ``timeout`` seconds; it always reaps it, also when the
consumer stops early. A fresh interpreter rather than ``fork``/``forkserver``/``spawn``: nothing of the threaded
parent is inherited, and the parent's ``__main__`` (the CLI, which imports torch) is never re-imported.

Child modes (``job["mode"]``):

- ``frames``: RGB frames sampled at ``fps``: times ``t_j = j / fps`` for ``t_j < duration``, each the frame on
  screen at ``t_j`` (the last frame with ``pts <= t_j``), downscaled so the shorter side is at most ``max_side``.
- ``frame_at``: the frame on screen at ``seconds``.
- ``audio``: the first audio stream as mono float32 blocks at its native rate.
- ``modules``: the names of the modules the child imported (tests check it stays light).

Times are seconds from the container's start, so frames and audio share one timeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from multiprocessing.connection import Connection
from typing import Any

MAX_FRAME_SIDE = 16384  # pixels; larger frames are refused (decoder memory bombs)
MAX_FRAME_PIXELS = 1 << 26
MAX_SAMPLE_RATE = 768_000
MAX_SECONDS = 24 * 3600  # a timeline longer than a day is hostile metadata, not a video
MAX_MEMORY = 8 << 30  # address-space limit of the child, bytes (decoder threads reserve a lot of it)
MAX_AUDIO_LEAD = 600  # seconds of silence before an audio track that starts late
HEARTBEAT = 1.0  # seconds between "still decoding" messages while nothing else is sent
MAX_FRAME_GAP = 600  # seconds one frame may stay on screen; a longer jump in timestamps is corrupt or hostile
SPARSE_AFTER = 3600  # seconds of samples after which a video must have decoded at least ...
MIN_FRAMES_PER_SAMPLE = 0.1  # ... one frame per ten samples (a still-image slideshow of an hour still passes)
TRUNCATION_SLACK = 2.0  # seconds a stream may end before its declared duration without counting as truncated
HOOK_ENV = "ANYBIND_VIDEO_TEST_HOOK"  # test-only: make the child hang, crash or exit (see _run_hook)

_BOOT = (
    "import json, sys; job = json.loads(sys.argv[2]); sys.path[:] = job['sys_path']; "
    "import importlib.util as u; s = u.spec_from_file_location('anybind_video_child', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); m.child_main(job)"
)


class Failure(Exception):
    """A decoding failure inside the child; its message is the reason the parent reports."""


# -- parent side -------------------------------------------------------------------------------------------


def run_child(mode: str, path: str, label: str, timeout: float, **params: Any) -> Iterator[tuple[dict, bytes]]:
    """Messages ``(header, payload)`` from a child decoding ``path`` in ``mode``, ending with ``{"kind": "end"}``.

    Raises :class:`~anybind.errors.DecodeError` naming ``label`` when the child reports a failure, makes no
    progress for ``timeout`` seconds, or dies. The child is always reaped, also when the caller stops early.
    """
    from anybind.errors import DecodeError  # lazily: this module's top level must stay cheap for the child

    job = {"mode": mode, "path": os.fspath(path), "sys_path": [p for p in sys.path if p], **params}
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, os.path.abspath(__file__), json.dumps(job), str(write_fd)],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        except (OSError, ValueError) as exc:
            os.close(read_fd)
            raise DecodeError(label, f"cannot start the video decoder process: {exc}") from None
        finally:
            os.close(write_fd)
        conn = Connection(read_fd, writable=False)
        try:
            while True:
                if not conn.poll(timeout):
                    raise DecodeError(label, f"video decoding made no progress for {timeout:g} s; gave up")
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    raise DecodeError(label, _death(proc, errors)) from None
                head, _, payload = data.partition(b"\n")
                header = json.loads(head)
                if header["kind"] == "error":
                    raise DecodeError(label, header["reason"])
                if header["kind"] != "alive":
                    yield header, payload
                if header["kind"] == "end":
                    return
        finally:
            conn.close()
            _reap(proc)


def _reap(proc: subprocess.Popen) -> None:
    """Stop the child if it still runs (SIGTERM, then SIGKILL) and wait for it: no zombies left behind."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _death(proc: subprocess.Popen, errors: Any) -> str:
    """Why a child stopped talking without finishing: its exit status and the last line it printed."""
    try:
        code = proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        return "the video decoder process closed its pipe without finishing"
    if code < 0:
        import signal

        try:
            how = f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    errors.seek(0, os.SEEK_END)
    errors.seek(max(0, errors.tell() - 2000))
    lines = errors.read().decode("utf-8", "replace").strip().splitlines()
    tail = f" ({lines[-1].strip()})" if lines else ""
    return f"the video decoder process {how} before finishing{tail}; the file may be corrupt or too large"


# -- child side --------------------------------------------------------------------------------------------


def child_main(job: dict) -> None:
    """Entry point of the child: decode ``job["path"]`` and send messages to the pipe in ``sys.argv[3]``."""
    conn = Connection(int(sys.argv[3]), readable=False)
    sender = _Sender(conn)
    memory = int(job.get("max_memory", MAX_MEMORY))
    _limit_memory(memory)
    try:
        _run_hook("start")
        modes = {"frames": _sample_frames, "frame_at": _frame_at, "audio": _audio_blocks, "modules": _modules}
        for header, payload in modes[job["mode"]](job, sender):
            sender.send(header, payload)
            _run_hook("sent")
        sender.send({"kind": "end"})
    except Failure as exc:
        sender.send({"kind": "error", "reason": str(exc)})
    except MemoryError:
        sender.send({"kind": "error", "reason": f"decoding needs more than the {memory >> 20} MiB memory limit"})
    except Exception as exc:  # a PyAV or decoder error outside the places that name it
        sender.send({"kind": "error", "reason": f"cannot decode video: {type(exc).__name__}: {exc}"})
    conn.close()


class _Sender:
    """Sends messages to the parent and heartbeats while decoding runs without output."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.last = time.monotonic()

    def send(self, header: dict, payload: bytes = b"") -> None:
        self.conn.send_bytes(json.dumps(header).encode() + b"\n" + payload)
        self.last = time.monotonic()

    def alive(self) -> None:
        if time.monotonic() - self.last > HEARTBEAT:
            self.send({"kind": "alive"})


def _limit_memory(limit: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    except (ImportError, ValueError, OSError):  # not on this platform, or a lower hard limit already set
        pass


def _run_hook(point: str) -> None:
    """Test-only misbehaviour, chosen by ``ANYBIND_VIDEO_TEST_HOOK=POINT:ACTION`` (``start:hang``, ``sent:segv``)."""
    hook = os.environ.get(HOOK_ENV, "")
    where, _, action = hook.partition(":")
    if where != point:
        return
    if action == "hang":
        time.sleep(3600)
    elif action == "segv":
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)
    elif action.startswith("exit"):
        os._exit(int(action[4:] or 3))


def _av_reason(exc: BaseException) -> str:
    """PyAV's message without its errno and file name: ``Invalid data found when processing input``."""
    return getattr(exc, "strerror", None) or str(exc)


def _open(path: str) -> Any:
    import av

    try:
        return av.open(path, metadata_errors="replace")
    except av.FFmpegError as exc:
        raise Failure(f"corrupt or truncated video: {_av_reason(exc)}") from None


def _seconds(value: int | None, base: Fraction | None) -> Fraction | None:
    return None if value is None or base is None else value * base


def _origin(container: Any) -> Fraction:
    """The container's start time: time 0 of every stream's timeline."""
    start = container.start_time
    return Fraction(start, 1_000_000) if start is not None else Fraction(0)


def _declared_end(stream: Any, origin: Fraction) -> Fraction | None:
    """Where the stream ends on the timeline according to its own metadata, or None when it does not say."""
    duration = _seconds(stream.duration, stream.time_base)
    if duration is None or duration <= 0:
        return None
    start = _seconds(stream.start_time, stream.time_base)
    return (start if start is not None else origin) + duration - origin


def _container_end(container: Any) -> Fraction | None:
    return Fraction(container.duration, 1_000_000) if container.duration and container.duration > 0 else None


def _video_stream(container: Any, job: dict) -> Any:
    if not container.streams.video:
        what = "it holds only audio" if container.streams.audio else "no stream in it is video"
        raise Failure(f"no video stream ({what})")
    stream = container.streams.video[0]
    _check_size(stream.codec_context.width, stream.codec_context.height, job)
    return stream


def _check_size(width: int, height: int, job: dict) -> None:
    side, pixels = job.get("max_frame_side", MAX_FRAME_SIDE), job.get("max_frame_pixels", MAX_FRAME_PIXELS)
    if max(width, height) > side or width * height > pixels:
        raise Failure(
            f"frames of {width}x{height} pixels are over the limit ({side} px a side, {pixels} pixels); refused"
        )


def _decoded(
    container: Any, stream: Any, job: dict, sender: _Sender, origin: Fraction
) -> Iterator[tuple[Fraction, Any]]:
    """``(seconds, frame)`` for every decoded frame; a failure names the time of the last good frame."""
    import av

    last: Fraction | None = None
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            if last is None:
                raise Failure(f"corrupt or truncated video: {_av_reason(exc)}") from None
            reason = f"decoding failed after {float(last):.2f} s ({_av_reason(exc)})"
            raise Failure(f"corrupt or truncated video: {reason}") from None
        _check_size(frame.width, frame.height, job)
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is not None:
            last = pts * stream.time_base - origin
        else:  # no timestamps at all: count frames at the stream's nominal rate
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            last = Fraction(0) if last is None else last + 1 / Fraction(rate)
        sender.alive()
        yield last, frame


def _frame_duration(frame: Any, stream: Any) -> Fraction:
    if frame.duration:
        return frame.duration * stream.time_base
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return 1 / Fraction(rate)


def _rgb(frame: Any, max_side: int) -> tuple[dict, bytes]:
    """A frame as a header and packed RGB24 bytes, shorter side at most ``max_side``.

    The header carries the frame's display rotation (degrees counter-clockwise) for the parent to apply.
    """
    width, height = frame.width, frame.height
    scale = min(1.0, max_side / min(width, height))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    rgb = frame.reformat(width=out_w, height=out_h, format="rgb24", interpolation="AREA")
    plane = rgb.planes[0]
    row, stride = out_w * 3, plane.line_size
    data = bytes(plane)
    if stride != row:
        data = b"".join(data[y * stride : y * stride + row] for y in range(out_h))
    return {"width": out_w, "height": out_h, "rotation": int(getattr(frame, "rotation", 0) or 0)}, data


def _sample_frames(job: dict, sender: _Sender) -> Iterator[tuple[dict, bytes]]:
    fps = Fraction(job["fps"]).limit_denominator(1_000_000)
    max_side = int(job.get("max_side", 512))
    max_seconds = Fraction(job.get("max_seconds", MAX_SECONDS))
    with _open(job["path"]) as container:
        stream = _video_stream(container, job)
        origin = _origin(container)
        declared, whole = _declared_end(stream, origin), _container_end(container)
        limit = min(declared or whole or max_seconds, max_seconds)  # no sample at or after the stream's end
        j, shown, end = 0, None, Fraction(0)
        for decoded, (t, frame) in enumerate(_decoded(container, stream, job, sender, origin), 1):
            if t - end > MAX_FRAME_GAP:  # a 3 KB file must not become a day of identical samples to embed
                raise Failure(
                    f"frame timestamps jump from {float(end):.2f} s to {float(t):.2f} s; a gap over "
                    f"{MAX_FRAME_GAP} s means corrupt or hostile timestamps"
                )
            # Samples before this frame's time show the previous frame (or this one, before the first frame).
            while j / fps < t and j / fps < limit:
                yield _sample(j, fps, shown if shown is not None else frame, max_side)
                j += 1
                _check_density(j, fps, decoded)
            if t >= max_seconds:
                raise Failure(f"video is longer than the {MAX_SECONDS} s limit (a frame at {float(t):.0f} s)")
            shown, end = frame, max(end, t + _frame_duration(frame, stream))
        if shown is None:
            raise Failure("no decodable video frames")
        if declared is not None and end + TRUNCATION_SLACK < declared:
            raise Failure(
                f"corrupt or truncated video: frames stop at {float(end):.2f} s of the declared {float(declared):.2f} s"
            )
        # The stream's own duration; else the frames' end (a container's may include a longer audio track).
        duration = declared if declared is not None else min(end, whole) if whole is not None else end
        while j / fps < duration:
            yield _sample(j, fps, shown, max_side)
            j += 1
            _check_density(j, fps, decoded)
        yield {"kind": "duration", "seconds": float(duration)}, b""


def _check_density(samples: int, fps: Fraction, decoded: int) -> None:
    """Refuse a timeline that a handful of frames stretch over hours: each sample is a frame the parent embeds."""
    if samples / fps > SPARSE_AFTER and decoded < MIN_FRAMES_PER_SAMPLE * samples:
        raise Failure(
            f"{decoded} decoded frames stretched over {float(samples / fps):.0f} s of timestamps; "
            "refusing corrupt or hostile timestamps (so few frames cannot fill that much time)"
        )


def _sample(j: int, fps: Fraction, frame: Any, max_side: int) -> tuple[dict, bytes]:
    header, data = _rgb(frame, max_side)
    return {"kind": "frame", "time": float(j / fps), **header}, data


def _frame_at(job: dict, sender: _Sender) -> Iterator[tuple[dict, bytes]]:
    import av

    target = Fraction(job["seconds"]).limit_denominator(1_000_000)
    with _open(job["path"]) as container:
        stream = _video_stream(container, job)
        origin = _origin(container)
        declared = _declared_end(stream, origin) or _container_end(container)
        if target < 0 or (declared is not None and target >= declared):
            length = f"; the video is {float(declared):.2f} s long" if declared is not None else ""
            raise Failure(f"no frame at {float(target):.2f} s{length}")
        try:  # jump to the key frame before the target instead of decoding from the start
            container.seek(int((target + origin) / stream.time_base), stream=stream, backward=True)
        except av.FFmpegError:
            container.seek(0)
        shown = None
        for t, frame in _decoded(container, stream, job, sender, origin):
            if t > target and shown is not None:
                break
            shown = frame
        if shown is None:
            raise Failure("no decodable video frames")
        header, data = _rgb(shown, int(job.get("max_side", 512)))
        yield {"kind": "frame", "time": float(target), **header}, data


def _modules(job: dict, sender: _Sender) -> Iterator[tuple[dict, bytes]]:
    """The top-level modules the child has imported once PyAV is loaded (a check that it stays light)."""
    import av  # noqa: F401

    yield {"kind": "modules"}, " ".join(sorted({name.partition(".")[0] for name in sys.modules})).encode()


def _audio_blocks(job: dict, sender: _Sender) -> Iterator[tuple[dict, bytes]]:
    """``info`` (the rate, or None without an audio stream), then ``audio`` blocks of float32 mono samples.

    The blocks start at time 0 of the shared timeline: a track that starts late is preceded by silence, codec
    priming before time 0 is dropped, and so is padding after the track's declared end.
    """
    import av

    with _open(job["path"]) as container:
        if not container.streams.audio:
            yield {"kind": "info", "rate": None}, b""
            return
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        if not rate or rate > MAX_SAMPLE_RATE:
            raise Failure(f"audio track has an unusable sample rate ({rate} Hz)")
        origin = _origin(container)
        declared = _declared_end(stream, origin)
        total = round(declared * rate) if declared is not None else None
        yield {"kind": "info", "rate": rate}, b""
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        sent, decoded, skip, first = 0, 0, 0, True
        for frame in _audio_frames(container, stream, origin):
            if first and frame is not None and frame.pts is not None and frame.time_base is not None:
                lead = frame.pts * frame.time_base - origin
                if lead > MAX_AUDIO_LEAD:
                    raise Failure(f"audio track starts {float(lead):.0f} s into the video; refused as implausible")
                for block in _silence(round(lead * rate)):
                    sent += len(block[1]) // 4
                    yield block
                skip = max(0, round(-lead * rate))
            first = first and frame is None  # only the first frame places the track on the timeline
            for out in resampler.resample(frame):
                data = bytes(out.planes[0])[: out.samples * 4]
                decoded += out.samples
                data, skip = data[skip * 4 :], max(0, skip - out.samples)
                if total is not None:
                    data = data[: max(0, total - sent) * 4]
                if data:
                    sent += len(data) // 4
                    yield {"kind": "audio"}, data
            sender.alive()
        if decoded == 0:
            raise Failure("the audio track holds no decodable audio")


def _audio_frames(container: Any, stream: Any, origin: Fraction) -> Iterator[Any]:
    """Decoded audio frames, then None (to flush the resampler); a failure names how far decoding got."""
    import av

    frames, reached = container.decode(stream), None
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            yield None
            return
        except av.FFmpegError as exc:
            where = f"after {float(reached):.2f} s " if reached is not None else ""
            raise Failure(f"corrupt or truncated audio track: decoding failed {where}({_av_reason(exc)})") from None
        if frame.pts is not None and frame.time_base is not None and frame.sample_rate:
            reached = frame.pts * frame.time_base - origin + Fraction(frame.samples, frame.sample_rate)
        yield frame


def _silence(samples: int, block: int = 65536) -> Iterator[tuple[dict, bytes]]:
    for start in range(0, max(0, samples), block):
        yield {"kind": "audio"}, bytes(4 * min(block, samples - start))
