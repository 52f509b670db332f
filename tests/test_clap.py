"""The ``clap:`` encoder on tiny CLAP checkpoints: loading, vectors equal to transformers', determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from transformers import AutoFeatureExtractor, AutoTokenizer, ClapModel

import anybind
from anybind.errors import DecodeError, ModelLoadError, SpaceError
from anybind.plugins.clap import ClapEncoder
from anybind.segments import AudioClip
from anybind.testing_audio import build_tiny_clap, chirp, noise_burst, tone

OPTIONS = anybind.EncoderOptions(anybind.resolve_device("cpu"))
TEXTS = ["a photo of a dog", "a violin and a piano", "a red car on the road " * 6]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clap(tmp_path_factory.mktemp("models") / "tiny-clap")


@pytest.fixture(scope="module")
def encoder(clap_dir: Path) -> ClapEncoder:
    return ClapEncoder(str(clap_dir), OPTIONS)


@pytest.fixture(scope="module")
def reference(clap_dir: Path):
    """The checkpoint loaded with plain transformers: what the encoder must agree with."""
    model = ClapModel.from_pretrained(clap_dir).eval()
    return model, AutoFeatureExtractor.from_pretrained(clap_dir), AutoTokenizer.from_pretrained(clap_dir)


def clips() -> list[AudioClip]:
    return [
        AudioClip(tone(440, 0.6), 16000),
        AudioClip(chirp(200, 4000, 1.0), 16000, start=3.0),
        AudioClip(noise_burst(0.8, burst=(0.1, 0.5), seed=3), 16000),
    ]


def test_identity_and_shape(encoder: ClapEncoder) -> None:
    assert isinstance(encoder, anybind.Encoder)
    assert encoder.dim == 24 and encoder.towers == frozenset({"audio", "text"})
    assert encoder.id.startswith("clap@sha256:") and len(encoder.id) == len("clap@sha256:") + 16
    assert encoder.inputs == {"audio": {"sample_rate": 16000, "window": 1.0}}
    assert encoder.max_text_tokens == 16


def test_audio_vectors_equal_transformers(encoder: ClapEncoder, reference) -> None:
    model, extractor, _ = reference
    batch = clips()
    inputs = extractor([c.samples for c in batch], sampling_rate=16000, truncation="rand_trunc", return_tensors="pt")
    with torch.inference_mode():
        expected = model.get_audio_features(**inputs).pooler_output.numpy()
    vectors = encoder.embed("audio", batch)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 24)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-2  # different sounds, different vectors


def test_text_vectors_equal_transformers(encoder: ClapEncoder, reference) -> None:
    model, _, tokenizer = reference
    tokens = tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode():
        expected = model.get_text_features(**tokens).pooler_output.numpy()
    vectors = encoder.embed("text", TEXTS)  # the long third text is truncated, not an error
    assert vectors.shape == (3, 24)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_embedding_is_deterministic_across_calls_and_batches(encoder: ClapEncoder) -> None:
    batch = clips()
    together = encoder.embed("audio", batch)
    one_by_one = np.concatenate([encoder.embed("audio", [clip]) for clip in batch])
    reversed_order = encoder.embed("audio", batch[::-1])[::-1]
    np.testing.assert_allclose(one_by_one, together, atol=1e-6)
    np.testing.assert_allclose(reversed_order, together, atol=1e-6)
    np.testing.assert_array_equal(encoder.embed("audio", batch), together)
    texts = np.concatenate([encoder.embed("text", [t]) for t in TEXTS])
    np.testing.assert_allclose(texts, encoder.embed("text", TEXTS), atol=1e-6)


def test_clips_at_another_rate_are_resampled(encoder: ClapEncoder) -> None:
    at_8k = AudioClip(chirp(100, 3000, 0.9, rate=8000), 8000)
    by_hand = torchaudio.functional.resample(torch.from_numpy(at_8k.samples), 8000, 16000).numpy()
    expected = encoder.embed("audio", [AudioClip(np.clip(by_hand, -1, 1), 16000)])
    np.testing.assert_allclose(encoder.embed("audio", [at_8k]), expected, atol=1e-6)
    as_if_16k = encoder.embed("audio", [AudioClip(at_8k.samples, 16000)])  # the same samples, misread
    assert np.abs(as_if_16k - expected).max() > 1e-3


def test_a_clip_longer_than_the_window_is_centre_cropped(encoder: ClapEncoder) -> None:
    long = chirp(100, 6000, 1.5)  # 24000 samples; the window holds 16000
    centre = encoder.embed("audio", [AudioClip(long[4000:20000], 16000)])
    np.testing.assert_allclose(encoder.embed("audio", [AudioClip(long, 16000)]), centre, atol=1e-6)


def test_fused_checkpoints_are_deterministic(tmp_path: Path) -> None:
    fused = ClapEncoder(str(build_tiny_clap(tmp_path / "fused", fused=True)), OPTIONS)
    assert fused.fused and fused.truncation == "fusion"
    short = [AudioClip(tone(440, 0.5), 16000), AudioClip(chirp(300, 900, 0.7), 16000)]
    long = AudioClip(chirp(100, 6000, 1.6), 16000)
    # The extractor marks a random short clip "longer" (the fusion branch) when no clip is: not here.
    features, is_longer = fused.audio_features([*short, long])
    assert is_longer[:, 0].tolist() == [False, False, True] and features.shape == (3, 4, 101, 64)
    alone = np.concatenate([fused.embed("audio", [clip]) for clip in [*short, long]])
    np.testing.assert_allclose(fused.embed("audio", [*short, long]), alone, atol=1e-6)
    np.testing.assert_allclose(fused.embed("audio", [long, short[0]]), alone[[2, 0]], atol=1e-6)
    state = np.random.get_state()[1].copy()
    fused.embed("audio", [long])
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the global RNG is left as it was


def test_bad_inputs(encoder: ClapEncoder) -> None:
    with pytest.raises(DecodeError, match=r"^<AudioClip at 2\.500 s>: empty audio clip \(0 samples\)$"):
        encoder.embed("audio", [AudioClip(np.zeros(0, np.float32), 16000, start=2.5)])
    with pytest.raises(DecodeError, match=r"^<ndarray>: the clap audio tower embeds anybind\.segments\.AudioClip"):
        encoder.embed("audio", [np.zeros(100, np.float32)])
    with pytest.raises(ValueError, match=r"clap has no 'image' tower; it embeds \['audio', 'text'\]"):
        encoder.embed("image", [])


def test_load_errors_name_the_checkpoint(tiny_clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        ClapEncoder(str(tiny_clip_dir), OPTIONS)
    assert str(info.value) == (
        f"local directory {str(tiny_clip_dir)!r} holds a 'clip' model, not a clap model; use the encoder that "
        "matches it (clip: for 'clip', siglip: for 'siglip')"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=rf"cannot load model config from local directory '{empty}'"):
        ClapEncoder(str(empty), OPTIONS)


def test_a_mismatched_feature_extractor_is_refused(clap_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = Path(shutil.copytree(clap_dir, tmp_path / "broken"))
    extractor = AutoFeatureExtractor.from_pretrained(clap_dir)
    extractor.__class__(feature_size=32, sampling_rate=16000, max_length_s=1, frequency_max=8000).save_pretrained(
        broken
    )
    with pytest.raises(ModelLoadError, match=r"makes 32 mel bins but the audio model takes 16"):
        ClapEncoder(str(broken), OPTIONS)


def test_registered_and_routed_through_a_space(clap_dir: Path, tiny_clip_dir: Path, host: anybind.PluginHost) -> None:
    assert host.encoders.entry("clap").plugin == "clap"
    encoder = host.encoders.get("clap")(str(clap_dir), OPTIONS)
    np.testing.assert_allclose(
        encoder.embed("text", TEXTS[:1]), ClapEncoder(str(clap_dir), OPTIONS).embed("text", TEXTS[:1])
    )
    # CLAP is not the anchor: without a binding it is refused, whatever the widths
    config = anybind.SpaceConfig(
        anchor=f"clip:{tiny_clip_dir}", modalities={"audio": anybind.RouteConfig(encoder=f"clap:{clap_dir}")}
    )
    with pytest.raises(SpaceError, match=r"is not the anchor, so its vectors are not in the anchor's space"):
        anybind.load_space(config, device="cpu", host=host)
    # an explicit identity is taken at its word, but CLAP (24-d) into a tiny CLIP space (16-d) cannot be one
    route = anybind.RouteConfig(encoder=f"clap:{clap_dir}", binding="identity")
    config = anybind.SpaceConfig(anchor=f"clip:{tiny_clip_dir}", modalities={"audio": route})
    with pytest.raises(SpaceError, match=r"gives 24-d vectors but the anchor space is 16-d"):
        anybind.load_space(config, device="cpu", host=host)
