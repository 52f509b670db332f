"""The ``mini:`` encoder and the ``anybind-mini`` preset: vectors, determinism, MiniLM parity, load errors, and the
default space of a new store.

Small randomly initialised configs saved in tmp dirs keep most tests fast; the shipped weights are used only
where the preset itself is under test (its dimension and that it loads).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image

import anybind
from anybind.cli import main
from anybind.errors import DecodeError, ModelLoadError, StoreError
from anybind.plugins.mini import minilm, weights
from anybind.plugins.mini.encoder import MiniEncoder
from anybind.plugins.mini.model import MiniConfig, MiniModel
from anybind.segments import AudioClip
from anybind.store.store import DEFAULT_SPACE
from anybind.testing_audio import chirp, noise_burst, tone, write_tone
from anybind.testing_video import BLUE, RED, write_video

SMALL = {"dim": 16, "image_channels": (8, 8, 8, 8), "audio_channels": (8, 8, 8, 8), "text_hidden": 16}
TEXTS = ["a violin", "a trumpet on a table", "the sound of a helicopter " * 5]


def save_small(directory: Path, seed: int = 0, **changes: object) -> Path:
    """A randomly initialised small anybind-mini saved with plugins/mini/weights.save."""
    torch.manual_seed(seed)
    return weights.save(MiniModel(MiniConfig(**{**SMALL, **changes})), directory, {"note": "test"})


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_small(tmp_path_factory.mktemp("mini") / "small")


@pytest.fixture(scope="module")
def small_space(small_dir: Path, builtin_plugins: anybind.PluginHost) -> anybind.Space:
    return anybind.load_space(f"mini:{small_dir}", device="cpu", host=builtin_plugins)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    return [make_image(root / f"{n}.png", n, size=(40 + 12 * n, 64)) for n in range(3)]


def clips() -> list[AudioClip]:
    return [
        AudioClip(tone(440, 0.6), 16000),
        AudioClip(chirp(200, 4000, 2.5), 16000, start=3.0),  # longer than the 2 s window: centre-cropped
        AudioClip(noise_burst(0.8, burst=(0.1, 0.5), seed=3), 16000),
    ]


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (n, dim) and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_the_preset_loads_the_shipped_weights(builtin_plugins: anybind.PluginHost, images: list[Path]) -> None:
    space = anybind.load_space(DEFAULT_SPACE, device="cpu", host=builtin_plugins)
    config = MiniConfig.from_dict(weights.read_info(weights.BUILTIN)["config"])
    assert space.dim == config.dim
    assert {"image", "text", "audio", "video"} <= set(space.modalities)
    assert_unit_rows(space.embed("image", images), 3, config.dim)
    assert_unit_rows(space.embed("text", TEXTS[:2]), 2, config.dim)
    assert_unit_rows(space.embed("audio", clips()), 3, config.dim)
    assert space.fingerprint == anybind.load_space("mini:builtin", device="cpu", host=builtin_plugins).fingerprint


def test_every_tower_gives_unit_float32_vectors(small_space: anybind.Space, images: list[Path], tmp_path: Path) -> None:
    assert small_space.dim == 16
    assert_unit_rows(small_space.embed("image", [*images, Image.open(images[0]).convert("RGBA")]), 4, 16)
    assert_unit_rows(small_space.embed("text", TEXTS), 3, 16)
    assert_unit_rows(small_space.embed("audio", clips()), 3, 16)
    flac = write_tone(tmp_path / "tone.flac", 660, 3.5)  # a file: two 2 s windows, pooled
    assert_unit_rows(small_space.embed("audio", [flac]), 1, 16)
    segments = small_space.embed_segments("audio", flac)
    assert segments.error is None and segments.vectors is not None and segments.starts == [0.0, 2.0]
    assert_unit_rows(segments.vectors, 2, 16)


def test_a_video_goes_through_the_image_tower(small_space: anybind.Space, tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4", [RED, RED, BLUE, BLUE, BLUE], fps=5, size=(64, 48))
    assert_unit_rows(small_space.embed("video", [video]), 1, 16)
    segments = small_space.embed_segments("video", video)
    assert segments.error is None and segments.vectors is not None
    assert_unit_rows(segments.vectors, len(segments.starts), 16)
    assert segments.starts[0] == 0.0 and len(segments.starts) >= 2
    # a still segment is the image tower's vector of its frame (the pooled mean of identical frames)
    red = Image.new("RGB", (64, 48), RED)
    np.testing.assert_allclose(segments.vectors[0], small_space.embed("image", [red])[0], atol=0.02)


def test_vectors_do_not_depend_on_the_batch(small_dir: Path, images: list[Path]) -> None:
    encoder = MiniEncoder(str(small_dir), anybind.EncoderOptions(anybind.resolve_device("cpu")))
    pictures = [Image.open(p).convert("RGB") for p in images]
    for tower, batch in (("image", pictures), ("text", TEXTS), ("audio", clips())):
        together = encoder.embed(tower, batch)
        alone = np.concatenate([encoder.embed(tower, [item]) for item in batch])
        np.testing.assert_allclose(together, alone, atol=1e-5, err_msg=tower)
        np.testing.assert_allclose(encoder.embed(tower, batch[::-1]), together[::-1], atol=1e-5, err_msg=tower)


def test_bad_audio_values_are_typed_errors(small_dir: Path) -> None:
    encoder = MiniEncoder(str(small_dir), anybind.EncoderOptions(anybind.resolve_device("cpu")))
    empty = AudioClip(np.zeros(0, np.float32), 16000, start=1.5)
    with pytest.raises(DecodeError, match=r"^<AudioClip at 1\.500 s>: empty audio clip \(0 samples\)$"):
        encoder.embed("audio", [empty])
    with pytest.raises(DecodeError, match=r"^<ndarray>: the mini audio tower embeds anybind\.segments\.AudioClip"):
        encoder.embed("audio", [np.zeros(16000, np.float32)])


def test_minilm_equals_sentence_transformers() -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm.model_dir()), device="cpu")
    texts = [*TEXTS, "x", "A much longer sentence " * 80]  # the last one is truncated at 256 tokens
    expected = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    ours = minilm.MiniLM("cpu").embed(texts, batch_size=2)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), minilm.MiniLM.width)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_the_encoder_id_follows_the_weights(tmp_path: Path, builtin_plugins: anybind.PluginHost) -> None:
    directory = save_small(tmp_path / "w", seed=1)

    def load() -> anybind.Space:
        return anybind.load_space(f"mini:{directory}", device="cpu", host=builtin_plugins)

    first = load()
    moved = shutil.copytree(directory, tmp_path / "moved")
    assert anybind.load_space(f"mini:{moved}", device="cpu", host=builtin_plugins).fingerprint == first.fingerprint
    save_small(directory, seed=2)
    second = load()
    assert second.fingerprint != first.fingerprint
    assert first.describe() != second.describe()


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("missing", r"has no mini\.safetensors \+ mini\.json"),
        ("not-json", r"mini\.json: not valid JSON"),
        ("wrong-format", r"mini\.json: not an anybind-mini config"),
        ("pickle", r"mini\.safetensors: cannot read safetensors weights"),
        ("truncated", r"mini\.safetensors: cannot read safetensors weights"),
        ("other-widths", r"mini\.safetensors does not match .*mini\.json"),
        ("other-dim", r"mini\.safetensors does not match .*mini\.json"),
    ],
)
def test_load_errors_are_typed_and_name_the_file(
    tmp_path: Path, builtin_plugins: anybind.PluginHost, case: str, pattern: str
) -> None:
    directory = tmp_path / case
    if case == "missing":
        directory.mkdir()
    else:
        save_small(directory)
    config, tensors = directory / weights.CONFIG, directory / weights.WEIGHTS
    if case == "not-json":
        config.write_text('{"format": "anybind-mini/1", ')
    elif case == "wrong-format":
        config.write_text(json.dumps({**json.loads(config.read_text()), "format": "anybind-mini/99"}))
    elif case == "pickle":
        tensors.write_bytes(pickle.dumps({"image.proj.weight": np.zeros((16, 8), np.float32)}))
    elif case == "truncated":
        data = tensors.read_bytes()
        tensors.write_bytes(data[: len(data) // 2])
    elif case in ("other-widths", "other-dim"):  # weights saved with other shapes than mini.json says
        other = {"image_channels": (16, 16, 16, 16)} if case == "other-widths" else {"dim": 8}
        save_small(tmp_path / "other", **other)
        shutil.copyfile(tmp_path / "other" / weights.WEIGHTS, tensors)
    with pytest.raises(ModelLoadError, match=pattern) as caught:
        anybind.load_space(f"mini:{directory}", device="cpu", host=builtin_plugins)
    assert str(directory) in str(caught.value)


# -- the default space of a new store -----------------------------------------------------------------------------


def test_a_new_store_without_a_space_uses_anybind_mini(tmp_path: Path, builtin_plugins: anybind.PluginHost) -> None:
    preset = anybind.load_space(DEFAULT_SPACE, device="cpu", host=builtin_plugins)
    with anybind.Store.open(tmp_path / "db", device="cpu") as store:
        assert store.manifest.space.fingerprint == preset.fingerprint
    with anybind.Store.open(tmp_path / "db") as store:  # reopened without a space: its own
        assert store.info()["space"]["fingerprint"] == preset.fingerprint


def test_an_existing_store_keeps_its_own_space(tmp_path: Path, clip_space: anybind.Space) -> None:
    anybind.Store.open(tmp_path / "db", space=clip_space, device="cpu").close()
    with anybind.Store.open(tmp_path / "db", device="cpu") as store:
        assert store.space.fingerprint == clip_space.fingerprint


def test_without_the_mini_plugin_a_new_store_still_needs_a_space(tmp_path: Path) -> None:
    host = anybind.PluginHost(allow={"anybind"}, block=["mini"])
    host.load_entry_points()
    with pytest.raises(StoreError, match=r"needs a space.*'anybind-mini'.*--space") as caught:
        anybind.Store.open(tmp_path / "new", host=host)
    assert str(tmp_path / "new") in str(caught.value)
    assert not (tmp_path / "new").exists()


def test_cli_index_without_space_creates_an_anybind_mini_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, images: list[Path]
) -> None:
    monkeypatch.delenv("ANYBIND_SPACE", raising=False)
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(images[0], folder / "a.png")
    (folder / "caption.txt").write_text("a violin on a table\n")
    code = main(["index", str(folder), "--db", str(tmp_path / "db"), "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    code = main(["info", "--db", str(tmp_path / "db"), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["space"]["name"] == "mini:builtin" and info["items"] == 2
    monkeypatch.setenv("ANYBIND_LOAD_PLUGINS", "image,text")
    code = main(["index", str(folder), "--db", str(tmp_path / "db2"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a space" in err and "anybind-mini" in err and "Traceback" not in err
