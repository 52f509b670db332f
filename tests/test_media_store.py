"""A video and its sound track in the store: one unit on write, one file in results; space-file segment settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import anybind
import anybind.plugins.video as video_plugin
from anybind import DecodeError, SpaceError, Store
from anybind.bindings import LearnedBinding, read_binding, save_binding
from anybind.testing_audio import build_tiny_clap
from anybind.testing_video import BLUE, GREEN, RED, tone, write_video


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> Path:
    """Tiny CLIP anchor; audio through tiny CLAP and a random (but correctly labelled) linear binding."""
    root = tmp_path_factory.mktemp("space")
    clap = build_tiny_clap(root / "clap")
    space = anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu")
    rng = np.random.default_rng(0)
    weights = {
        "linear.weight": rng.standard_normal((16, 24)).astype(np.float32),
        "linear.bias": np.zeros(16, np.float32),
    }
    info = {"source": space.load_encoder(f"clap:{clap}").id, "anchor": space.anchor.id, "source_modality": "audio"}
    save_binding(LearnedBinding("linear", weights, info), root / "audio")
    path = root / "space.toml"
    route = f'encoder = "clap:{clap}"\nbinding = "./audio.safetensors"\n'
    path.write_text(f'anchor = "clip:{tiny_clip_dir}"\n\n[modalities.audio]\n{route}')
    return path


def counts(store: Store) -> dict[str, int]:
    return {name: part["count"] for name, part in store.info()["partitions"].items()}


def av_clip(path: Path, colours: list, pitch: float = 440.0) -> Path:
    return write_video(path, colours, audio=(tone(pitch, float(len(colours))), 16000))


@pytest.fixture()
def store(tmp_path: Path, space_file: Path):
    with Store.open(tmp_path / "db", space=space_file, device="cpu") as opened:
        yield opened


@pytest.mark.parametrize("failing", ["picture", "sound"])
def test_a_video_failing_half_way_keeps_its_old_items_and_is_retried(store, tmp_path, monkeypatch, failing):
    clip = av_clip(tmp_path / "clip.mp4", [RED, RED, BLUE, BLUE])
    assert store.add_files([clip], audio_tracks=True).errors == []
    before = counts(store)
    assert before == {"video": 2, "audio": 4}
    generation = store.generation

    av_clip(clip, [GREEN, GREEN, BLUE, BLUE, RED], pitch=660.0)  # the file changes, then fails to decode
    if failing == "picture":

        def broken(self):
            yield from []
            raise DecodeError(self.label, "corrupt video stream (simulated)")

        monkeypatch.setattr(video_plugin.SampledFrames, "__iter__", broken)
    else:

        def broken_blocks(messages):
            yield from []
            raise DecodeError(str(clip), "corrupt audio track (simulated)")

        monkeypatch.setattr(video_plugin, "_blocks", broken_blocks)
    report = store.add_files([clip], audio_tracks=True)
    assert [e.reason for e in report.errors] == [
        f"corrupt {'video stream' if failing == 'picture' else 'audio track'} (simulated)"
    ]
    assert report.added == {} and counts(store) == before and store.generation == generation

    monkeypatch.undo()
    report = store.add_files([clip], audio_tracks=True)  # not "unchanged": the new content was never stored
    assert report.unchanged == [] and report.errors == []
    assert counts(store) == {"video": 3, "audio": 5}


def test_a_failed_picture_skips_decoding_its_sound(store, tmp_path, monkeypatch):
    clip = av_clip(tmp_path / "clip.mp4", [RED, BLUE, GREEN, RED])
    modes: list[str] = []
    run_child = video_plugin.video_decode.run_child

    def spy(mode, *args, **kwargs):
        modes.append(mode)
        if mode == "frames":
            raise DecodeError(str(clip), "picture broken (simulated)")
        return run_child(mode, *args, **kwargs)

    monkeypatch.setattr(video_plugin.video_decode, "run_child", spy)
    report = store.add_files([clip], audio_tracks=True)
    assert [e.reason for e in report.errors] == ["picture broken (simulated)"]
    assert modes == ["frames"] and counts(store) == {}


def test_a_video_and_its_sound_are_committed_together(space_file, tmp_path):
    clips = [av_clip(tmp_path / f"c{i}.mp4", [RED, BLUE, GREEN]) for i in range(3)]
    store = Store.open(tmp_path / "db", space=space_file, device="cpu", batch_size=1)  # files finish one by one
    report = store.add_files(clips, audio_tracks=True, commit_every=1)
    assert store.generation >= 3  # one commit per video
    for path, ids in report.added.items():
        rows = {r.id: r for r in store.get(ids)}
        assert sorted(r.modality for r in rows.values()) == ["audio"] * 3 + ["video"] * 2, path
        generations = {r.generation for r in rows.values()}
        assert len(generations) == 1, path


def test_a_silent_video_with_audio_tracks_is_not_an_error(store, tmp_path):
    silent = write_video(tmp_path / "silent.mp4", [RED, BLUE])
    report = store.add_files([silent], audio_tracks=True)
    assert report.errors == [] and counts(store) == {"video": 1}


def test_asking_for_tracks_later_indexes_the_sound_of_unchanged_videos(store, tmp_path):
    clip = av_clip(tmp_path / "clip.mp4", [RED, BLUE])
    store.add_files([clip])
    assert counts(store) == {"video": 1}
    assert store.add_files([clip]).unchanged == [str(clip)]
    report = store.add_files([clip], audio_tracks=True)
    assert report.unchanged == [] and str(clip) in report.replaced
    assert counts(store) == {"video": 1, "audio": 2}
    assert store.add_files([clip], audio_tracks=True).unchanged == [str(clip)]


def test_search_returns_each_file_once_across_its_picture_and_sound(store, tmp_path):
    clips = [av_clip(tmp_path / f"v{i}.mp4", [RED, GREEN, BLUE, RED], pitch=300.0 + 200 * i) for i in range(3)]
    store.add_files(clips, audio_tracks=True)
    for text in ("a red square", "a blue thing", "noise"):
        hits = store.search(text=text, k=3)
        assert sorted(Path(h.uri).name for h in hits) == ["v0.mp4", "v1.mp4", "v2.mp4"], text
        assert hits[0].calibrated >= hits[1].calibrated >= hits[2].calibrated
    every = store.search(text="a red square", k=100, segments=True)
    assert len(every) == 3 * 2 + 3 * 4  # 2 s video windows, 1 s audio windows


def test_a_list_of_frames_is_a_video(store):
    space = store.space
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, RED, BLUE, BLUE, BLUE)]
    segments = space.embed_segments("video", frames)  # taken as sampled at 1 frame/s
    assert list(zip(segments.starts, segments.ends, strict=True)) == [(0, 2), (2, 4), (4, 5)]
    images = space.embed("image", frames)
    expected = images[[0, 2, 4]]  # each window holds frames of one colour
    np.testing.assert_allclose(segments.vectors, expected, atol=1e-5)


def test_segment_settings_do_not_change_the_fingerprint_and_are_checked_at_load(tmp_path, tiny_clip_dir):
    base = anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu")
    for body in ("fps = 2.0\n", "fps = 4.0\nwindow = 1.0\n"):
        path = tmp_path / "video.toml"
        path.write_text(f'anchor = "clip:{tiny_clip_dir}"\n\n[modalities.video]\n{body}')
        space = anybind.load_space(path, device="cpu")
        assert space.fingerprint == base.fingerprint
        assert space.segment_plan("video").fps == float(body.split()[2])
    path.write_text(f'anchor = "clip:{tiny_clip_dir}"\n\n[modalities.video]\nwindow = 1.0\nfps = 0.5\n')
    with pytest.raises(SpaceError, match="would hold no frame"):
        anybind.load_space(path, device="cpu")


def test_a_binding_trained_for_another_modality_is_refused(space_file, tmp_path, tiny_clip_dir):
    text = space_file.read_text()
    binding = read_binding(space_file.parent / "audio.safetensors")  # trained for audio: relabel a copy as text
    relabelled = LearnedBinding("linear", binding.tensors, {**binding.info, "source_modality": "text"})
    save_binding(relabelled, tmp_path / "text-binding")
    path = tmp_path / "space.toml"
    path.write_text(text.replace("./audio.safetensors", str(tmp_path / "text-binding.safetensors")))
    with pytest.raises(SpaceError, match=r"was trained for text vectors, not for audio"):
        anybind.load_space(path, device="cpu")
