"""The video modality: sniffing, frame sampling and segments, the audio track, errors, and decoder isolation."""

from __future__ import annotations

import os
import re
import tempfile
import time
from fractions import Fraction
from importlib import metadata
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import anybind
from anybind.errors import DecodeError
from anybind.plugins import video, video_decode
from anybind.segments import SegmentPlan
from anybind.testing_video import BLUE, GREEN, RED, tone, write_video

FPS = 5  # frames per second of the test videos
RATE = 16000


def gray(index: int) -> int:
    """The grey level of frame ``index`` in the ramp video: every frame differs from its neighbours by 6."""
    return 10 + 6 * index


def level(image: Image.Image) -> int:
    """The grey level at the centre of a frame (H.264 in 4:2:0 moves flat colours by a level or two)."""
    return int(np.asarray(image)[image.height // 2, image.width // 2].mean().round())


def shown(t: float) -> int:
    """Index of the frame on screen at ``t`` in a FPS video: the last one whose pts (index / FPS) is <= t."""
    return int(np.floor(t * FPS + 1e-9))


def close(color: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Colours equal up to H.264 4:2:0 / limited-range YUV rounding (a few levels per channel)."""
    return max(abs(a - b) for a, b in zip(color, expected, strict=True)) <= 6


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny videos: a 7 s grey ramp (each of its 35 frames a different level), a colour video with a tone track."""
    root = tmp_path_factory.mktemp("video")
    ramp = [np.full((48, 64, 3), gray(i), dtype=np.uint8) for i in range(7 * FPS)]
    silence_then_tones = np.concatenate([np.zeros(2 * RATE, np.float32), tone(440, 2.0, RATE), tone(880, 3.0, RATE)])
    colors = [RED, RED, RED, BLUE, BLUE, BLUE, GREEN]
    return {
        "ramp": write_video(root / "ramp.mp4", ramp, fps=FPS),
        "tones": write_video(root / "tones.mp4", colors, fps=FPS, audio=(silence_then_tones, RATE)),
        "faststart": write_video(root / "faststart.mp4", colors, fps=FPS, faststart=True),
        "mkv": write_video(root / "clip.mkv", colors[:3], fps=FPS, codec="mpeg4"),
        "rotated": write_video(root / "portrait.mp4", [_portrait()], fps=FPS, rotation=90),
        "late_audio": write_video(
            root / "late.mp4", [RED] * 4, fps=FPS, audio=(tone(440, 2.0, RATE), RATE), audio_delay=1.0
        ),
        "audio_only": write_video(root / "voice.mp4", [], audio=(tone(440, 1.0, RATE), RATE), video=False),
    }


def _portrait() -> np.ndarray:
    """A 64x48 frame with a green top stripe, red left half and blue right half."""
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    frame[:, :32], frame[:, 32:], frame[:8] = RED, BLUE, GREEN
    return frame


def spans(segments: list) -> list[tuple[float, float]]:
    return [(s.start, s.end) for s in segments]


# -- sniffing ------------------------------------------------------------------------------------------------


def test_sniff_recognises_video_containers_and_not_audio_or_images(media: dict[str, Path]) -> None:
    assert video.sniff(media["ramp"].read_bytes()[:64])
    assert video.sniff(media["mkv"].read_bytes()[:64])
    assert video.sniff(b"RIFF\x00\x10\x00\x00AVI LIST")
    assert video.sniff(b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ")
    assert video.sniff(b"\x00\x00\x00\x18ftypXAVC\x00\x00\x00\x01mp42isom")  # unknown major, video compatible
    assert not video.sniff(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isommp42\x00\x00\x00\x00")  # iTunes audio
    assert not video.sniff(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")  # HEIF photo
    assert not video.sniff(b"RIFF\x00\x10\x00\x00WAVEfmt ")
    assert not video.sniff(b"hello, this is text")


# -- frames and segments -------------------------------------------------------------------------------------


def test_segments_hold_the_frames_on_screen_at_each_sampling_time(media: dict[str, Path]) -> None:
    segments = list(video.segment(media["ramp"], SegmentPlan(2.0, 2.0, fps=1.0)))
    assert spans(segments) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 7.0)]
    assert [len(s.parts) for s in segments] == [2, 2, 2, 1]  # sampled at 0, 1 | 2, 3 | 4, 5 | 6 s
    levels = [level(frame) for s in segments for frame in s.parts]
    assert np.abs(np.array(levels) - [gray(shown(t)) for t in range(7)]).max() <= 2, levels
    assert all(frame.mode == "RGB" and frame.size == (64, 48) for s in segments for frame in s.parts)


def test_fps_not_dividing_the_frame_rate_picks_the_last_frame_at_or_before_each_time(media: dict[str, Path]) -> None:
    segments = list(video.segment(media["ramp"], SegmentPlan(1.0, 1.0, fps=3.0)))
    assert spans(segments) == [(float(k), float(k + 1)) for k in range(7)]
    times = [j / 3 for j in range(21)]  # 0, 1/3, 2/3, 1, ... < 7 s
    got = [level(frame) for s in segments for frame in s.parts]
    assert [shown(t) for t in times][:6] == [0, 1, 3, 5, 6, 8]
    assert np.abs(np.array(got) - [gray(shown(t)) for t in times]).max() <= 2


def test_fps_2_puts_four_frames_in_each_window(media: dict[str, Path]) -> None:
    segments = list(video.segment(media["tones"], SegmentPlan(2.0, 2.0, fps=2.0)))
    assert spans(segments) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 7.0)]
    assert [len(s.parts) for s in segments] == [4, 4, 4, 2]
    colors = [[frame.getpixel((32, 24)) for frame in s.parts] for s in segments]
    wanted = [[RED] * 4, [RED, RED, BLUE, BLUE], [BLUE] * 4, [GREEN] * 2]  # red 0-3 s, blue 3-6 s, green 6-7 s
    assert all(close(c, w) for row, want in zip(colors, wanted, strict=True) for c, w in zip(row, want, strict=True))


def test_overlapping_windows_share_frames_and_stop_at_the_end(media: dict[str, Path]) -> None:
    segments = list(video.segment(media["ramp"], SegmentPlan(2.0, 1.0, fps=1.0)))
    assert spans(segments) == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0), (4.0, 6.0), (5.0, 7.0)]
    levels = [[level(frame) for frame in s.parts] for s in segments]
    expected = [[gray(shown(k)), gray(shown(k + 1))] for k in range(6)]
    assert np.abs(np.array(levels) - expected).max() <= 2


def test_window_longer_than_the_rest_is_clipped_to_the_duration(media: dict[str, Path]) -> None:
    segments = list(video.segment(media["mkv"], SegmentPlan(2.0, 2.0, fps=1.0)))  # Matroska, MPEG-4 part 2
    assert spans(segments) == [(0.0, 2.0), (2.0, 3.0)]
    assert [len(s.parts) for s in segments] == [2, 1]


def test_bytes_give_the_same_segments_and_leave_no_temporary_file(media: dict[str, Path], tmp_path: Path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("anybind-video-*"))
    segments = list(video.segment(media["faststart"].read_bytes(), SegmentPlan(3.0, 3.0, fps=1.0)))
    assert spans(segments) == [(0.0, 3.0), (3.0, 6.0), (6.0, 7.0)]
    assert all(close(f.getpixel((1, 1)), RED) for f in segments[0].parts)
    assert set(Path(tempfile.gettempdir()).glob("anybind-video-*")) == before


def test_frame_at_and_rotation(media: dict[str, Path]) -> None:
    assert abs(level(video.frame_at(media["ramp"], 3.1)) - gray(15)) <= 2  # frame 15 shows from 3.0 to 3.2 s
    assert abs(level(video.frame_at(media["ramp"], 6.99)) - gray(34)) <= 2
    portrait = video.frame_at(media["rotated"], 0.0)  # stored 64x48, tagged to be shown turned 90 deg left
    assert portrait.size == (48, 64)
    assert close(portrait.getpixel((2, 32)), GREEN)  # the top stripe is now on the left
    assert close(portrait.getpixel((24, 60)), RED) and close(portrait.getpixel((24, 10)), BLUE)
    with pytest.raises(DecodeError, match=r"ramp\.mp4: no frame at 7\.50 s; the video is 7\.00 s long"):
        video.frame_at(media["ramp"], 7.5)


def test_decode_returns_frames_at_one_per_second_and_refuses_long_videos(
    media: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = video.decode(str(media["tones"]))
    assert len(frames) == 7 and close(frames[0].getpixel((0, 0)), RED) and close(frames[6].getpixel((0, 0)), GREEN)
    assert video.decode([Image.new("L", (4, 4))])[0].mode == "RGB"
    monkeypatch.setattr(video, "DECODE_MAX_SECONDS", 3.0)
    with pytest.raises(DecodeError, match=r"tones\.mp4: video is longer than 3 s.*index it as segments"):
        video.decode(media["tones"])


@pytest.fixture
def video_host() -> anybind.PluginHost:
    """The built-in plugins, with the video plugin registered by hand if the installed entry points predate it."""
    host = anybind.PluginHost(allow={"anybind"})
    host.load_entry_points()
    if "video" not in host.modalities:
        if "video" in host.plugins:
            host.remove_plugin("video")
        host.add_plugin(video, "video")
    return host


def test_registered_as_a_temporal_modality_embedded_by_the_image_tower(video_host: anybind.PluginHost) -> None:
    modality = video_host.modalities.get("video")
    assert modality.temporal and modality.tower == "image" and modality.segment is video.segment
    assert modality.segment_defaults == {"window": 2.0, "overlap": 0.0, "fps": 1.0}
    assert modality.companions == {"audio": video.audio_track}  # the sound track, embedded and stored as audio
    assert {".mp4", ".mov", ".mkv", ".webm", ".avi"} <= set(modality.extensions)


@pytest.mark.skipif(
    not metadata.entry_points(group="anybind", name="video"),
    reason="installed metadata predates the video entry point (pip install -e . refreshes it)",
)
def test_the_video_entry_point_loads(builtin_plugins: anybind.PluginHost) -> None:
    assert builtin_plugins.plugins["video"].status == "loaded"
    assert builtin_plugins.modalities.get("video").segment is video.segment


# -- audio track ---------------------------------------------------------------------------------------------


def test_audio_track_is_cut_on_the_video_timeline(media: dict[str, Path]) -> None:
    segments = list(video.audio_track(media["tones"], SegmentPlan(2.0, 2.0, sample_rate=RATE)))
    assert spans(segments) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 7.0)]  # AAC end padding trimmed
    clips = [s.parts[0] for s in segments]
    assert [(c.sample_rate, len(c.samples), c.start) for c in clips] == [
        (RATE, 2 * RATE, 0.0),
        (RATE, 2 * RATE, 2.0),
        (RATE, 2 * RATE, 4.0),
        (RATE, RATE, 6.0),
    ]
    assert np.sqrt(np.mean(clips[0].samples ** 2)) < 1e-3  # silence 0-2 s
    peaks = [np.argmax(np.abs(np.fft.rfft(c.samples))) * RATE / len(c.samples) for c in clips[1:]]
    assert peaks == [440.0, 880.0, 880.0]
    # The tone starts at exactly 2 s. AAC's 1024-sample encoder delay (priming) is removed by the decoder;
    # were it not, the onset would move by 1024 samples (64 ms). 2 ms leaves room for MDCT smearing at the edge.
    onset = np.argmax(np.abs(np.concatenate([c.samples for c in clips])) > 0.1)
    assert abs(onset - 2 * RATE) <= 0.002 * RATE


def test_audio_that_starts_late_is_preceded_by_silence(media: dict[str, Path]) -> None:
    (segment,) = video.audio_track(media["late_audio"], SegmentPlan(4.0, 4.0))
    assert (segment.start, segment.end, len(segment.parts[0].samples)) == (0.0, 3.0, 3 * RATE)
    samples = segment.parts[0].samples
    assert np.abs(samples[: int(0.9 * RATE)]).max() < 1e-3  # the track begins 1 s into the video
    assert np.abs(samples[int(0.9 * RATE) : RATE]).max() < 0.01  # AAC pre-echo of the onset, far below the tone
    assert abs(np.argmax(np.abs(samples) > 0.1) - RATE) <= 0.002 * RATE


def test_video_without_audio_track_has_no_audio_segments(media: dict[str, Path]) -> None:
    assert list(video.audio_track(media["ramp"], SegmentPlan(2.0, 2.0))) == []


# -- bad input -----------------------------------------------------------------------------------------------


def errors(source: object, plan: SegmentPlan | None = None) -> str:
    with pytest.raises(DecodeError) as info:
        list(video.segment(source, plan or SegmentPlan(2.0, 2.0, fps=1.0)))
    return str(info.value)


def test_empty_missing_and_random_files_are_named_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert errors(empty) == f"{empty}: empty file (0 bytes)"
    assert errors(tmp_path / "gone.mp4") == f"{tmp_path / 'gone.mp4'}: no such file"
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(4000))
    assert errors(noise) == f"{noise}: corrupt or truncated video: Invalid data found when processing input"
    assert errors(b"") == "<0 bytes>: empty input (0 bytes)"
    assert errors(3.5) == "<float>: videos are paths or bytes"


def test_truncated_mp4_with_index_at_the_end_is_corrupt(media: dict[str, Path], tmp_path: Path) -> None:
    data = media["tones"].read_bytes()
    assert data.find(b"moov") > data.find(b"mdat")  # the default layout: media first, index last
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert errors(cut) == f"{cut}: corrupt or truncated video: Invalid data found when processing input"


@pytest.fixture(scope="module")
def noise_faststart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 s of random frames with the MP4 index first, so a cut file still opens (and every frame is big)."""
    noise = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(7 * FPS)]
    path = write_video(tmp_path_factory.mktemp("noise") / "noise.mp4", noise, faststart=True)
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    return path


def test_truncated_faststart_mp4_names_where_decoding_failed(noise_faststart: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(noise_faststart.read_bytes()[: noise_faststart.stat().st_size // 2])  # mid-frame
    message = errors(cut)
    found = re.fullmatch(
        rf"{re.escape(str(cut))}: corrupt or truncated video: decoding failed after (\d\.\d\d) s "
        r"\(Invalid data found when processing input\)",
        message,
    )
    assert found, message
    assert 1.0 < float(found[1]) < 3.5  # half the bytes of a 7 s clip of noise: about half its frames


def test_faststart_mp4_cut_between_frames_is_truncated_not_short(noise_faststart: Path, tmp_path: Path) -> None:
    with av.open(str(noise_faststart)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    position, size = packets[10]  # the 11th frame (2.0-2.2 s) is the last whole one
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(noise_faststart.read_bytes()[: position + size])
    assert errors(cut) == f"{cut}: corrupt or truncated video: frames stop at 2.20 s of the declared 7.00 s"


def test_detect_tells_videos_from_impostors(media: dict[str, Path], tmp_path: Path, video_host) -> None:
    modalities = [video_host.modalities.get(name) for name in video_host.modalities]
    assert anybind.detect(media["ramp"], modalities).name == "video"
    renamed = tmp_path / "clip.bin"
    renamed.write_bytes(media["mkv"].read_bytes())
    assert anybind.detect(renamed, modalities).name == "video"  # content, not the name
    notes = tmp_path / "notes.mp4"
    notes.write_text("this is a text file named .mp4\n")
    with pytest.raises(DecodeError) as info:
        anybind.detect(notes, modalities)
    assert (
        str(info.value)
        == f"{notes}: has the video extension .mp4 but its content is not video data; it looks like text"
    )


def test_audio_only_mp4_has_no_video_stream(media: dict[str, Path]) -> None:
    assert errors(media["audio_only"]) == f"{media['audio_only']}: no video stream (it holds only audio)"


def test_frames_over_the_size_limit_are_refused(media: dict[str, Path]) -> None:
    path = str(media["ramp"])
    with pytest.raises(DecodeError, match=r"frames of 64x48 pixels are over the limit \(16384 px a side, 3000 pixels"):
        list(video_decode.run_child("frames", path, path, 10.0, fps=1.0, max_frame_pixels=3000))


# -- isolation -----------------------------------------------------------------------------------------------


def children() -> set[int]:
    """Live or zombie child processes of this process (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists child processes from /proc")


@pytest.mark.parametrize("hook", ["start:hang", "sent:hang"])
def test_a_hanging_decoder_is_killed_after_the_timeout(
    media: dict[str, Path], monkeypatch: pytest.MonkeyPatch, hook: str
) -> None:
    monkeypatch.setenv(video_decode.HOOK_ENV, hook)
    began = time.monotonic()
    message = errors(media["ramp"], SegmentPlan(2.0, 2.0, fps=1.0, timeout=0.5))
    assert message == f"{media['ramp']}: video decoding made no progress for 0.5 s; gave up"
    assert time.monotonic() - began < 5


@pytest.mark.parametrize(
    ("hook", "how"), [("sent:segv", "was killed by signal SIGSEGV"), ("start:exit7", "exited with code 7")]
)
def test_a_crashing_decoder_is_a_decode_error(
    media: dict[str, Path], monkeypatch: pytest.MonkeyPatch, hook: str, how: str
) -> None:
    monkeypatch.setenv(video_decode.HOOK_ENV, hook)
    assert errors(media["ramp"]).startswith(f"{media['ramp']}: the video decoder process {how} before finishing")


@needs_proc
def test_stopping_early_leaves_no_child_process(media: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    before = children()
    segments = video.segment(media["ramp"], SegmentPlan(1.0, 1.0, fps=1.0))
    next(segments)
    assert len(children() - before) == 1  # the decoder, running (or done but not reaped yet)
    segments.close()
    assert children() == before
    monkeypatch.setenv(video_decode.HOOK_ENV, "start:hang")
    with pytest.raises(DecodeError):
        list(video.segment(media["ramp"], SegmentPlan(1.0, 1.0, fps=1.0, timeout=0.3)))
    assert children() == before


def test_decoder_child_does_not_import_anybind_or_torch(
    media: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(media["ramp"])
    ((header, payload), _) = video_decode.run_child("modules", path, path, 10.0)
    assert header["kind"] == "modules"
    loaded = set(payload.decode().split())
    assert "av" in loaded and not {"anybind", "torch", "numpy", "faiss"} & loaded


# -- in a space ----------------------------------------------------------------------------------------------


def test_a_space_embeds_each_segment_as_the_mean_of_its_frames(
    media: dict[str, Path], tiny_clip_dir: Path, video_host: anybind.PluginHost
) -> None:
    space = anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu", host=video_host)
    item = space.embed_segments("video", str(media["ramp"]))
    assert (item.starts, item.ends) == ([0.0, 2.0, 4.0, 6.0], [2.0, 4.0, 6.0, 7.0])  # the plugin's defaults
    frames = [s.parts for s in video.segment(media["ramp"], SegmentPlan(2.0, 2.0, fps=1.0))]
    singles = space.embed("image", [frame for parts in frames for frame in parts])
    means = np.stack([singles[k : k + 2].mean(axis=0) for k in (0, 2, 4, 6)])
    np.testing.assert_allclose(item.vectors, means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-5)


def write_sparse_mkv(path: Path, timestamps: list[int]) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1)
        for pts in timestamps:
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_a_hostile_jump_in_timestamps_is_refused(tmp_path):
    """Three frames at 0, 1 and 20000 s (3 KB) must not become 20,000 samples to embed."""
    path = write_sparse_mkv(tmp_path / "jump.mkv", [0, 1, 20000])
    plan = SegmentPlan(2.0, 2.0, fps=1.0)
    with pytest.raises(DecodeError, match=r"jump from 2\.00 s to 20000\.00 s; a gap over 600 s") as info:
        list(video.segment(str(path), plan))
    assert info.value.source == str(path)


def test_a_few_frames_stretched_over_hours_are_refused(tmp_path):
    """Gaps just under the single-jump limit: 8 frames 599 s apart would still be 4,000+ samples."""
    path = write_sparse_mkv(tmp_path / "gaps.mkv", [i * 599 for i in range(8)])
    with pytest.raises(DecodeError, match=r"8 decoded frames stretched over 3601 s of timestamps"):
        list(video.segment(str(path), SegmentPlan(2.0, 2.0, fps=1.0)))
    slideshow = write_sparse_mkv(tmp_path / "slides.mkv", [i * 300 for i in range(12)])  # 12 slides, 55 minutes
    segments = list(video.segment(str(slideshow), SegmentPlan(60.0, 60.0, fps=1.0)))
    assert len(segments) == 56 and segments[-1].end == 3301.0  # the last slide shows for its 1 s frame duration


def test_bytes_like_sources_are_files_and_lists_are_frames(tmp_path):
    clip = write_video(tmp_path / "c.mp4", [RED, RED, BLUE])
    plan = SegmentPlan(2.0, 2.0, fps=1.0)
    data = clip.read_bytes()
    for source in (data, bytearray(data), memoryview(data)):
        assert [(s.start, s.end) for s in video.segment(source, plan)] == [(0.0, 2.0), (2.0, 3.0)]
    frames = [Image.new("RGB", (8, 8), RED)] * 3
    assert [(s.start, s.end, len(s.parts)) for s in video.segment(tuple(frames), plan)] == [(0, 2, 2), (2, 3, 1)]
