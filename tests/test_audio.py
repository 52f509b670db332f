"""The ``audio`` modality: sniffing, streaming segmentation (exact timestamps), resampling, downmix, errors."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import anybind
from anybind.errors import DecodeError
from anybind.plugins import audio
from anybind.plugins.audio_chunks import chunk_blocks, resample
from anybind.segments import AudioClip, SegmentPlan
from anybind.testing_audio import noise_burst, tone, write_audio, write_chirp, write_noise_burst, write_tone


def blocks_of(samples: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


def spans(segments) -> list[tuple[float, float]]:
    return [(s.start, s.end) for s in segments]


def ramp(n: int) -> np.ndarray:
    """Distinct, exactly representable samples: each chunk's content can be checked sample by sample."""
    return (np.arange(n, dtype=np.float32) / n).astype(np.float32)


def cut(samples: np.ndarray, rate: int, window: float, hop: float, block: int = 1000, **plan):
    return list(chunk_blocks(blocks_of(samples, block), rate, SegmentPlan(window, hop, **plan), "test.wav"))


# -- chunk timestamps ---------------------------------------------------------------------------------------


def test_chunks_without_overlap_end_at_the_stream_end() -> None:
    x = ramp(25 * 8000)
    segments = cut(x, 8000, 10.0, 10.0)
    assert spans(segments) == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    for segment, (lo, hi) in zip(segments, [(0, 80000), (80000, 160000), (160000, 200000)], strict=True):
        (clip,) = segment.parts
        assert clip.sample_rate == 8000 and clip.start == segment.start
        np.testing.assert_array_equal(clip.samples, x[lo:hi])


def test_chunks_with_overlap() -> None:
    x = ramp(25 * 8000)
    segments = cut(x, 8000, 10.0, 8.0)
    assert spans(segments) == [(0.0, 10.0), (8.0, 18.0), (16.0, 25.0)]
    np.testing.assert_array_equal(segments[1].parts[0].samples, x[64000:144000])


def test_a_stream_that_ends_on_a_chunk_boundary_gets_no_empty_chunk() -> None:
    assert spans(cut(ramp(20 * 8000), 8000, 10.0, 10.0)) == [(0.0, 10.0), (10.0, 20.0)]
    assert spans(cut(ramp(18 * 8000), 8000, 10.0, 8.0)) == [(0.0, 10.0), (8.0, 18.0)]


def test_a_short_tail_is_shifted_back_to_a_full_window() -> None:
    x = ramp(83200)  # 10.4 s at 8 kHz: the 0.4 s tail becomes [0.4, 10.4)
    segments = cut(x, 8000, 10.0, 10.0)
    assert spans(segments) == [(0.0, 10.0), (0.4, 10.4)]
    np.testing.assert_array_equal(segments[1].parts[0].samples, x[3200:83200])


def test_tail_rule_with_overlap_and_short_windows() -> None:
    # window 10, hop 9.5: the third chunk [19, 19.8) holds 0.8 s < 1 s -> [9.8, 19.8)
    assert spans(cut(ramp(19.8 * 8000), 8000, 10.0, 9.5)) == [(0.0, 10.0), (9.5, 19.5), (9.8, 19.8)]
    # window 1 s: the limit is window / 2 = 0.5 s
    assert spans(cut(ramp(2.4 * 8000), 8000, 1.0, 1.0)) == [(0.0, 1.0), (1.0, 2.0), (1.4, 2.4)]
    assert spans(cut(ramp(2.5 * 8000), 8000, 1.0, 1.0)) == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    # a 1.2 s tail of a 10 s window is kept as it is
    assert spans(cut(ramp(11.2 * 8000), 8000, 10.0, 10.0)) == [(0.0, 10.0), (10.0, 11.2)]


def test_a_stream_shorter_than_the_window_is_one_chunk_of_its_length() -> None:
    (segment,) = cut(ramp(26400), 8000, 10.0, 10.0)
    assert (segment.start, segment.end) == (0.0, 3.3)
    assert len(segment.parts[0].samples) == 26400
    (segment,) = cut(ramp(3), 8000, 10.0, 10.0)  # even three samples
    assert (segment.start, segment.end) == (0.0, 3 / 8000)


def test_timestamps_are_sample_accurate() -> None:
    # 44.1 kHz: window 0.25 s = 11025 samples, hop 0.1 s = 4410 samples, over 30000 samples
    segments = cut(ramp(30000), 44100, 0.25, 0.1, block=777)
    starts = [0, 4410, 8820, 13230, 17640, 22050]
    ends = [s + 11025 for s in starts[:-1]] + [30000]  # the last chunk (7950 samples) reaches the end
    assert spans(segments) == [(s / 44100, e / 44100) for s, e in zip(starts, ends, strict=True)]
    assert [len(s.parts[0].samples) for s in segments] == [11025] * 5 + [7950]


@pytest.mark.parametrize("block", [1, 7, 1000, 80000, 10**6])
def test_block_sizes_do_not_change_the_chunks(block: int) -> None:
    x = ramp(10400)  # 1.3 s at 8 kHz, window 0.5 / hop 0.4
    reference = cut(x, 8000, 0.5, 0.4, block=10400)
    segments = cut(x, 8000, 0.5, 0.4, block=block)
    assert spans(segments) == spans(reference) == [(0.0, 0.5), (0.4, 0.9), (0.8, 1.3)]
    for a, b in zip(segments, reference, strict=True):
        np.testing.assert_array_equal(a.parts[0].samples, b.parts[0].samples)


def test_an_offset_moves_every_timestamp() -> None:
    segments = list(chunk_blocks([ramp(16000)], 8000, SegmentPlan(1.0, 1.0), "x", offset=5.0))
    assert spans(segments) == [(5.0, 6.0), (6.0, 7.0)]
    assert segments[1].parts[0].start == 6.0


# -- streaming -------------------------------------------------------------------------------------------------


def test_chunking_pulls_blocks_lazily_and_holds_about_one_window() -> None:
    rate, seconds = 8000, 600
    pulled = 0

    def stream() -> Iterator[np.ndarray]:
        nonlocal pulled
        for i in range(seconds):
            pulled += 1
            yield np.full(rate, (i % 100) / 100, dtype=np.float32)

    tracemalloc.start()
    try:
        count = 0
        for count, segment in enumerate(chunk_blocks(stream(), rate, SegmentPlan(10.0, 10.0), "long.wav"), 1):
            assert pulled == 10 * count  # just the blocks this window needs, nothing ahead
            assert segment.end == 10.0 * count
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 60
    assert peak < 2_000_000, f"peak {peak} bytes: a 600 s stream (19.2 MB) must not be held whole"


def test_files_are_read_in_blocks_of_about_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tone(tmp_path / "long.wav", 440, seconds=12.5, rate=8000)
    requests: list[int] = []
    original = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        requests.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    segments = list(audio.segment(path, SegmentPlan(5.0, 5.0)))
    assert spans(segments) == [(0.0, 5.0), (5.0, 10.0), (10.0, 12.5)]
    assert requests and max(requests) == 8000 and len(requests) == 14  # 13 reads of audio and one at the end


# -- resampling and downmix -----------------------------------------------------------------------------------


def test_chunks_are_resampled_to_the_plan_rate() -> None:
    segments = cut(ramp(25 * 8000), 8000, 10.0, 10.0, sample_rate=48000)
    assert spans(segments) == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert [(len(s.parts[0].samples), s.parts[0].sample_rate) for s in segments] == [
        (480000, 48000),
        (480000, 48000),
        (240000, 48000),
    ]
    assert resample(np.zeros(441, np.float32), 44100, 16000).shape == (160,)
    assert resample(np.zeros(7, np.float32), 3, 2).shape == (5,)  # ceil(7 * 2 / 3)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def test_a_resampled_tone_keeps_its_frequency(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "a440.wav", 440, seconds=2.0, rate=8000)
    segments = list(audio.segment(path, SegmentPlan(1.0, 1.0, sample_rate=22050)))
    assert [len(s.parts[0].samples) for s in segments] == [22050, 22050]
    for segment in segments:
        clip = segment.parts[0]
        assert clip.sample_rate == 22050 and clip.samples.dtype == np.float32
        assert abs(peak_hz(clip.samples, 22050) - 440) <= 1.0
        assert 0.45 < np.abs(clip.samples).max() <= 0.51  # amplitude 0.5 survives


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left = tone(300, 1.0, 8000)
    path = write_audio(tmp_path / "stereo.wav", np.stack([left, 0.5 * left], axis=1), 8000, subtype="FLOAT")
    (segment,) = audio.segment(path, SegmentPlan(2.0, 2.0))
    np.testing.assert_allclose(segment.parts[0].samples, 0.75 * left, atol=1e-7)
    opposite = write_audio(tmp_path / "cancel.wav", np.stack([left, -left], axis=1), 8000, subtype="FLOAT")
    assert np.abs(audio.decode(opposite).samples).max() == 0.0


def test_bytes_and_clips_segment_like_the_file(tmp_path: Path) -> None:
    path = write_chirp(tmp_path / "sweep.flac", 100, 2000, seconds=2.5, rate=8000)
    plan = SegmentPlan(1.0, 1.0)
    from_path = list(audio.segment(path, plan))
    from_bytes = list(audio.segment(path.read_bytes(), plan))
    clip = audio.decode(path)
    from_clip = list(audio.segment(clip, plan))
    assert spans(from_path) == spans(from_bytes) == spans(from_clip) == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    for a, b, c in zip(from_path, from_bytes, from_clip, strict=True):
        np.testing.assert_array_equal(a.parts[0].samples, b.parts[0].samples)
        np.testing.assert_array_equal(a.parts[0].samples, c.parts[0].samples)


def test_a_clip_segments_from_its_own_start() -> None:
    clip = AudioClip(noise_burst(2.0, 8000), 8000, start=30.0)
    assert spans(audio.segment(clip, SegmentPlan(1.0, 1.0))) == [(30.0, 31.0), (31.0, 32.0)]


def test_decode_returns_the_whole_file_at_its_rate(tmp_path: Path) -> None:
    path = write_noise_burst(tmp_path / "burst.wav", 1.5, rate=11025, burst=(0.5, 1.0), subtype="FLOAT")
    clip = audio.decode(path)
    assert (clip.sample_rate, clip.start, clip.samples.dtype, len(clip.samples)) == (11025, 0.0, np.float32, 16538)
    np.testing.assert_array_equal(clip.samples, noise_burst(1.5, 11025, (0.5, 1.0)))


def test_decode_refuses_long_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tone(tmp_path / "long.wav", 440, seconds=3.0, rate=8000)
    monkeypatch.setattr(audio, "MAX_DECODE_SECONDS", 2.0)
    with pytest.raises(DecodeError, match=r"long\.wav: longer than 0\.0333333 minutes.*index it instead"):
        audio.decode(path)


# -- sniffing and detection -----------------------------------------------------------------------------------

FORMATS = [
    ("x.wav", "WAV", "PCM_16", 8000),
    ("x.wav", "RF64", "PCM_16", 8000),
    ("x.flac", "FLAC", "PCM_16", 8000),
    ("x.ogg", "OGG", "VORBIS", 8000),
    ("x.opus", "OGG", "OPUS", 48000),
    ("x.mp3", "MP3", "MPEG_LAYER_III", 8000),
    ("x.mp3", "MP3", "MPEG_LAYER_III", 44100),
    ("x.aiff", "AIFF", "PCM_16", 8000),
]


@pytest.mark.parametrize(("name", "fmt", "subtype", "rate"), FORMATS)
def test_sniffs_and_reads_every_format(tmp_path: Path, name: str, fmt: str, subtype: str, rate: int) -> None:
    path = write_tone(tmp_path / name, 440, seconds=2.0, rate=rate, format=fmt, subtype=subtype)
    assert audio.sniff(path.read_bytes()[:4096])
    clip = audio.decode(path)
    assert clip.sample_rate == rate
    assert abs(clip.duration - 2.0) < 0.1  # lossy codecs may pad a frame
    assert abs(peak_hz(clip.samples, rate) - 440) <= 2.0


def test_sniff_rejects_what_is_not_audio(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
    theora = b"OggS\x00\x02" + bytes(22) + b"\x01\x2a\x80theora" + bytes(40)
    aac = b"\xff\xf1\x50\x80\x02\x1f\xfc" + bytes(100)  # ADTS AAC: libsndfile cannot read it
    id3_then_text = b"ID3\x04\x00\x00\x00\x00\x00\x05" + b"hello" + b"not audio at all"
    webp = b"RIFF\x10\x00\x00\x00WEBPVP8 "
    for head in (b"", b"hello world\n" * 20, png, jpeg, theora, aac, id3_then_text, webp, bytes(4096)):
        assert not audio.sniff(head), head[:16]
    rng = np.random.default_rng(0)
    heads = [rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() for _ in range(300)]
    heads += [b"\xff\xfb" + h[2:] for h in heads[:300]]  # an MPEG sync word followed by noise
    assert sum(audio.sniff(h) for h in heads) == 0


def test_detect_picks_audio_and_rejects_text_named_wav(tmp_path: Path, host: anybind.PluginHost) -> None:
    modalities = [entry.value for entry in host.modalities.entries()]
    wav = write_tone(tmp_path / "clip.bin", 440, seconds=0.5, format="WAV")  # content, not extension, decides
    assert anybind.detect(wav, modalities).name == "audio"
    impostor = tmp_path / "notes.wav"
    impostor.write_text("this is a text file named .wav\n")
    with pytest.raises(DecodeError) as info:
        anybind.detect(impostor, modalities)
    assert str(info.value) == (
        f"{impostor}: has the audio extension .wav but its content is not audio data; it looks like text"
    )


def test_the_modality_is_registered(host: anybind.PluginHost) -> None:
    modality = host.modalities.get("audio")
    assert modality.temporal and modality.tower == "audio"
    assert modality.segment_defaults == {"window": 10.0, "overlap": 0.0}
    assert ".wav" in modality.extensions and ".mp3" in modality.extensions


# -- errors -------------------------------------------------------------------------------------------------------


def test_missing_and_empty_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for source, message in [
        (tmp_path / "nope.wav", f"{tmp_path / 'nope.wav'}: no such file"),
        (empty, f"{empty}: empty file (0 bytes)"),
        (b"", "<0 bytes>: empty input (0 bytes)"),
    ]:
        for fn in (audio.decode, lambda s: list(audio.segment(s, SegmentPlan(1.0, 1.0)))):
            with pytest.raises(DecodeError) as info:
                fn(source)
            assert str(info.value) == message


def test_header_only_wav(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "header.wav", np.zeros(0, np.float32), 8000, subtype="PCM_16")
    assert path.stat().st_size == 44 and audio.sniff(path.read_bytes())
    for fn in (audio.decode, lambda s: list(audio.segment(s, SegmentPlan(1.0, 1.0)))):
        with pytest.raises(DecodeError) as info:
            fn(path)
        assert str(info.value) == f"{path}: no audio frames (empty or header-only file)"


def test_truncated_wav(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "cut.wav", 440, seconds=4.0, rate=8000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: 44 + 2 * 12000])  # 1.5 s of the 4
    segments = audio.segment(path, SegmentPlan(1.0, 1.0))
    assert spans([next(segments)]) == [(0.0, 1.0)]  # streaming: what came before the cut was already yielded
    with pytest.raises(DecodeError) as info:
        list(segments)
    assert str(info.value) == (
        f"{path}: corrupt or truncated audio after 1.5 s: "
        "the header promises 64000 bytes of audio data but the file holds 24000"
    )


def test_truncated_flac(tmp_path: Path) -> None:
    path = write_noise_burst(tmp_path / "cut.flac", 4.0, rate=8000, burst=(0.0, 4.0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DecodeError, match=r"cut\.flac: corrupt or truncated audio after \d+\.\d s: \w+"):
        audio.decode(path)


def test_garbage_is_not_a_readable_audio_file(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.wav"
    garbage.write_text("not a sound, only text\n" * 20)
    with pytest.raises(DecodeError) as info:
        audio.decode(garbage)
    assert str(info.value) == f"{garbage}: not a readable audio file: Format not recognised."
    noise = tmp_path / "noise.wav"  # libsndfile tries its MP3 decoder on random bytes and fails
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DecodeError) as info:
        audio.decode(noise)
    assert str(info.value) == (
        f"{noise}: not a readable audio file: the decoder found no readable stream (corrupt or truncated data)"
    )
    with pytest.raises(DecodeError) as info:
        list(audio.segment(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk", SegmentPlan(1.0, 1.0)))
    assert str(info.value).startswith("<24 bytes>: not a readable audio file: ")
    with pytest.raises(DecodeError, match=r"^<list>: audio items are paths, bytes or anybind"):
        audio.decode([0.1, 0.2])


def test_non_finite_samples_name_their_time(tmp_path: Path) -> None:
    x = tone(440, 3.0, 8000)
    x[12345] = np.nan
    path = write_audio(tmp_path / "nan.wav", x, 8000, subtype="FLOAT")
    message = f"{path}: non-finite sample (NaN or infinity) at 1.543 s: corrupt audio data"
    with pytest.raises(DecodeError) as info:
        list(audio.segment(path, SegmentPlan(1.0, 1.0)))
    assert str(info.value) == message
    with pytest.raises(DecodeError) as info:
        audio.decode(path)
    assert str(info.value) == message


def test_an_empty_stream_is_an_error() -> None:
    with pytest.raises(DecodeError, match=r"^x\.wav: no audio frames \(empty or header-only file\)$"):
        list(chunk_blocks(iter([np.zeros(0, np.float32)]), 8000, SegmentPlan(1.0, 1.0), "x.wav"))


def test_a_stalled_decoder_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tone(tmp_path / "slow.wav", 440, seconds=3.0, rate=8000)
    original, calls = sf.SoundFile.read, []

    def slow_second_read(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            time.sleep(0.3)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", slow_second_read)
    with pytest.raises(
        DecodeError, match=r"slow\.wav: decoding stalled after 1\.0 s: one read took 0\.\d s \(limit 0\.2 s\)"
    ):
        list(audio.segment(path, SegmentPlan(1.0, 1.0, timeout=0.2)))


def test_float_overs_are_clipped_to_the_unit_range(tmp_path: Path) -> None:
    loud = np.array([0.5, 1.5, -2.0, -0.25] * 2000, dtype=np.float32)
    path = write_audio(tmp_path / "loud.wav", loud, 8000, subtype="FLOAT")
    expected = np.clip(loud, -1, 1)
    np.testing.assert_array_equal(audio.decode(path).samples, expected)
    (segment,) = audio.segment(path, SegmentPlan(2.0, 2.0))
    np.testing.assert_array_equal(segment.parts[0].samples, expected)


def test_truncated_ogg(tmp_path: Path) -> None:
    path = write_chirp(tmp_path / "cut.ogg", 200, 2000, seconds=4.0, rate=8000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DecodeError) as info:
        audio.decode(path)
    assert str(info.value) == (
        f"{path}: corrupt or truncated audio after 0.0 s: the Ogg stream ends without its end-of-stream page"
    )
