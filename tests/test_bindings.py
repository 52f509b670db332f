"""Learned bindings: the trainer recovers known maps, bridges work from text alone, files round-trip and refuse
every kind of damage with a SpaceError naming the file, and a space applies a learned binding."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_safetensors

import anybind
from anybind.bindings import (
    IdentityBinding,
    LearnedBinding,
    TrainingError,
    binding_paths,
    load_binding,
    read_binding,
    retrieval_recall,
    save_binding,
    train_binding,
    train_bridge,
)
from anybind.errors import EmbeddingError, SpaceError


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def related(n: int, source_dim: int, target_dim: int, seed: int, noise: float = 0.02):
    """Random unit sources, a known map R, and targets normalise(source @ R + noise)."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((source_dim, target_dim))
    if source_dim == target_dim:
        r, _ = np.linalg.qr(r)  # a rotation
    source = unit(rng.standard_normal((n, source_dim)))
    target = unit(source @ r + noise * rng.standard_normal((n, target_dim)))
    return source, target, r, rng


def small_binding(seed: int = 0, kind: str = "linear", info: dict | None = None) -> LearnedBinding:
    rng = np.random.default_rng(seed)
    tensors = {"linear.weight": rng.standard_normal((16, 24)), "linear.bias": rng.standard_normal(16)}
    if kind == "mlp":
        tensors |= {
            "hidden.weight": rng.standard_normal((32, 24)),
            "hidden.bias": rng.standard_normal(32),
            "out.weight": rng.standard_normal((16, 32)),
            "out.bias": rng.standard_normal(16),
        }
    return LearnedBinding(kind, {k: v.astype(np.float32) for k, v in tensors.items()}, info or {"source": "s"})


# -- training -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "source_dim", "target_dim"), [("linear", 24, 16), ("linear", 24, 24), ("mlp", 24, 16)]
)
def test_trainer_recovers_a_known_map(kind, source_dim, target_dim):
    source, target, r, rng = related(2000, source_dim, target_dim, seed=1)
    binding, report = train_binding(source, target, kind=kind, info={"source": "enc-a", "anchor": "enc-b"})
    assert (report["pairs"], report["train"], report["held_out"], report["recall_among"]) == (2000, 1600, 400, 400)
    assert report["recall"]["r@1"] >= 0.95 and report["recall"]["r@10"] >= report["recall"]["r@1"]
    assert (binding.kind, binding.source_dim, binding.target_dim) == (kind, source_dim, target_dim)
    # fresh vectors the trainer never saw land on their true targets, and retrieve them among each other
    fresh = unit(rng.standard_normal((500, source_dim)))
    truth = unit(fresh @ r)
    bound = unit(binding.apply(fresh))
    assert np.einsum("ij,ij->i", bound, truth).min() > 0.99
    assert retrieval_recall(bound, truth)["r@1"] >= 0.95
    # the report is recorded in the binding's info next to what the caller gave
    assert binding.info["source"] == "enc-a" and binding.info["anchor"] == "enc-b"
    assert binding.info["held_out_recall"] == report["recall"]
    assert binding.info["training"]["held_out"] == 400 and binding.info["training"]["temperature"] == 0.05
    assert binding.info["created"].endswith("+00:00")
    # best epoch kept, stopped after `patience` epochs without a better held-out score
    assert report["stopped_early"] and report["epochs_run"] == report["best_epoch"] + 10


def test_mlp_learns_what_a_linear_map_cannot():
    """Targets depend on |source @ A| (even in the source): a linear map retrieves nothing, the MLP learns it."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((8, 32)), rng.standard_normal((32, 8))
    source = unit(rng.standard_normal((2000, 8)))
    target = unit(np.abs(source @ a) @ b + 0.2 * rng.standard_normal((2000, 8)))
    _, linear = train_binding(source, target, kind="linear", lr=3e-3, epochs=10)
    mlp, report = train_binding(source, target, kind="mlp", hidden=64, lr=3e-3)
    assert linear["recall"]["r@1"] < 0.05
    assert report["recall"]["r@1"] > 0.3 and report["recall"]["r@10"] > 0.8
    assert report["best_epoch"] > 0  # the InfoNCE epochs, not the warm start, made the difference
    assert mlp.hidden == 64 and set(mlp.tensors) >= {"hidden.weight", "out.weight"}


def test_training_is_deterministic_for_a_seed_and_reports_progress():
    source, target, _, _ = related(300, 12, 10, seed=2, noise=0.3)
    seen = []
    one, report = train_binding(source, target, kind="mlp", epochs=6, progress=lambda *a: seen.append(a))
    two, _ = train_binding(source, target, kind="mlp", epochs=6)
    other, _ = train_binding(source, target, kind="mlp", epochs=6, seed=1)
    assert one.id == two.id and one.id.startswith("mlp@")
    np.testing.assert_array_equal(one.apply(source), two.apply(source))
    assert other.id != one.id
    assert [(epoch, total) for epoch, total, _ in seen] == [(e, 6) for e in range(1, report["epochs_run"] + 1)]
    assert {"loss", "held_out_loss", "mrr", "r@1", "r@5", "r@10"} <= set(seen[0][2])


def test_recall_ranks_among_a_capped_seeded_sample_of_held_out_pairs(monkeypatch):
    source, target, _, _ = related(300, 12, 10, seed=2, noise=0.5)
    _, full = train_binding(source, target, epochs=2)
    monkeypatch.setattr("anybind.bindings.train.MAX_RECALL_PAIRS", 20)
    _, capped = train_binding(source, target, epochs=2)
    assert (full["held_out"], full["recall_among"], capped["held_out"], capped["recall_among"]) == (60, 60, 60, 20)
    assert capped["recall"]["r@1"] > full["recall"]["r@1"]  # fewer candidates, easier to be first


def test_without_a_holdout_every_epoch_runs_and_no_recall_is_claimed():
    source, target, _, _ = related(40, 6, 4, seed=3)
    binding, report = train_binding(source, target, holdout=0, epochs=7)
    assert report["recall"] is None and binding.info["held_out_recall"] is None
    assert (report["train"], report["held_out"], report["epochs_run"], report["best_epoch"]) == (40, 0, 7, 7)


def test_trainer_rejects_unusable_data_with_clear_errors():
    source, target, _, _ = related(20, 6, 4, seed=4)
    with pytest.raises(TrainingError, match="7 pairs are too few to train a binding; at least 8 are needed"):
        train_binding(source[:7], target[:7])
    with pytest.raises(TrainingError, match="20 source vectors but 19 target vectors"):
        train_binding(source, target[:19])
    with pytest.raises(TrainingError, match=r"target vectors must be a 2-d \(pairs, dim\) array, got shape \(20,\)"):
        train_binding(source, target[:, 0])
    bad = source.copy()
    bad[5, 2] = np.nan
    bad[9, 0] = np.inf
    with pytest.raises(TrainingError, match=r"source row 5 holds NaN or infinite values \(and 1 more\)"):
        train_binding(bad, target)
    zero = target.copy()
    zero[3] = 0
    with pytest.raises(TrainingError, match="target row 3 is an all-zero vector"):
        train_binding(source, zero)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "conv"}, "unknown binding kind 'conv'; choose one of linear, mlp"),
        ({"hidden": 8}, "hidden size \\(8\\) applies to mlp bindings only"),
        ({"temperature": 0}, "temperature must be positive, got 0"),
        ({"holdout": 1.0}, "holdout must be in \\[0, 1\\), got 1.0"),
        ({"lr": float("nan")}, "lr must be positive, got nan"),
        ({"batch_size": 1}, "batch_size must be at least 2, got 1"),
        ({"holdout": 0.95}, "holdout 0.95 of 20 pairs leaves 1 to train on; hold out less"),
    ],
)
def test_trainer_rejects_bad_settings(settings, message):
    source, target, _, _ = related(20, 6, 4, seed=5)
    with pytest.raises(TrainingError, match=message):
        train_binding(source, target, **settings)


def test_bridge_learned_from_captions_alone_carries_over_to_audio():
    """Fake CLAP-text and CLIP-text vectors related by M; audio sits near its caption's CLAP-text vector."""
    rng = np.random.default_rng(6)
    m = rng.standard_normal((20, 16))
    clap_text = unit(rng.standard_normal((600, 20)))
    clip_text = unit(clap_text @ m + 0.02 * rng.standard_normal((600, 16)))
    audio = unit(clap_text + 0.1 * rng.standard_normal((600, 20)))  # never seen in training
    bridge, report = train_bridge(clap_text, clip_text, applies_to="audio", info={"source": "clap@sha256:abc"})
    assert report["recall"]["r@1"] >= 0.95
    bound = unit(bridge.apply(audio))
    assert np.einsum("ij,ij->i", bound, unit(audio @ m)).min() > 0.99
    assert retrieval_recall(bound, clip_text)["r@1"] >= 0.9  # each sound finds its caption's CLIP-text vector
    assert bridge.info["bridge"] == "text" and bridge.info["applies_to"] == "audio"
    assert bridge.info["source"] == "clap@sha256:abc" and bridge.info["source_tower"] == "text"


def test_retrieval_recall_ties_count_for_the_query():
    gallery = unit(np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32))
    queries = unit(np.array([[1, 0.1, 0], [0, 1, 0.2], [1, 0, 0.1], [0.9, 0, 0.5]], dtype=np.float32))
    # rows 0 and 2 are the same photo: queries 0 and 2 tie with it and still count as right; query 3 ranks third
    assert retrieval_recall(queries, gallery, ks=(1, 2, 3)) == {"r@1": 0.75, "r@2": 0.75, "r@3": 1.0}


# -- the head -------------------------------------------------------------------------------------------------


def test_apply_normalises_inputs_and_checks_their_width():
    binding = small_binding(kind="mlp")
    x = np.random.default_rng(0).standard_normal((5, 24)).astype(np.float32)
    out = binding.apply(x)
    assert out.shape == (5, 16) and out.dtype == np.float32
    np.testing.assert_allclose(binding.apply(7 * x), out, rtol=1e-5, atol=1e-6)  # only directions matter
    params = {k: torch.from_numpy(v.copy()) for k, v in binding.tensors.items()}
    xn = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    by_hand = (
        xn @ params["linear.weight"].T
        + params["linear.bias"]
        + torch.nn.functional.gelu(xn @ params["hidden.weight"].T + params["hidden.bias"]) @ params["out.weight"].T
        + params["out.bias"]
    )
    np.testing.assert_allclose(out, by_hand.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(EmbeddingError, match=r"maps 24-d vectors, got an array of shape \(5, 23\)"):
        binding.apply(x[:, :23])


def test_identity_is_still_the_default_binding():
    identity = load_binding("identity")
    assert isinstance(identity, IdentityBinding) and identity.id == "identity"
    assert identity.source_dim is None and identity.info == {}
    x = np.ones((2, 3), dtype=np.float32)
    assert identity.apply(x) is x


# -- files ----------------------------------------------------------------------------------------------------


def test_files_round_trip_bitwise(tmp_path):
    binding = small_binding(kind="mlp", info={"source": "clap@sha256:1", "anchor": "clip@sha256:2", "bridge": None})
    weights, info_path = save_binding(binding, tmp_path / "audio.binding")
    assert (weights.name, info_path.name) == ("audio.binding.safetensors", "audio.binding.json")
    assert sorted(os.listdir(tmp_path)) == ["audio.binding.json", "audio.binding.safetensors"]  # no temp left
    x = np.random.default_rng(1).standard_normal((9, 24)).astype(np.float32)
    for spec in (tmp_path / "audio.binding", str(weights), str(info_path)):
        loaded = load_binding(spec)
        assert isinstance(loaded, LearnedBinding)
        assert loaded.id == binding.id and loaded.hidden == 32
        assert np.array_equal(loaded.apply(x), binding.apply(x))
    info = json.loads(info_path.read_text())
    assert info["format"] == "anybind-binding" and info["format_version"] == 1
    assert (info["kind"], info["source_dim"], info["target_dim"], info["hidden"]) == ("mlp", 24, 16, 32)
    assert (info["source"], info["anchor"], info["id"]) == ("clap@sha256:1", "clip@sha256:2", binding.id)
    assert info["anybind_version"] == anybind.__version__
    assert read_binding(weights).info["source"] == "clap@sha256:1"


def test_id_is_the_weights_hash_stable_and_changes_with_them(tmp_path):
    weights, _ = save_binding(small_binding(seed=0), tmp_path / "a")
    assert small_binding(seed=0).id == f"linear@{hashlib.sha256(weights.read_bytes()).hexdigest()[:16]}"
    assert small_binding(seed=0, info={"other": "info"}).id == small_binding(seed=0).id  # weights only
    changed = small_binding(seed=0)
    tensors = dict(changed.tensors)
    tensors["linear.bias"] = tensors["linear.bias"] + np.float32(1e-3)
    assert LearnedBinding("linear", tensors).id != changed.id
    save_binding(small_binding(seed=0), tmp_path / "b.json")  # saving again: the same bytes
    assert (tmp_path / "b.safetensors").read_bytes() == weights.read_bytes()


def test_a_crash_between_the_two_files_is_caught_on_load(tmp_path, monkeypatch):
    """Each file is replaced atomically; a crash after the weights but before the JSON leaves a detectable pair."""
    old = small_binding(seed=0)
    save_binding(old, tmp_path / "b")
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SpaceError, match=r"b\.json: cannot write binding: No space left on device"):
        save_binding(small_binding(seed=1), tmp_path / "b")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["b.json", "b.safetensors"]  # the temp file was removed
    with pytest.raises(SpaceError, match=r"b\.safetensors: these weights are not the ones b\.json describes"):
        load_binding(str(tmp_path / "b"))


def _rewrite_json(info_path, **changes):
    info = json.loads(info_path.read_text())
    info.update(changes)
    info_path.write_text(json.dumps(info))


def _pickle_bytes(binding):
    return pickle.dumps(dict(binding.tensors))


def _torch_save_bytes(binding):
    buffer = io.BytesIO()
    torch.save({k: torch.tensor(v) for k, v in binding.tensors.items()}, buffer)
    return buffer.getvalue()


def _nan_weights(weights, info_path):
    tensors = dict(small_binding(seed=0).tensors)
    tensors["linear.weight"] = tensors["linear.weight"].copy()
    tensors["linear.weight"][3, 4] = np.nan
    weights.write_bytes(save_safetensors(tensors))
    _rewrite_json(info_path, weights_sha256=None)


def _float64_weights(weights, info_path):
    weights.write_bytes(save_safetensors({k: v.astype(np.float64) for k, v in small_binding(seed=0).tensors.items()}))
    _rewrite_json(info_path, weights_sha256=None)


def _wrong_tensors(weights, info_path):
    weights.write_bytes(save_safetensors({"weight": np.ones((16, 24), np.float32)}))
    _rewrite_json(info_path, weights_sha256=None)


DAMAGE = {
    "missing sidecar": (lambda w, j: j.unlink(), "json", "missing; a binding is two files"),
    "missing weights": (lambda w, j: w.unlink(), "safetensors", "missing; a binding is two files"),
    "garbage weights": (lambda w, j: w.write_bytes(b"\x00" * 40), "safetensors", "not a safetensors file"),
    "pickle renamed": (lambda w, j: w.write_bytes(_pickle_bytes(small_binding())), "safetensors", "not a safetensors"),
    "torch.save renamed": (
        lambda w, j: w.write_bytes(_torch_save_bytes(small_binding())),
        "safetensors",
        "not a safetensors file",
    ),
    "json invalid": (lambda w, j: j.write_text("{not json"), "json", "binding info is not valid JSON"),
    "json not an object": (lambda w, j: j.write_text("[1, 2]"), "json", "must be a JSON object, not list"),
    "not our format": (lambda w, j: _rewrite_json(j, format="other"), "json", "not an anybind binding file"),
    "future version": (
        lambda w, j: _rewrite_json(j, format_version=99),
        "json",
        "binding format version 99 is not supported; this anybind .* reads version 1",
    ),
    "unknown kind": (lambda w, j: _rewrite_json(j, kind="conv"), "json", "binding kind 'conv' is unknown"),
    "bad dims": (lambda w, j: _rewrite_json(j, target_dim="16"), "json", "target_dim must be a positive integer"),
    "dims disagree": (
        lambda w, j: _rewrite_json(j, source_dim=25),
        "safetensors",
        "weights map 24 -> 16 dimensions but b.json says 25 -> 16",
    ),
    "kind disagrees": (
        lambda w, j: _rewrite_json(j, kind="mlp"),
        "safetensors",
        "a mlp binding holds tensors .*missing \\['hidden.bias'",
    ),
    "nan weights": (_nan_weights, "safetensors", "tensor 'linear.weight' holds NaN or infinite values"),
    "float64 weights": (_float64_weights, "safetensors", "tensor 'linear.bias' is float64, expected float32"),
    "wrong tensor names": (_wrong_tensors, "safetensors", "unexpected \\['weight'\\]"),
    "other training's weights": (
        lambda w, j: w.write_bytes(small_binding(seed=5).weights_bytes),
        "safetensors",
        "these weights are not the ones b.json describes",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_files_are_refused_naming_the_file_and_reason(tmp_path, case):
    weights, info_path = save_binding(small_binding(seed=0), tmp_path / "b")
    damage, culprit, reason = DAMAGE[case]
    damage(weights, info_path)
    named = weights if culprit == "safetensors" else info_path
    with pytest.raises(SpaceError, match=f"^{named}: .*{reason}"):
        load_binding(str(tmp_path / "b.safetensors"))


def test_missing_binding_and_empty_spec(tmp_path):
    with pytest.raises(SpaceError, match=r"nope\.safetensors: no such binding file; give 'identity' or a binding's"):
        load_binding(str(tmp_path / "nope.safetensors"))
    with pytest.raises(SpaceError, match="binding spec is empty"):
        load_binding(" ")
    assert binding_paths("x/y.safetensors") == binding_paths("x/y") == binding_paths("x/y.json")


# -- in a space -----------------------------------------------------------------------------------------------


def test_a_space_file_applies_a_learned_binding(tmp_path, tiny_clip_dir, clip_space, host):
    """A text route through a learned 16 -> 16 binding: the space's vectors are the binding's, normalised."""
    texts = ["a photo of a dog", "a violin and a piano", "a red car on the road"]
    native = clip_space.embed("text", texts)
    rng = np.random.default_rng(0)
    tensors = {"linear.weight": rng.standard_normal((16, 16)), "linear.bias": np.zeros(16)}
    info = {"source": clip_space.anchor.id, "anchor": clip_space.anchor.id}
    binding = LearnedBinding("linear", {k: v.astype(np.float32) for k, v in tensors.items()}, info)
    save_binding(binding, tmp_path / "text.binding")
    space_file = tmp_path / "space.toml"
    space_file.write_text(
        f'anchor = "clip:{tiny_clip_dir}"\n[modalities.text]\nbinding = "./text.binding.safetensors"\n'
    )
    space = anybind.load_space(space_file, device="cpu", host=host)
    np.testing.assert_allclose(space.embed("text", texts), unit(binding.apply(native)), atol=1e-5)
    assert binding.id in space.describe()["routes"]["text"] and space.fingerprint != clip_space.fingerprint

    info["anchor"] = "clip@sha256:someone-else"
    save_binding(LearnedBinding("linear", binding.tensors, info), tmp_path / "text.binding")
    with pytest.raises(SpaceError, match="trained with anchor encoder clip@sha256:someone-else"):
        anybind.load_space(space_file, device="cpu", host=host)
