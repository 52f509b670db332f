"""The anybind-mini training pipeline end to end on a tiny generated corpus (shapes and tones), plus its metrics."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image, ImageDraw

from anybind.plugins.mini import weights
from anybind.plugins.mini.model import MiniConfig, MiniModel
from anybind.plugins.mini.training import report, run
from anybind.plugins.mini.training.data import Corpus, prompts
from anybind.plugins.mini.training.metrics import recall_at

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 210, 20)}
SHAPES = ("circle", "square")


def _picture(path, colour, shape, shift):
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (12 + shift, 12, 52 + shift, 52)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _tone(path, frequency, seconds=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate, subtype="PCM_16")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    concepts, clips = [], []
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        for j, shape in enumerate(SHAPES):
            hexcode = f"{i}{j}"
            split = "test" if (colour, shape) == ("yellow", "square") else "train"
            concepts.append({"hexcode": hexcode, "label": f"{colour} {shape}", "tags": [colour, shape],
                             "family": f"{colour} {shape}", "split": split})  # fmt: skip
            for k, style in enumerate(("twitter", "google", "openmoji")):
                _picture(root / "images" / style / f"{hexcode}.png", rgb, shape, shift=2 * k)
            if shape == "circle":  # the circles have sounds: one pitch per colour
                for n, render_split in enumerate(("train", "train", "train", "test")):
                    path = f"audio/{hexcode}/{n}.flac"
                    _tone(root / path, 220 * (i + 1) * (1 + 0.01 * n))
                    clips.append({"path": path, "hexcode": hexcode, "label": f"{colour} circle",
                                  "kind": "instrument", "split": render_split})  # fmt: skip
    (root / "concepts.jsonl").write_text("".join(json.dumps(c) + "\n" for c in concepts))
    (root / "audio.jsonl").write_text("".join(json.dumps(c) + "\n" for c in clips))
    return root


def test_recall_counts_ties_against_the_query_and_takes_the_best_of_several_correct_keys():
    keys = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0, 0], [0.5, 0.5, 0], [0, 0.2, 0.9]], np.float32)
    figures = recall_at(queries, keys, [0, 1, 1])
    # query 0: rank 1; query 1: tied with key 0 -> rank 2; query 2: key 2 scores higher -> rank 2
    assert figures["R@1"] == pytest.approx(1 / 3)
    assert figures["R@5"] == 1.0
    assert recall_at(queries[2:], keys, [[1, 2]])["R@1"] == 1.0


def test_prompts_start_with_the_label():
    assert prompts({"label": "apple", "tags": ["fruit", "apple"]}) == [
        "apple", "an apple", "an emoji of an apple", "apple emoji", "apple, fruit",
    ]  # fmt: skip


def test_validation_split_keeps_audio_concepts_in_training(corpus_dir):
    fit, validation = Corpus(corpus_dir).validation_split(fraction=0.3)
    assert {c["hexcode"] for c in fit} >= {"00", "10", "20", "30"}  # the circles have recordings
    assert {c["family"] for c in fit}.isdisjoint({c["family"] for c in validation})
    assert all(c["split"] == "train" for c in fit + validation)


def test_run_trains_evaluates_and_writes_loadable_weights(corpus_dir, tmp_path, capsys):
    out, metrics = tmp_path / "weights", tmp_path / "metrics.json"
    run.main(["--corpus", str(corpus_dir), "--out", str(out), "--metrics", str(metrics),
              "--seeds", "0,1", "--image-epochs", "2", "--audio-epochs", "2", "--threads", "1"])  # fmt: skip
    info = json.loads(metrics.read_text())
    assert shlex.split(info["command"]) == ["python", "-m", "anybind.plugins.mini.training.run",
        "--corpus", str(corpus_dir), "--out", str(out), "--metrics", str(metrics),
        "--seeds", "0,1", "--image-epochs", "2", "--audio-epochs", "2", "--threads", "1"]  # fmt: skip
    assert [(r["training"]["target"], r["training"]["seed"]) for r in info["audio_runs"]] == [
        ("image", 0), ("text", 0), ("image", 1), ("text", 1),
    ]  # fmt: skip
    held_out = info["image_metrics"]["held_out_concepts/twitter"]["text->image"]
    assert held_out["n_queries"] == held_out["n_keys"] == 1  # the one test concept against itself
    assert info["audio_runs"][0]["metrics"]["audio->text"]["n_queries"] == 4  # one test render per circle
    assert set(info["audio_summary"]["ratio_audio_to_text"]) == {"R@1", "R@5", "R@10"}
    model = weights.load(out)
    stats = model.config.audio
    assert stats.std > 0 and stats.mean != 0.0  # the log-mel statistics of the training clips were kept
    shipped = weights.read_info(out)["shipped_audio_tower"]
    assert (shipped["target"], shipped["seed"]) == ("image", 0)
    assert shipped["training"] == {k: v for k, v in info["audio_runs"][0]["training"].items() if k != "history"}
    assert (shipped["training"]["epochs"], shipped["training"]["align"], shipped["training"]["negatives"]) == (
        2, 3.0, "audio",
    )  # fmt: skip
    capsys.readouterr()
    report.main([str(metrics)])
    tables = capsys.readouterr().out
    assert "| held-out concepts, Twemoji (a training style) | 1 |" in tables
    assert "over seeds 0, 1; held-out renders" in tables
    assert tables.count("pictures (emergent)") == tables.count("label texts (control)") == 2


def _mean_cos_to_target(model, corpus, target):
    """Mean cosine of each training clip (as the encoder embeds it) to its concept's target vector."""
    from anybind.plugins.mini.training.evaluate import embed_clips
    from anybind.plugins.mini.training.train_audio import concept_targets, load_waves

    waves, clips, hexcodes = load_waves(corpus, "train", model.config.audio.sample_rate)
    targets = concept_targets(model, corpus, hexcodes, target).numpy()
    index = {h: i for i, h in enumerate(hexcodes)}
    vectors = embed_clips(model, waves)
    return float(np.mean([vectors[i] @ targets[index[clip.hexcode]] for i, clip in enumerate(clips)]))


@pytest.mark.parametrize("target", ["image", "text"])
def test_align_pulls_clips_onto_their_targets_and_all_negatives_score_every_training_concept(corpus_dir, target):
    import copy

    from anybind.plugins.mini.training.train_audio import train_audio

    torch.manual_seed(0)
    base = MiniModel(MiniConfig(dim=32, image_channels=(8, 8, 8, 8), audio_channels=(8, 8, 8, 8)))
    corpus = Corpus(corpus_dir)
    cosines, summaries = {}, {}
    for align in (0.0, 5.0):
        model = copy.deepcopy(base)
        summaries[align] = train_audio(
            model, corpus, target=target, epochs=8, lr=5e-3, align=align, negatives="all", log=lambda _: None
        )
        cosines[align] = _mean_cos_to_target(model, corpus, target)
    assert summaries[5.0]["align"] == 5.0 and summaries[5.0]["negatives"] == "all"
    assert summaries[5.0]["concepts"] == 4 and summaries[5.0]["targets"] == 7  # 4 circles; every training concept
    assert cosines[5.0] > cosines[0.0] + 0.05
    with pytest.raises(ValueError, match="negatives is 'audio' or 'all'"):
        train_audio(copy.deepcopy(base), corpus, epochs=1, negatives="some", log=lambda _: None)


def test_image_align_pulls_pictures_onto_their_label_vectors(corpus_dir):
    import copy

    from anybind.plugins.mini.training.data import TextCache
    from anybind.plugins.mini.training.train_image import _embed_pictures, _embed_sentences, train_image_text

    torch.manual_seed(0)
    base = MiniModel(MiniConfig(dim=32, image_channels=(8, 8, 8, 8), audio_channels=(8, 8, 8, 8)))
    corpus = Corpus(corpus_dir)
    train = corpus.split("train")
    cosines = {}
    for align in (0.0, 5.0):
        model = copy.deepcopy(base)
        summary = train_image_text(
            model, corpus, epochs=6, lr=5e-3, align=align, validation_fraction=0, log=lambda _: None
        )
        assert summary["align"] == align
        pictures = _embed_pictures(model, corpus.images("twitter", train))
        labels = _embed_sentences(model, TextCache(corpus.root).vectors([c["label"] for c in train]))
        cosines[align] = float(np.mean(np.sum(pictures * labels, axis=1)))
    assert cosines[5.0] > cosines[0.0] + 0.05


def test_a_frozen_text_head_stays_minilm_identity_and_a_trained_one_moves(corpus_dir):
    import copy

    from anybind.plugins.mini.training.train_image import train_image_text

    torch.manual_seed(0)
    base = MiniModel(MiniConfig(dim=384, image_channels=(8, 8, 8, 8), audio_channels=(8, 8, 8, 8)))
    start = copy.deepcopy(base.text_head.state_dict())
    assert torch.equal(start["linear.weight"], torch.eye(384))
    corpus = Corpus(corpus_dir)
    heads, pictures = {}, {}
    for scale in (0.0, 1.0):
        model = copy.deepcopy(base)
        summary = train_image_text(
            model, corpus, epochs=3, lr=5e-3, head_lr_scale=scale, validation_fraction=0, log=lambda _: None
        )
        assert summary["head_lr_scale"] == scale
        heads[scale], pictures[scale] = model.text_head.state_dict(), model.image.state_dict()
    assert all(torch.equal(heads[0.0][k], start[k]) for k in start)
    assert not torch.equal(heads[1.0]["linear.weight"], start["linear.weight"])
    assert not torch.equal(pictures[0.0]["proj.weight"], base.image.state_dict()["proj.weight"])


def test_a_frozen_text_head_must_be_the_identity_and_the_run_must_ship_an_emergent_tower(corpus_dir, tmp_path):
    from anybind.plugins.mini.training.train_image import train_image_text

    narrow = MiniModel(MiniConfig(dim=32, image_channels=(8, 8, 8, 8), audio_channels=(8, 8, 8, 8)))
    with pytest.raises(ValueError, match=r"frozen text head .* dim 384 and no MLP, not dim 32"):
        train_image_text(narrow, Corpus(corpus_dir), epochs=1, head_lr_scale=0.0, log=lambda _: None)
    with pytest.raises(ValueError, match="head_lr_scale is a learning-rate ratio >= 0, not -1"):
        train_image_text(narrow, Corpus(corpus_dir), epochs=1, head_lr_scale=-1.0, log=lambda _: None)
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--corpus", str(corpus_dir), "--out", str(tmp_path / "w"), "--targets", "text"])
    assert exit_info.value.code == 2 and not (tmp_path / "w").exists()
