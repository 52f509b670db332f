"""``anybind bind train`` / ``bind info`` end to end with the tiny CLIP as anchor and source, and pairs files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image

import anybind.cli as cli
from anybind.bindings.pairs import read_captions, read_pairs_file
from anybind.cli import bind_cmd
from anybind.errors import DecodeError
from anybind.testing import SENTENCES

CAPTIONS = [*SENTENCES, "a dog on the sea", "a cat in a red car", "a house over the road", "a piano on a mat"]


@pytest.fixture(autouse=True)
def _bind_command(monkeypatch):
    """``bind`` on the root app (until the lead registers it in ``anybind.cli.build_app`` itself)."""
    if not any(group.name == "bind" for group in cli.build_app().registered_groups):
        build = cli.build_app

        def build_with_bind():
            app = build()
            bind_cmd.register(app)
            return app

        monkeypatch.setattr(cli, "build_app", build_with_bind)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    """Ten captions each with its own picture, one row whose image is missing, one whose image is corrupt."""
    (tmp_path / "img").mkdir()
    lines = ["media,image"]
    for i, caption in enumerate(CAPTIONS):
        make_image(tmp_path / "img" / f"{i}.png", seed=i)
        lines.append(f'"{caption}",img/{i}.png')
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    lines += ["a lost photo,img/missing.png", "a broken photo,img/broken.png"]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def train_args(space, source, out, *more):
    return [
        "bind",
        "train",
        "--space",
        space,
        "--encoder",
        source,
        "--out",
        out,
        "--epochs",
        "3",
        "--no-progress",
        *more,
    ]


def test_bind_train_on_a_pairs_file_then_info(capsys, tiny_clip_dir, clip_space, pairs_dir):
    spec = f"clip:{tiny_clip_dir}"
    out = pairs_dir / "models" / "text.binding"
    out.parent.mkdir()
    args = train_args(spec, spec, out, "--modality", "text", "--pairs", pairs_dir / "pairs.csv", "--json")
    code, stdout, err = run_cli(capsys, *args)
    assert code == 1, err  # two rows were skipped; the binding is written from the rest
    assert "anybind: 2 of 12 pairs skipped:" in err
    assert f"skipped: {pairs_dir / 'img' / 'missing.png'}: no such file" in err
    assert f"skipped: {pairs_dir / 'img' / 'broken.png'}: " in err
    summary = json.loads(stdout)
    assert (summary["pairs"], summary["skipped"], summary["train"], summary["held_out"]) == (10, 2, 8, 2)
    assert summary["files"] == {"weights": f"{out}.safetensors", "info": f"{out}.json"}
    assert Path(f"{out}.safetensors").is_file() and Path(f"{out}.json").is_file()
    assert set(summary["recall"]) == {"r@1", "r@5", "r@10"} and summary["epochs_run"] <= 3

    code, stdout, err = run_cli(capsys, "bind", "info", f"{out}.json", "--json")
    assert code == 0, err
    info = json.loads(stdout)
    assert info["id"] == summary["id"] and info["kind"] == "linear"
    assert info["source"] == info["anchor"] == clip_space.anchor.id
    assert (info["source_modality"], info["source_tower"], info["target_modality"]) == ("text", "text", "image")
    assert (info["source_dim"], info["target_dim"]) == (16, 16)
    training = info["training"]
    assert (training["pairs"], training["skipped"], training["rows"], training["seed"]) == (10, 2, 12, 0)
    assert training["pairs_source"] == "pairs file pairs.csv" and training["epochs"] == 3
    assert info["held_out_recall"] == summary["recall"]

    code, stdout, err = run_cli(capsys, "bind", "info", out)
    assert code == 0, err
    assert "held-out recall" in stdout and "pairs file pairs.csv" in stdout
    recall = summary["recall"]
    assert f"R@1 {recall['r@1']:.3f}  R@5 {recall['r@5']:.3f}  R@10 {recall['r@10']:.3f}" in stdout

    # the binding works in a space file: text goes through it, and stays unit-norm in the anchor space
    space_file = pairs_dir / "space.toml"
    space_file.write_text(f'anchor = "{spec}"\n[modalities.text]\nbinding = "./models/text.binding"\n')
    code, stdout, err = run_cli(capsys, "embed", "--space", space_file, "-m", "text", "a dog", "--json")
    assert code == 0, err
    assert abs(np.linalg.norm(json.loads(stdout)["results"][0]["vector"]) - 1) < 1e-4


def test_bind_train_text_bridge_from_captions(capsys, tiny_clip_dir, tmp_path):
    spec = f"clip:{tiny_clip_dir}"
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join([*CAPTIONS, "", CAPTIONS[0]]) + "\n")  # a blank line and a repeat are dropped
    out = tmp_path / "bridge"
    args = train_args(spec, spec, out, "--modality", "image", "--bridge", "text", "--captions", captions)
    code, stdout, err = run_cli(capsys, *args, "--kind", "mlp", "--hidden", "8")
    assert code == 0, err
    assert "trained mlp binding mlp@" in stdout and "(16 -> 16)" in stdout and "10 used, 0 skipped" in stdout
    info = json.loads(Path(f"{out}.json").read_text())
    assert (info["bridge"], info["applies_to"], info["source_tower"], info["hidden"]) == ("text", "image", "text", 8)
    assert info["training"]["pairs_source"] == "captions file captions.txt"


def test_too_few_pairs_is_an_error(capsys, tiny_clip_dir, tmp_path):
    spec = f"clip:{tiny_clip_dir}"
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(SENTENCES[:5]))
    code, _, err = run_cli(capsys, *train_args(spec, spec, tmp_path / "b", "-m", "image", "--captions", captions))
    assert code == 2
    assert "anybind: error: 5 pairs are too few to train a binding; at least 8 are needed" in err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give one of --pairs FILE, --videos PATH... or --bridge text --captions FILE"),
        (
            ["--pairs", "p.csv", "--captions", "c.txt"],
            "give one of --pairs FILE, --videos PATH... or --bridge text --captions FILE",
        ),
        (["--pairs", "p.csv", "--bridge", "text"], "--bridge learns from --captions FILE"),
        (["--videos", "clips"], "it trains an audio binding, not 'text'"),
        (["--videos", "clips", "--pairs", "p.csv"], "give one of --pairs FILE, --videos PATH..."),
        (["--captions", "c.txt", "--bridge", "audio"], "'audio': only text is supported"),
        (["--pairs", "p.csv", "--kind", "conv"], "'conv': choose one of linear, mlp"),
        (["--pairs", "p.csv", "--hidden", "8"], "a hidden size (8) applies to mlp bindings only"),
        (["--pairs", "p.csv", "--temperature", "-1"], "temperature must be positive, got -1.0"),
    ],
)
def test_bad_options_are_refused_before_anything_loads(capsys, tmp_path, extra, message):
    args = ["bind", "train", "--space", "clip:unused", "--encoder", "clip:unused", "-m", "text", "-o", tmp_path / "b"]
    code, _, err = run_cli(capsys, *args, *extra)
    assert code == 2 and message in err


def test_out_folder_must_exist(capsys, tmp_path):
    args = ["bind", "train", "-s", "clip:x", "-e", "clip:x", "-m", "text", "--pairs", "p.csv"]
    code, _, err = run_cli(capsys, *args, "-o", tmp_path / "no" / "b")
    assert code == 2 and "does not exist" in err


def test_bad_pairs_files_are_errors_naming_the_file(capsys, tiny_clip_dir, tmp_path):
    spec = f"clip:{tiny_clip_dir}"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("media,picture\na dog,dog.png\n")
    code, _, err = run_cli(capsys, *train_args(spec, spec, tmp_path / "b", "-m", "text", "--pairs", pairs))
    assert code == 2
    assert f"anybind: error: {pairs}: missing column 'image': the header has ['media', 'picture']" in err
    code, _, err = run_cli(capsys, *train_args(spec, spec, tmp_path / "b", "-m", "text", "--pairs", tmp_path / "x.csv"))
    assert code == 2 and f"anybind: error: {tmp_path / 'x.csv'}: no such file" in err


def test_an_encoder_without_the_modalitys_tower_is_an_error(capsys, tiny_clip_dir, pairs_dir):
    spec = f"clip:{tiny_clip_dir}"
    args = train_args(spec, spec, pairs_dir / "b", "-m", "audio", "--pairs", pairs_dir / "pairs.csv")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and f"encoder '{spec}' has no 'audio' tower for modality 'audio'" in err


def test_bind_info_on_a_damaged_file(capsys, tmp_path):
    (tmp_path / "b.safetensors").write_bytes(b"\x80\x04junk")
    (tmp_path / "b.json").write_text("{oops")
    code, _, err = run_cli(capsys, "bind", "info", tmp_path / "b.safetensors")
    assert code == 2 and f"anybind: error: {tmp_path / 'b.json'}: binding info is not valid JSON" in err


# -- pairs files ----------------------------------------------------------------------------------------------


def test_csv_and_jsonl_pairs_resolve_paths_next_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    csv_file = tmp_path / "sub" / "pairs.csv"
    csv_file.write_text('image,media,note\nimg/a.png,sounds/a.wav,x\n"b c.png", ,y\n')
    rows, skipped = read_pairs_file(csv_file)
    assert [(r.media, r.image, r.where) for r in rows] == [
        (tmp_path / "sub" / "sounds" / "a.wav", tmp_path / "sub" / "img" / "a.png", f"{csv_file}:2")
    ]
    assert [str(s.error) for s in skipped] == [f"{csv_file}:3: no 'media' value (a non-empty string is needed)"]

    jsonl = tmp_path / "pairs.txt"  # no telling suffix: the first character decides
    jsonl.write_text('{"media": "a dog barking", "image": "/abs/dog.png"}\n\n{"media": "x", "image": "y.png"}\n')
    rows, skipped = read_pairs_file(jsonl, text_media=True)
    assert [(r.media, r.image) for r in rows] == [("a dog barking", Path("/abs/dog.png")), ("x", tmp_path / "y.png")]
    assert skipped == [] and rows[1].where == f"{jsonl}:3"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.jsonl", '{"media": "a"}\n', "p.jsonl:1: missing key 'image'"),
        ("p.jsonl", '{"media": "a", "image": "b"}\n[1]\n', "p.jsonl:2: expected a JSON object"),
        ("p.jsonl", "{oops\n", "p.jsonl:1: not valid JSON"),
        ("p.csv", "", "p.csv: empty file (0 bytes)"),
        ("p.csv", "media,image\n", "p.csv: no pairs in the file"),
        ("p.csv", b"media,image\n\xff\xfe,x\n", "p.csv: not UTF-8 text"),
    ],
)
def test_unreadable_pairs_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DecodeError) as info:
        read_pairs_file(path)
    assert str(info.value).startswith(str(tmp_path)) and message in str(info.value)


def test_captions_keep_first_lines_of_distinct_captions(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\ufeffa dog\n\n  a cat \na dog\n")
    assert read_captions(path) == [(1, "a dog"), (3, "a cat")]
    path.write_text("\n \n")
    with pytest.raises(DecodeError, match="no captions in the file"):
        read_captions(path)


# -- audio through CLAP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anybind.testing_audio import build_tiny_clap

    return build_tiny_clap(tmp_path_factory.mktemp("models") / "tiny-clap")


def test_audio_bindings_from_pairs_and_from_a_text_bridge_work_in_a_space(capsys, tiny_clip_dir, clap_dir, tmp_path):
    """Tiny CLAP (24-d) into a tiny CLIP space (16-d): tone/picture pairs, and CLAP-text -> CLIP-text captions."""
    from anybind.testing_audio import write_tone

    clip, clap = f"clip:{tiny_clip_dir}", f"clap:{clap_dir}"
    lines = ["media,image"]
    for i in range(10):
        write_tone(tmp_path / f"tone{i}.wav", 220 * 1.25**i, seconds=1.5)
        make_image(tmp_path / f"pic{i}.png", seed=i)
        lines.append(f"tone{i}.wav,pic{i}.png")
    (tmp_path / "pairs.csv").write_text("\n".join([*lines, "notes.txt,pic0.png"]) + "\n")
    (tmp_path / "notes.txt").write_text("not a sound\n")
    args = train_args(clip, clap, tmp_path / "audio", "-m", "audio", "--pairs", tmp_path / "pairs.csv", "--json")
    code, stdout, err = run_cli(capsys, *args)
    assert code == 1 and f"skipped: {tmp_path / 'notes.txt'}: " in err
    assert json.loads(stdout)["pairs"] == 10 and json.loads(stdout)["source_dim"] == 24

    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS))
    args = train_args(clip, clap, tmp_path / "bridge", "-m", "audio", "--bridge", "text", "--captions", captions)
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    bridge = json.loads((tmp_path / "bridge.json").read_text())
    direct = json.loads((tmp_path / "audio.json").read_text())
    assert bridge["source"] == direct["source"] and bridge["source"].startswith("clap@sha256:")
    assert (bridge["bridge"], bridge["applies_to"], bridge["source_tower"]) == ("text", "audio", "text")
    assert (direct["source_modality"], direct["target_modality"], direct.get("bridge")) == ("audio", "image", None)

    for name in ("audio", "bridge"):
        space_file = tmp_path / f"{name}.toml"
        space_file.write_text(
            f'anchor = "{clip}"\n[modalities.audio]\nencoder = "{clap}"\nbinding = "./{name}.safetensors"\n'
        )
        code, stdout, err = run_cli(
            capsys, "embed", "--space", space_file, "-m", "audio", tmp_path / "tone3.wav", "--json"
        )
        assert code == 0, err
        vector = json.loads(stdout)["results"][0]["vector"]
        assert len(vector) == 16 and abs(np.linalg.norm(vector) - 1) < 1e-4
