"""Spaces over tiny CLIP and SigLIP checkpoints: shapes, norms, determinism, routes, fingerprints, errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

import anybind
from anybind import Modality, SpaceConfig, hookimpl
from anybind.errors import ItemError, ModelLoadError, SpaceError, UnknownNameError
from anybind.testing import build_tiny_clip

TEXTS = ["a photo of a dog", "a red car on the road", "a violin and a piano"]


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(30 + i, 40, 3), dtype=np.uint8) for i in range(n)]


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_image_and_text_share_one_normalised_space(family, tiny_clip_dir, tiny_siglip_dir):
    directory = tiny_clip_dir if family == "clip" else tiny_siglip_dir
    space = anybind.load_space(f"{family}:{directory}", device="cpu", batch_size=2)
    dim = 16 if family == "clip" else 32
    assert space.dim == dim
    assert space.modalities == ["image", "text", "video"]  # video frames go through the image tower
    assert_unit_rows(space.embed("text", TEXTS), 3, dim)
    assert_unit_rows(space.embed("image", images(5)), 5, dim)  # 3 batches of <= 2
    assert not np.allclose(space.embed("text", TEXTS[:1]), space.embed("text", TEXTS[1:2]))


def test_matches_the_model_computed_by_hand(tiny_clip_dir, clip_space):
    """The space uses the checkpoint's own processor and projection: same numbers as transformers."""
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_clip_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    pictures = [Image.fromarray(a) for a in images(2)]
    with torch.inference_mode():
        image = model.get_image_features(pixel_values=processor(images=pictures, return_tensors="pt")["pixel_values"])
        text = model.get_text_features(**tokenizer(TEXTS, padding=True, return_tensors="pt"))
    image = torch.nn.functional.normalize(image.pooler_output, dim=-1).numpy()
    text = torch.nn.functional.normalize(text.pooler_output, dim=-1).numpy()
    np.testing.assert_allclose(clip_space.embed("image", pictures), image, atol=1e-5)
    np.testing.assert_allclose(clip_space.embed("text", TEXTS), text, atol=1e-5)


def test_deterministic_across_calls_batches_and_reloads(tiny_clip_dir, clip_space):
    first = clip_space.embed("text", TEXTS)
    np.testing.assert_array_equal(first, clip_space.embed("text", TEXTS))
    one_by_one = anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu", batch_size=1)
    np.testing.assert_allclose(one_by_one.embed("text", TEXTS), first, atol=1e-5)
    np.testing.assert_allclose(one_by_one.embed("image", images(3)), clip_space.embed("image", images(3)), atol=1e-5)


def test_long_text_is_truncated_deterministically(clip_space):
    long = "a photo of a dog " * 200
    vectors = clip_space.embed("text", [long, long])
    assert_unit_rows(vectors, 2, 16)
    np.testing.assert_array_equal(vectors[0], vectors[1])
    # the model sees only its context: text past the limit changes nothing
    np.testing.assert_allclose(clip_space.embed("text", [long + " red car"]), vectors[:1], atol=1e-6)


def test_single_string_is_one_item(clip_space):
    assert clip_space.embed("text", "a dog").shape == (1, 16)


def test_try_embed_keeps_the_rest_of_the_batch(clip_space, image_files):
    items = [image_files["good"], image_files["corrupt"], image_files["empty"], image_files["good2"], 42]
    result = clip_space.try_embed("image", items)
    assert result.indices == [0, 3]
    assert_unit_rows(result.vectors, 2, 16)
    np.testing.assert_allclose(result.vectors, clip_space.embed("image", [items[0], items[3]]), atol=1e-6)
    assert [e.source for e in result.errors] == [str(image_files["corrupt"]), str(image_files["empty"]), "<int>"]
    assert all(isinstance(e, ItemError) for e in result.errors)
    with pytest.raises(ItemError, match=r"broken\.png"):
        clip_space.embed("image", items[:2])


def test_all_bad_gives_an_empty_result(clip_space, image_files):
    result = clip_space.try_embed("image", [image_files["empty"]])
    assert result.vectors.shape == (0, 16) and result.indices == [] and len(result.errors) == 1


def test_fingerprint_is_stable_and_tracks_weights(tiny_clip_dir, clip_space, tmp_path):
    again = anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu")
    assert again.fingerprint == clip_space.fingerprint
    assert clip_space.fingerprint.startswith("anybind1:")
    moved = shutil.copytree(tiny_clip_dir, tmp_path / "moved")
    (moved / "README.md").write_text("notes that do not change the vectors")
    assert anybind.load_space(f"clip:{moved}", device="cpu").fingerprint == clip_space.fingerprint
    other = build_tiny_clip(tmp_path / "other", seed=1)
    assert anybind.load_space(f"clip:{other}", device="cpu").fingerprint != clip_space.fingerprint
    description = clip_space.describe()
    assert description["dim"] == 16
    assert set(description["routes"]) == {"image", "text"}


def test_unknown_modality_lists_the_known_ones(clip_space):
    with pytest.raises(UnknownNameError, match="unknown modality 'speech'; available: audio, image, text, video"):
        clip_space.embed("speech", ["x.wav"])


def test_plugin_modality_embeds_through_the_image_tower(tiny_clip_dir, host):
    class Negative:
        @hookimpl
        def anybind_modalities(self, register):
            register(Modality("negative", decode=lambda a: Image.fromarray(255 - a), embeds_as="image"))

    host.add_plugin(Negative(), "negative")
    space = anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu", host=host)
    assert space.modalities == ["image", "negative", "text", "video"]
    picture = images(1)[0]
    np.testing.assert_allclose(space.embed("negative", [picture]), space.embed("image", [255 - picture]), atol=1e-6)


def test_modality_without_a_route_says_how_to_add_one(tiny_clip_dir, host):
    class Smell:
        @hookimpl
        def anybind_modalities(self, register):
            register(Modality("smell", decode=lambda a: a))

    host.add_plugin(Smell(), "smell")
    space = anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu", host=host)
    with pytest.raises(SpaceError, match=r"cannot embed modality 'smell'.*\[modalities.smell\]"):
        space.embed("smell", [b"..."])
    with pytest.raises(SpaceError, match=r"cannot embed modality 'audio' \(it goes through the 'audio' tower"):
        space.embed("audio", [b"..."])  # the built-in audio modality needs an audio encoder and a binding


def test_space_file_and_preset(tiny_clip_dir, tmp_path, host, clip_space):
    shutil.copytree(tiny_clip_dir, tmp_path / "models" / "clip")
    space_file = tmp_path / "photos.toml"
    space_file.write_text(
        'name = "photos"\nanchor = "clip:./models/clip"\n\n'
        '[modalities.text]\nencoder = "anchor"\nbinding = "identity"\n'
    )
    space = anybind.load_space(space_file, device="cpu", host=host)
    assert space.name == "photos"
    assert space.fingerprint == clip_space.fingerprint

    class Preset:
        @hookimpl
        def anybind_spaces(self, register):
            register("my-photos", str(space_file), description="photo search")

    host.add_plugin(Preset(), "preset")
    assert anybind.load_space("my-photos", device="cpu", host=host).fingerprint == clip_space.fingerprint


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('anchor = "clip:x"\ncolour = 1\n', "colour: Extra inputs are not permitted"),
        ("anchor = \n", "not valid TOML"),
        ("name = 'x'\n", "anchor: Field required"),
        ('anchor = "clip:x"\n[modalities.text]\nbinding = "learned.safetensors"\n', None),
    ],
)
def test_bad_space_files_name_the_file_and_field(tmp_path, content, message, host, tiny_clip_dir):
    path = tmp_path / "bad.toml"
    content = content.replace("clip:x", f"clip:{tiny_clip_dir}")
    path.write_text(content)
    with pytest.raises(SpaceError) as info:
        anybind.load_space(path, device="cpu", host=host)
    if message is None:
        assert str(info.value).startswith(f"{tmp_path / 'learned.safetensors'}: no such binding file")
    else:
        assert str(path) in str(info.value) and message in str(info.value)


def test_unknown_encoder_and_space_names(host):
    with pytest.raises(UnknownNameError, match="unknown encoder 'clop'; available: clap, clip, mini, siglip"):
        anybind.load_space("clop:laion/clap", host=host)
    with pytest.raises(
        UnknownNameError, match=r"unknown space 'nothing'.*ENCODER:REF with an encoder from: clap, clip, mini, siglip"
    ):
        anybind.load_space("nothing", host=host)


def test_model_errors_are_clear(tiny_clip_dir, tiny_siglip_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="holds a 'siglip' model, not a clip model"):
        anybind.load_space(f"clip:{tiny_siglip_dir}", device="cpu")
    with pytest.raises(ModelLoadError, match="no local directory of that name exists"):
        anybind.load_space("clip:nobody/no-such-model", device="cpu")
    pickled = shutil.copytree(tiny_clip_dir, tmp_path / "pickled")
    model = CLIPModel.from_pretrained(pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin is refused"):
        anybind.load_space(f"clip:{pickled}", device="cpu")


def test_space_config_object_and_bad_options(tiny_clip_dir):
    space = anybind.load_space(SpaceConfig(anchor=f"clip:{tiny_clip_dir}"), device="cpu")
    assert space.dim == 16
    with pytest.raises(SpaceError, match="batch_size must be at least 1"):
        anybind.load_space(f"clip:{tiny_clip_dir}", batch_size=0)
    with pytest.raises(anybind.AnybindError, match="unknown device 'tpu'"):
        anybind.load_space(f"clip:{tiny_clip_dir}", device="tpu")


def test_devices(monkeypatch):
    assert anybind.resolve_device("cpu") == anybind.Device("cpu", "float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert anybind.resolve_device("auto").name == "cpu"
    with pytest.raises(anybind.AnybindError, match="no CUDA GPU"):
        anybind.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert anybind.resolve_device("auto") == anybind.Device("cuda", "float16")
    with pytest.raises(anybind.AnybindError, match="only 1 GPU"):
        anybind.resolve_device("cuda:3")


@pytest.mark.gpu
def test_cuda_fp16_matches_cpu(tiny_clip_dir, clip_space):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    gpu = anybind.load_space(f"clip:{tiny_clip_dir}", device="cuda")
    vectors = gpu.embed("text", TEXTS)
    assert_unit_rows(vectors, 3, 16)
    np.testing.assert_allclose(vectors, clip_space.embed("text", TEXTS), atol=2e-2)


def test_factory_returning_a_non_encoder_is_named(host):
    class Junk:
        @hookimpl
        def anybind_encoders(self, register):
            register("junk", lambda ref, options: None)

    host.add_plugin(Junk(), "junk-plugin")
    with pytest.raises(ModelLoadError, match=r"encoder 'junk' \(plugin 'junk-plugin'\) returned None"):
        anybind.load_space("junk:x", device="cpu", host=host)


def test_bytes_like_single_items_and_failed_positions(clip_space, image_files):
    data = bytearray(image_files["good"].read_bytes())
    assert clip_space.embed("image", data).shape == (1, 16)
    result = clip_space.try_embed("image", [b"bad", image_files["good"], b"", b"worse"])
    assert result.indices == [1] and result.failed == [0, 2, 3]
    assert [e.source for e in result.errors] == ["<3 bytes>", "<0 bytes>", "<5 bytes>"]


def test_a_sniffer_that_raises_counts_as_no(image_files):
    def broken(head):
        raise RuntimeError("bad sniffer")

    modalities = [Modality("weird", decode=bytes, sniff=broken), anybind.get_host().modalities.get("image")]
    assert anybind.detect(image_files["good"], modalities).name == "image"


HUB_CHECK = """
import anybind
space = anybind.load_space("clip:tiny-org/tiny-clip", device="cpu")
print(space.anchor.id)
print(space.embed("text", ["a dog"]).shape)
"""


def test_hub_checkpoint_is_identified_by_its_snapshot_commit(tiny_clip_dir, tmp_path):
    """A hub id resolves offline through the HF cache; the fingerprint names the snapshot's commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-clip"
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", HUB_CHECK], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"clip:tiny-org/tiny-clip@{commit}", "(1,", "16)"]
