"""Stage 2: the audio tower, trained against the frozen image anchor on (audio, image) pairs only.

Each training clip's target is its concept's picture vector (the mean of the frozen image tower's vectors of
the concept in the training art styles); InfoNCE scores the clip against the pictures of every audio concept.
The *control* (``target="text"``) trains the same tower on (audio, text) pairs instead: the text head's vector
of the concept's label. The emergent route audio -> text never sees a text during training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from anybind.plugins.mini.model import MiniModel, fit_window

from . import augment
from .data import TRAIN_STYLES, Corpus, TextCache, read_clip


def concept_targets(model: MiniModel, corpus: Corpus, hexcodes: list[str], target: str) -> torch.Tensor:
    """Unit ``(n, dim)`` vectors the clips of each concept are pulled towards: pictures or label texts."""
    concepts = [corpus.by_hex[h] for h in hexcodes]
    with torch.no_grad():
        if target == "image":
            views = [
                model.embed_images(augment.plain_pictures(torch.from_numpy(corpus.images(style, concepts))))
                for style in TRAIN_STYLES
            ]
            return F.normalize(torch.stack(views).mean(0), dim=-1)
        if target == "text":
            vectors = TextCache(corpus.root).vectors([c["label"] for c in concepts])
            return model.embed_text(torch.from_numpy(vectors))
    raise ValueError(f"target is 'image' or 'text', not {target!r}")


def load_waves(corpus: Corpus, split: str, sample_rate: int) -> tuple[list[np.ndarray], list, list[str]]:
    """The clips of ``split``, their samples, and the hexcodes of every audio concept (the target set)."""
    clips = [clip for clip in corpus.audio if clip.split == split]
    return [read_clip(clip.path, sample_rate) for clip in clips], clips, sorted({clip.hexcode for clip in corpus.audio})


def batch_waves(waves: list[np.ndarray], length: int, generator: np.random.Generator | None) -> torch.Tensor:
    """Clips fitted to the window: when training at a random place, half of them with noise at 15-40 dB SNR (the
    other half keep digital silence around the sound, as files at inference have), else at the start."""
    out = np.zeros((len(waves), length), np.float32)
    for row, wave in enumerate(waves):
        if generator is None:
            out[row] = fit_window(wave, length)
            continue
        offset = int(generator.integers(0, max(1, length - len(wave)) + 1)) if len(wave) < length else None
        fitted = fit_window(wave, length, offset)
        if generator.random() < 0.5:
            out[row] = fitted
            continue
        rms = float(np.sqrt(np.mean(fitted**2))) or 1e-3
        snr = generator.uniform(15, 40)
        out[row] = fitted + generator.normal(0, rms / 10 ** (snr / 20), length).astype(np.float32)
    return torch.from_numpy(out)


def set_feature_stats(model: MiniModel, waves: list[np.ndarray]) -> None:
    """Mean and standard deviation of the training clips' log-mel values, kept in the model's config."""
    features = model.config.audio
    features.mean, features.std = 0.0, 1.0
    with torch.inference_mode():
        logmel = model.logmel(batch_waves(waves[:: max(1, len(waves) // 512)], features.samples, None))
    features.mean, features.std = float(logmel.mean()), float(logmel.std())


def train_audio(
    model: MiniModel,
    corpus: Corpus,
    *,
    target: str = "image",
    seed: int = 0,
    epochs: int = 64,
    batch_size: int = 128,
    lr: float = 2e-3,
    align: float = 0.0,
    negatives: str = "audio",
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``model.audio`` in place against ``target`` ("image": the anchor; "text": the control).

    ``align`` > 0 adds ``align * (1 - cos(clip, its concept's target))`` to InfoNCE: the clip is pulled onto its
    target vector, not only closer to it than to the other targets. InfoNCE alone leaves the directions that do
    not separate the targets free, and a query that strays there lands anywhere among keys of another modality.
    ``negatives="all"`` scores each clip against the targets of every training concept (1,620 pictures, or
    labels for the control) instead of the audio concepts' only: the clip must find its place in the whole
    space, not only among the 195 things that make sounds.
    """
    torch.manual_seed(seed)
    torch_gen, np_gen = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    waves, clips, hexcodes = load_waves(corpus, "train", model.config.audio.sample_rate)
    set_feature_stats(model, waves)
    if negatives == "all":
        hexcodes = hexcodes + sorted({c["hexcode"] for c in corpus.split("train")} - set(hexcodes))
    elif negatives != "audio":
        raise ValueError(f"negatives is 'audio' or 'all', not {negatives!r}")
    index = {h: i for i, h in enumerate(hexcodes)}
    labels = torch.tensor([index[clip.hexcode] for clip in clips])
    targets = concept_targets(model, corpus, hexcodes, target)
    log(f"audio -> {target}: {len(clips)} clips of {len(set(labels.tolist()))} concepts, {len(hexcodes)} targets")

    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    optimizer = torch.optim.AdamW([*model.audio.parameters(), logit_scale], lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(clips) / batch_size)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    started, history = time.monotonic(), []
    length = model.config.audio.samples
    for epoch in range(epochs):
        model.audio.train()
        order = torch.randperm(len(clips), generator=torch_gen)
        losses = []
        for first in range(0, len(clips), batch_size):
            rows = order[first : first + batch_size]
            with torch.no_grad():
                logmel = model.logmel(batch_waves([waves[r] for r in rows], length, np_gen))
                logmel = augment.spec_mask(augment.warp(logmel, torch_gen), torch_gen)
            vectors = model.embed_logmel(logmel)
            logits = logit_scale.exp().clamp(max=100) * vectors @ targets.T
            loss = F.cross_entropy(logits, labels[rows])
            if align > 0:
                loss = loss + align * (1 - (vectors * targets[labels[rows]]).sum(-1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        history.append(
            {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.monotonic() - started, 1)}
        )
        log(f"  epoch {epoch + 1}/{epochs} loss {history[-1]['loss']:.3f} ({history[-1]['seconds']:.0f} s)")
    model.audio.eval()
    return {
        "target": target,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "align": align,
        "negatives": negatives,
        "clips": len(clips),
        "concepts": len(set(labels.tolist())),
        "targets": len(hexcodes),
        "seconds": round(time.monotonic() - started, 1),
        "temperature": float(1 / logit_scale.detach().exp().clamp(max=100)),
        "history": history,
    }
