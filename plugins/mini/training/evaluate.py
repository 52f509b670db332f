"""Held-out evaluation of anybind-mini: every direction, on concepts and recordings never trained on."""

from __future__ import annotations

import numpy as np
import torch

from anybind.plugins.mini.model import MiniModel

from .data import HELD_OUT_STYLE, TRAIN_STYLES, Corpus, TextCache
from .metrics import recall_at
from .train_audio import batch_waves, load_waves
from .train_image import _embed_pictures, _embed_sentences, text_to_image


def evaluate_images(model: MiniModel, corpus: Corpus, cache: TextCache, validation_fraction: float = 0.08) -> dict:
    """Text <-> image among the held-out concepts (each style), the validation cut, and the held-out style."""
    held_out = corpus.split("test")
    fit, validation = corpus.validation_split(validation_fraction, seed=0)
    out = {
        f"held_out_concepts/{style}": text_to_image(model, corpus, cache, held_out, style)
        for style in (*TRAIN_STYLES, HELD_OUT_STYLE)
    }
    if validation:
        out[f"validation_concepts/{TRAIN_STYLES[0]}"] = text_to_image(model, corpus, cache, validation, TRAIN_STYLES[0])
    out[f"train_concepts/{HELD_OUT_STYLE}"] = text_to_image(model, corpus, cache, fit, HELD_OUT_STYLE)
    out[f"train_concepts/{TRAIN_STYLES[0]}"] = text_to_image(model, corpus, cache, fit, TRAIN_STYLES[0])
    return out


def embed_clips(model: MiniModel, waves: list[np.ndarray], batch: int = 256) -> np.ndarray:
    """Unit vectors of clips as the encoder makes them (clip at the start of the window, no augmentation)."""
    out = []
    with torch.inference_mode():
        for first in range(0, len(waves), batch):
            out.append(model.embed_waves(batch_waves(waves[first : first + batch], model.config.audio.samples, None)))
    return torch.cat(out).numpy()


def evaluate_audio(model: MiniModel, corpus: Corpus, cache: TextCache, split: str = "test") -> dict:
    """Every direction between the ``split`` recordings and the audio concepts' labels and pictures.

    Keys are the audio concepts (labels; pictures in the first training style); X -> audio counts a hit when any
    recording of the concept ranks within k. ``audio->text`` is the emergent route when the audio tower was
    trained against pictures only.
    """
    waves, clips, hexcodes = load_waves(corpus, split, model.config.audio.sample_rate)
    concepts = [corpus.by_hex[h] for h in hexcodes]
    index = {h: i for i, h in enumerate(hexcodes)}
    truth = [index[clip.hexcode] for clip in clips]
    audio = embed_clips(model, waves)
    texts = _embed_sentences(model, cache.vectors([c["label"] for c in concepts]))
    pictures = _embed_pictures(model, corpus.images(TRAIN_STYLES[0], concepts))
    recordings = [np.flatnonzero(np.asarray(truth) == i) for i in range(len(hexcodes))]
    out = {
        "audio->text": recall_at(audio, texts, truth),
        "audio->image": recall_at(audio, pictures, truth),
        "text->audio": recall_at(texts, audio, recordings),
        "image->audio": recall_at(pictures, audio, recordings),
        "image->text": recall_at(pictures, texts, list(range(len(concepts)))),
        "text->image": recall_at(texts, pictures, list(range(len(concepts)))),
    }
    for kind in sorted({clip.kind for clip in clips}):
        rows = [i for i, clip in enumerate(clips) if clip.kind == kind]
        out[f"audio->text/{kind}"] = recall_at(audio[rows], texts, [truth[i] for i in rows])
    return out
