"""The ingest pipeline itself (:class:`anybind.store.ingest.Ingest`): files and in-memory items through one
pipeline, batched commits, per-file errors, unchanged files, and companion streams.

Companion streams are tested with a fake ``reel`` modality (no media decoding): a reel file is text, a ``REEL``
header line, then one line per second holding the word on screen and, optionally, the word heard. Its picture
is cut into 2 s segments; its sound track, the companion stream, is stored as ``chatter`` items cut into the
chatter modality's own 1 s windows. Every word is embedded by the text tower, so vectors can be checked
against ``space.embed_segments``. One test runs a real video with its sound track.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import builtin_host

import anybind
from anybind import DecodeError, SpaceError, Store
from anybind.bindings import LearnedBinding, save_binding
from anybind.segments import Segment, SegmentPlan
from anybind.store.ingest import Ingest
from anybind.store.metadata import Row
from anybind.testing_audio import build_tiny_clap
from anybind.testing_video import BLUE, RED, tone, write_video

# -- a fake time-based modality with a companion stream ------------------------------------------------------


def column(source: object, index: int) -> list[str]:
    """The words of a reel's picture (0) or sound (1); a list is the words themselves."""
    if isinstance(source, list):
        return source
    lines = Path(source).read_text().splitlines()
    if not lines or lines[0] not in ("REEL", "CHATTER"):
        raise DecodeError(str(source), "not a reel")
    words = [line.split()[index] for line in lines[1:] if len(line.split()) > index]
    if "FAIL" in words:
        raise DecodeError(str(source), f"corrupt {'picture' if index == 0 else 'sound'}")
    if "BOOM" in words:
        raise RuntimeError("plugin bug")
    return words


def cut(words: list[str], plan: SegmentPlan):
    start, duration = 0.0, len(words)
    while start < duration:
        end = min(start + plan.window, duration)
        yield Segment(start, end, words[int(start) : math.ceil(end)])
        if end >= duration:
            break
        start += plan.hop


def reel_picture(source: object, plan: SegmentPlan):
    yield from cut(column(source, 0), plan)


def reel_sound(source: object, plan: SegmentPlan):
    yield from cut(column(source, 1), plan)  # a reel without sound has no segments


def fake(name: str, magic: bytes, tower: str, window: float, **extra: object) -> anybind.Modality:
    return anybind.Modality(
        name=name,
        decode=lambda source: column(source, 0),
        sniff=lambda head: head.startswith(magic),
        embeds_as=tower,
        segment=reel_picture,
        segment_defaults={"window": window},
        **extra,  # type: ignore[arg-type]
    )


class ReelPlugin:
    @anybind.hookimpl
    def anybind_modalities(self, register):
        register(fake("reel", b"REEL\n", "text", 2.0, companions={"chatter": reel_sound}))
        register(fake("chatter", b"CHATTER\n", "text", 1.0))


class MuffledPlugin:
    """A reel whose sound is ``murmur``, embedded by a ``sonar`` tower that no test space has."""

    @anybind.hookimpl
    def anybind_modalities(self, register):
        register(fake("reel", b"REEL\n", "text", 2.0, companions={"murmur": reel_sound}))
        register(fake("murmur", b"MURMUR\n", "sonar", 1.0))


def host_with(plugin: object, name: str) -> anybind.PluginHost:
    """The built-in plugins but video (whose sound needs a space that embeds audio), and ``plugin``."""
    host = builtin_host()
    host.remove_plugin("video")
    host.add_plugin(plugin, name)
    return host


def load(tiny_clip_dir: Path, plugin: object, batch_size: int = 32) -> anybind.Space:
    host = host_with(plugin, type(plugin).__name__.lower())
    return anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu", batch_size=batch_size, host=host)


@pytest.fixture(scope="module")
def reel_space(tiny_clip_dir: Path) -> anybind.Space:
    return load(tiny_clip_dir, ReelPlugin())


def open_store(path: Path, space: anybind.Space) -> Store:
    return Store.open(path, space=space, host=space.host)


@pytest.fixture()
def store(tmp_path: Path, reel_space: anybind.Space):
    with open_store(tmp_path / "db", reel_space) as opened:
        yield opened


def ingest(store: Store) -> Ingest:
    return Ingest(store.space, store.writer, exclude=[store.path])


def write_reel(path: Path, picture: list[str], sound: list[str] | None = None) -> Path:
    lines = [p if sound is None else f"{p} {s}" for p, s in zip(picture, sound or picture, strict=True)]
    path.write_text("REEL\n" + "\n".join(lines) + "\n")
    return path


def rows_of(store: Store, ids: list[int]) -> list[Row]:
    return sorted(store.get(ids), key=lambda r: (r.modality, r.start if r.start is not None else -1))


PICTURE = ["dog", "cat", "car", "sky", "tree"]
SOUND = ["bark", "meow", "horn", "wind", "rustle"]

# -- one pipeline for files and items ------------------------------------------------------------------------


def test_files_and_items_go_through_one_pipeline(tmp_path, reel_space):
    paths = []
    for n, text in enumerate(["a dog on a beach", "a violin", "a red car"]):
        paths.append(tmp_path / f"t{n}.txt")
        paths[-1].write_text(text)
    reel = write_reel(tmp_path / "r.reel", PICTURE)
    with open_store(tmp_path / "files", reel_space) as by_files, open_store(tmp_path / "items", reel_space) as by_items:
        files = ingest(by_files).files([*paths, reel], metadata={"batch": 1})
        texts = ingest(by_items).items("text", paths, metadata={"batch": 1})
        reels = ingest(by_items).items("reel", [reel], metadata={"batch": 1})
        assert files.errors == texts.errors == reels.errors == []
        assert (files.generation, texts.generation, reels.generation) == (1, 1, 2)  # items: one commit per call
        for path, items in [*((p, texts) for p in paths), (reel, reels)]:
            a, b = rows_of(by_files, files.added[str(path)]), rows_of(by_items, items.added[str(path)])
            assert [(r.modality, r.uri, r.start, r.end, r.metadata, r.content_hash) for r in a] == [
                (r.modality, r.uri, r.start, r.end, r.metadata, r.content_hash) for r in b
            ]
            assert a[0].content_hash is not None
            np.testing.assert_allclose(
                by_files.vectors([r.id for r in a]), by_items.vectors([r.id for r in b]), atol=1e-6
            )
        assert [(r.start, r.end) for r in rows_of(by_files, files.added[str(reel)])] == [(0, 2), (2, 4), (4, 5)]


def test_items_report_their_errors_in_input_order(store):
    report = ingest(store).items("text", [3.5, "a dog", "", "a cat", "   "])
    assert [e.reason for e in report.errors] == [
        "text items are str, bytes or pathlib.Path",
        "empty text",
        "empty text",
    ]
    assert sorted(report.added) == ["a cat", "a dog"]
    assert {r.text for r in store.get(report.ids)} == {"a dog", "a cat"}  # textual: a str item is the text
    assert {r.uri for r in store.get(report.ids)} == {None}


# -- commits ---------------------------------------------------------------------------------------------------


def test_commit_every_batches_the_commits(store, tmp_path):
    paths = []
    for n in range(7):
        paths.append(tmp_path / f"caption{n}.txt")
        paths[-1].write_text(f"caption number {n}")
    report = ingest(store).files(paths, commit_every=3)
    assert report.errors == [] and len(report.ids) == 7
    per_generation = Counter(row.generation for row in store.get(report.ids))
    assert sorted(per_generation.items()) == [(1, 3), (2, 3), (3, 1)] and report.generation == store.generation == 3


def test_a_time_based_file_is_never_split_across_commits(tmp_path, tiny_clip_dir):
    one_by_one = load(tiny_clip_dir, ReelPlugin(), batch_size=1)  # each reel finishes while the next is read
    reels = [write_reel(tmp_path / f"r{n}.reel", PICTURE[: n + 3], SOUND[: n + 3]) for n in range(3)]
    with open_store(tmp_path / "db", one_by_one) as opened:
        report = ingest(opened).files(reels, commit_every=1, audio_tracks=True)
        assert report.errors == [] and report.generation == 3  # one commit per reel, never part of one
        for n, reel in enumerate(reels):
            rows = opened.get(report.added[str(reel)])
            assert Counter(r.modality for r in rows) == {"reel": math.ceil((n + 3) / 2), "chatter": n + 3}
            assert {r.generation for r in rows} == {n + 1}


# -- errors, unchanged files -----------------------------------------------------------------------------------


def test_a_bad_file_is_reported_with_its_reason_and_the_rest_is_kept(store, tmp_path, image_files):
    broken_reel = write_reel(tmp_path / "broken.reel", ["dog", "FAIL", "cat"])
    missing = tmp_path / "gone.png"
    os.symlink(tmp_path / "nowhere.png", missing)
    paths = [image_files["good"], image_files["corrupt"], image_files["empty"], image_files["impostor"]]
    paths += [broken_reel, missing, image_files["jpeg"], write_reel(tmp_path / "ok.reel", PICTURE)]
    report = ingest(store).files(paths)
    failed = {Path(e.source).name: e.reason for e in report.errors}
    assert set(failed) == {"broken.png", "empty.png", "notes.jpg", "broken.reel", "gone.png"}
    assert failed["empty.png"] == "empty file (0 bytes)"
    assert failed["notes.jpg"].startswith("has the image extension .jpg but its content is not image data")
    assert failed["broken.reel"] == "corrupt picture"
    assert failed["gone.png"].startswith("broken symlink")
    assert failed["broken.png"]  # what the image decoder says
    assert sorted(Path(p).name for p in report.added) == ["good.png", "ok.reel", "photo.jpg"]
    assert {r.modality for r in store.get(report.ids)} == {"image", "reel"}


def test_reindexing_unchanged_files_skips_them(store, tmp_path):
    paths = [tmp_path / "a.txt", tmp_path / "b.txt", write_reel(tmp_path / "c.reel", PICTURE)]
    paths[0].write_text("a dog")
    paths[1].write_text("a cat")
    first = ingest(store).files(paths)
    generation = store.generation
    again = ingest(store).files(paths)
    assert again.unchanged == [str(p) for p in paths] and again.added == {} and again.replaced == []
    assert again.generation == generation == store.generation  # nothing to commit
    paths[1].write_text("a cat, changed")
    changed = ingest(store).files(paths)
    assert changed.unchanged == [str(paths[0]), str(paths[2])] and changed.replaced == [str(paths[1])]
    assert store.get(first.added[str(paths[1])]) == []  # the old version's items are gone
    assert [r.text for r in store.get(changed.ids)] == ["a cat, changed"]


# -- companion streams -------------------------------------------------------------------------------------------


def test_a_companion_stream_is_stored_as_its_modality_with_the_files_uri_and_times(store, reel_space, tmp_path):
    reel = write_reel(tmp_path / "clip.reel", PICTURE, SOUND)
    report = ingest(store).files([reel], audio_tracks=True)
    assert report.errors == [] and list(report.added) == [str(reel)]
    rows = rows_of(store, report.added[str(reel)])
    assert {r.uri for r in rows} == {str(reel)}
    assert [(r.modality, r.start, r.end) for r in rows] == [
        *[("chatter", float(s), float(s + 1)) for s in range(5)],  # the chatter modality's 1 s windows
        ("reel", 0.0, 2.0),
        ("reel", 2.0, 4.0),
        ("reel", 4.0, 5.0),
    ]
    assert len({r.generation for r in rows}) == 1  # committed together
    sound = reel_space.embed_segments("chatter", SOUND)
    np.testing.assert_allclose(store.vectors([r.id for r in rows[:5]]), sound.vectors, atol=1e-5)
    # without audio_tracks only the picture is indexed; asking later indexes the sound of the unchanged file
    other = write_reel(tmp_path / "other.reel", PICTURE, SOUND)
    assert Counter(r.modality for r in store.get(ingest(store).files([other]).ids)) == {"reel": 3}
    assert ingest(store).files([other]).unchanged == [str(other)]
    later = ingest(store).files([other], audio_tracks=True)
    assert later.unchanged == [] and later.replaced == [str(other)]
    assert Counter(r.modality for r in store.get(later.ids)) == {"reel": 3, "chatter": 5}
    assert ingest(store).files([other], audio_tracks=True).unchanged == [str(other)]


def test_a_file_without_the_companion_stream_is_not_an_error(store, tmp_path):
    silent = write_reel(tmp_path / "silent.reel", PICTURE)
    report = ingest(store).files([silent], audio_tracks=True)
    assert report.errors == [] and Counter(r.modality for r in store.get(report.ids)) == {"reel": 3}


@pytest.mark.parametrize("failing", ["picture", "sound", "bug"])
def test_a_failing_stream_drops_the_whole_file(store, tmp_path, failing):
    picture, sound = list(PICTURE), list(SOUND)
    (picture if failing == "picture" else sound)[3] = "BOOM" if failing == "bug" else "FAIL"
    bad = write_reel(tmp_path / "bad.reel", picture, sound)
    good = write_reel(tmp_path / "good.reel", PICTURE, SOUND)
    report = ingest(store).files([bad, good], audio_tracks=True)
    expected = {
        "picture": (str(bad), "corrupt picture"),
        "sound": (str(bad), "corrupt sound"),
        "bug": (f"{bad} (chatter track)", "RuntimeError: plugin bug"),  # the stream named for a plugin's bug
    }
    assert [(e.source, e.reason) for e in report.errors] == [expected[failing]]
    assert list(report.added) == [str(good)] and {r.uri for r in store.get(report.ids)} == {str(good)}


def test_a_space_that_cannot_embed_the_companion_is_a_space_error(tmp_path, tiny_clip_dir):
    space = load(tiny_clip_dir, MuffledPlugin())
    reel = write_reel(tmp_path / "clip.reel", PICTURE, SOUND)
    with open_store(tmp_path / "db", space) as opened:
        with pytest.raises(SpaceError, match=r"cannot embed murmur, the companion stream of reel files") as info:
            ingest(opened).files([reel], audio_tracks=True)
        assert "murmur" in str(info.value) and "[modalities.murmur]" in str(info.value)
        assert opened.generation == 0
        assert ingest(opened).files([reel]).errors == []  # without companion streams the reel is fine


def test_companions_need_a_segment_function():
    with pytest.raises(ValueError, match=r"companion streams \(chatter\) but no segment function"):
        anybind.Modality(name="still", decode=str, companions={"chatter": reel_sound})
    with pytest.raises(ValueError, match="companions maps the names of other modalities"):
        anybind.Modality(name="reel", decode=str, segment=reel_picture, companions={"reel": reel_sound})


# -- a real video and its sound track ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def av_space(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> anybind.Space:
    """Tiny CLIP anchor; audio through tiny CLAP (1 s windows) and a random, correctly labelled linear binding."""
    root = tmp_path_factory.mktemp("av-space")
    clap = build_tiny_clap(root / "clap")
    space = anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu")
    rng = np.random.default_rng(0)
    weights = {"linear.weight": rng.standard_normal((16, 24)).astype(np.float32), "linear.bias": np.zeros(16, "f4")}
    info = {"source": space.load_encoder(f"clap:{clap}").id, "anchor": space.anchor.id, "source_modality": "audio"}
    save_binding(LearnedBinding("linear", weights, info), root / "audio")
    path = root / "space.toml"
    route = f'encoder = "clap:{clap}"\nbinding = "./audio.safetensors"\n'
    path.write_text(f'anchor = "clip:{tiny_clip_dir}"\n\n[modalities.audio]\n{route}')
    return anybind.load_space(str(path), device="cpu")


def test_a_videos_sound_track_is_indexed_as_audio_with_the_videos_uri_and_times(tmp_path, av_space):
    clip = write_video(tmp_path / "clip.mp4", [RED, RED, BLUE], audio=(tone(440.0, 3.0), 16000))
    with open_store(tmp_path / "db", av_space) as opened:
        report = ingest(opened).files([clip], audio_tracks=True)
        assert report.errors == []
        rows = rows_of(opened, report.added[os.path.realpath(clip)])
    assert {r.uri for r in rows} == {os.path.realpath(clip)}
    assert [(r.modality, r.start, r.end) for r in rows] == [
        ("audio", 0.0, 1.0),
        ("audio", 1.0, 2.0),
        ("audio", 2.0, 3.0),
        ("video", 0.0, 2.0),
        ("video", 2.0, 3.0),
    ]


def test_a_space_without_audio_refuses_video_sound_tracks(tmp_path, clip_space):
    clip = write_video(tmp_path / "clip.mp4", [RED, BLUE], audio=(tone(440.0, 2.0), 16000))
    message = r"cannot embed audio, the companion stream of video files \(it embeds "
    with open_store(tmp_path / "db", clip_space) as opened, pytest.raises(SpaceError, match=message):
        ingest(opened).files([clip], audio_tracks=True)
