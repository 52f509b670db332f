"""Audio and video end to end through the CLI: a binding trained from videos, a mixed folder indexed, any-to-any search.

The folder holds PNGs (red, green, blue), WAV tones, MP4s whose picture and sound change colour and pitch
together, and a caption. ``anybind bind train --videos`` learns tiny-CLAP audio -> tiny-CLIP image from the
videos alone (each sound chunk with the frame at its middle); a space file routes audio through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import anybind
from anybind.cli import main
from anybind.testing_audio import SAMPLE_RATE, build_tiny_clap, tone, write_tone
from anybind.testing_video import BLUE, GREEN, RED, write_video

PITCH = {RED: 440.0, GREEN: 660.0, BLUE: 880.0}


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_av(path: Path, colours: list[tuple[int, int, int]]) -> Path:
    """One colour per second, with the colour's pitch as its sound."""
    sound = np.concatenate([tone(PITCH[c], 1.0, SAMPLE_RATE) for c in colours]).astype(np.float32)
    return write_video(path, colours, audio=(sound, SAMPLE_RATE))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    folder = root / "folder"
    folder.mkdir()
    for name, colour in (("red", RED), ("green", GREEN), ("blue", BLUE)):
        Image.new("RGB", (48, 40), colour).save(folder / f"{name}.png")
    for name, colour in (("a440", RED), ("a880", BLUE)):
        write_tone(folder / f"{name}.wav", PITCH[colour], seconds=2.5)
    write_av(folder / "rgb.mp4", [RED, RED, GREEN, GREEN, BLUE, BLUE])
    write_av(folder / "bgr.mp4", [BLUE, BLUE, GREEN, GREEN, RED, RED])
    (folder / "caption.txt").write_text("a red square\n")
    training = root / "training"
    training.mkdir()
    for i, order in enumerate([[RED, GREEN, BLUE], [GREEN, BLUE, RED], [BLUE, RED, GREEN]]):
        write_av(training / f"t{i}.mp4", [c for c in order for _ in range(3)])
    clap = build_tiny_clap(root / "clap")
    return {"root": root, "folder": folder, "training": training, "clap": clap, "clip": tiny_clip_dir}


@pytest.fixture(scope="module")
def bound_space(media: dict[str, Path]) -> Path:
    """A space file: tiny CLIP anchor, audio through tiny CLAP and a binding trained from the training videos."""
    out = media["root"] / "audio-binding"
    code = main(
        [
            "bind",
            "train",
            "--space",
            f"clip:{media['clip']}",
            "--encoder",
            f"clap:{media['clap']}",
            "--modality",
            "audio",
            "--videos",
            str(media["training"]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    space = media["root"] / "space.toml"
    space.write_text(
        f'anchor = "clip:{media["clip"]}"\n\n[modalities.audio]\nencoder = "clap:{media["clap"]}"\n'
        'binding = "./audio-binding.safetensors"\n'
    )
    return space


def test_bind_train_from_videos_writes_both_files_and_info_shows_recall(bound_space, media, capsys):
    info = json.loads((media["root"] / "audio-binding.json").read_text())
    assert info["training"]["pairs_source"] == "3 videos (audio chunk + frame at its middle)"
    assert info["training"]["videos"] == 3 and info["training"]["pairs"] == 27  # 9 one-second chunks each
    assert info["source_modality"] == "audio" and info["target_modality"] == "image"
    assert (media["root"] / "audio-binding.safetensors").stat().st_size > 0
    code, out, _ = run_cli(capsys, "bind", "info", media["root"] / "audio-binding.json", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["held_out_recall"]["r@1"] == info["held_out_recall"]["r@1"]
    assert info["held_out_recall"]["r@1"] >= 0.8  # 5 held-out chunks; pitch and colour change together
    code, out, _ = run_cli(capsys, "bind", "info", media["root"] / "audio-binding.json")
    assert "27 from 3 videos" in out and "held-out recall" in out and "R@1" in out


def test_mixed_folder_index_and_search_any_to_any(bound_space, media, tmp_path, capsys):
    db = tmp_path / "db"
    code, out, err = run_cli(
        capsys, "index", media["folder"], "--db", db, "--space", bound_space, "--device", "cpu", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["errors"] == []
    with anybind.Store.open(db, create=False) as store:
        counts = store.info()["partitions"]
        assert {name: part["count"] for name, part in counts.items()} == {
            "image": 3,
            "audio": 6,  # two 2.5 s WAVs in 1 s windows: [0,1) [1,2) [1.5,2.5) (the short tail shifts back)
            "video": 6,  # two 6 s MP4s in 2 s windows
            "text": 1,
        }

    # image -> video: the MP4 hits carry the time span of the matching colour
    code, out, _ = run_cli(
        capsys, "search", "--db", db, "--image", media["folder"] / "blue.png", "--to", "video", "--json"
    )
    assert code == 0
    hits = json.loads(out)["hits"]
    assert [(Path(h["uri"]).name, h["start"], h["end"]) for h in hits] in (
        [("rgb.mp4", 4.0, 6.0), ("bgr.mp4", 0.0, 2.0)],
        [("bgr.mp4", 0.0, 2.0), ("rgb.mp4", 4.0, 6.0)],
    )
    code, out, _ = run_cli(
        capsys, "search", "--db", db, "--image", media["folder"] / "green.png", "--to", "video", "--segments", "--json"
    )
    spans = [(Path(h["uri"]).name, h["start"], h["end"]) for h in json.loads(out)["hits"]]
    assert len(spans) == 6 and {s[1:] for s in spans[:2]} == {(2.0, 4.0)}

    # audio -> image through the learned binding: each pitch finds its colour
    for wav, colour in (("a440.wav", "red.png"), ("a880.wav", "blue.png")):
        code, out, _ = run_cli(
            capsys, "search", "--db", db, "--audio", media["folder"] / wav, "--to", "image", "-k", "1", "--json"
        )
        assert Path(json.loads(out)["hits"][0]["uri"]).name == colour

    # audio -> video: the high pitch finds the blue moments of both videos
    code, out, _ = run_cli(
        capsys, "search", "--db", db, "--audio", media["folder"] / "a880.wav", "--to", "video", "--json"
    )
    spans = {(Path(h["uri"]).name, h["start"], h["end"]) for h in json.loads(out)["hits"]}
    assert spans == {("rgb.mp4", 4.0, 6.0), ("bgr.mp4", 0.0, 2.0)}

    # text -> audio: audio hits, rolled up per file, with times and exact scores
    code, out, _ = run_cli(capsys, "search", "--db", db, "--text", "a red square", "--to", "audio", "--json")
    hits = json.loads(out)["hits"]
    assert sorted(Path(h["uri"]).name for h in hits) == ["a440.wav", "a880.wav"]
    space = anybind.load_space(bound_space, device="cpu")
    query = space.embed("text", ["a red square"])[0]
    for hit in hits:
        segments = space.embed_segments("audio", hit["uri"])
        index = segments.starts.index(hit["start"])
        assert hit["end"] == segments.ends[index]
        assert hit["score"] == pytest.approx(float(segments.vectors[index] @ query), abs=1e-4)
        assert hit["score"] == pytest.approx(float(np.max(segments.vectors @ query)), abs=1e-4)  # the best segment


def test_video_audio_tracks_are_indexed_as_audio_items(bound_space, media, tmp_path, capsys):
    db = tmp_path / "db"
    code, _, err = run_cli(
        capsys,
        "index",
        media["folder"] / "rgb.mp4",
        "--db",
        db,
        "--space",
        bound_space,
        "--device",
        "cpu",
        "--audio-tracks",
        "--json",
    )
    assert code == 0, err
    with anybind.Store.open(db, create=False) as store:
        assert {n: p["count"] for n, p in store.info()["partitions"].items()} == {"video": 3, "audio": 6}
        hits = store.search(audio=str(media["folder"] / "a880.wav"), to="audio", segments=True, k=6)
        assert {Path(h.uri).name for h in hits} == {"rgb.mp4"}
        assert sorted((h.start, h.end) for h in hits) == [(float(i), float(i + 1)) for i in range(6)]


def test_bad_media_files_are_listed_and_the_rest_is_kept(bound_space, media, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    write_tone(folder / "good.wav", 440.0, seconds=1.5)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("not audio at all\n")
    good = (media["folder"] / "rgb.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(good[: len(good) // 2])
    header_only = folder / "header.wav"
    import soundfile as sf

    sf.write(header_only, np.zeros(0, np.float32), SAMPLE_RATE)
    db = tmp_path / "db"
    code, _, err = run_cli(
        capsys, "index", folder, "--db", db, "--space", bound_space, "--device", "cpu", "--no-progress"
    )
    assert code == 1
    failed = {line.split(": ", 2)[1]: line.split(": ", 2)[2] for line in err.splitlines() if "failed:" in line}
    assert set(failed) == {str(folder / n) for n in ("empty.wav", "notes.wav", "cut.mp4", "header.wav")}
    assert "empty file" in failed[str(folder / "empty.wav")]
    assert "has the audio extension .wav but its content is not audio data" in failed[str(folder / "notes.wav")]
    assert "no audio frames" in failed[str(folder / "header.wav")]
    assert "corrupt or truncated video" in failed[str(folder / "cut.mp4")]
    with anybind.Store.open(db, create=False) as store:
        rows = store.get(list(range(1, 10)))
        assert {Path(r.uri).name for r in rows} == {"good.wav"}
