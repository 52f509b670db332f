"""Stage 1: the image tower trained against frozen MiniLM sentence vectors (and the text head, unless frozen).

Symmetric InfoNCE (CLIP's loss) over batches of distinct concepts: each concept brings one picture (a random
training art style, augmented) and one of its sentences. The temperature is learned. Held-out concepts and the
held-out art style are never seen; a validation cut of the training families is reported while training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from anybind.plugins.mini.model import TEXT_WIDTH, MiniModel

from . import augment
from .data import TRAIN_STYLES, Corpus, TextCache, prompts
from .metrics import recall_at


def _embed_pictures(model: MiniModel, pixels: np.ndarray, batch: int = 512) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for first in range(0, len(pixels), batch):
            out.append(model.embed_images(augment.plain_pictures(torch.from_numpy(pixels[first : first + batch]))))
    return torch.cat(out).numpy()


def _embed_sentences(model: MiniModel, vectors: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.embed_text(torch.from_numpy(vectors)).numpy()


def text_to_image(model: MiniModel, corpus: Corpus, cache: TextCache, concepts: list[dict], style: str) -> dict:
    """Each concept's label against the pictures of ``concepts`` in ``style`` (and the reverse direction)."""
    pictures = _embed_pictures(model, corpus.images(style, concepts))
    texts = _embed_sentences(model, cache.vectors([c["label"] for c in concepts]))
    truth = list(range(len(concepts)))
    return {"text->image": recall_at(texts, pictures, truth), "image->text": recall_at(pictures, texts, truth)}


def train_image_text(
    model: MiniModel,
    corpus: Corpus,
    *,
    seed: int = 0,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 2e-3,
    soft: float = 0.0,
    soft_temperature: float = 0.1,
    validation_fraction: float = 0.08,
    head_lr_scale: float = 1.0,
    align: float = 0.0,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``model.image`` (and ``model.text_head`` unless ``head_lr_scale`` is 0) in place; returns the summary.

    ``head_lr_scale`` is the text head's learning rate over the image tower's. 0 freezes the head: the text side
    stays MiniLM's own space (LiT's locked text tower), which needs a head that starts as the identity
    (``dim`` 384 and no MLP); any other head would stay at its random start, so that raises ``ValueError``.

    ``soft`` > 0 mixes into each one-hot InfoNCE target the softmax (at ``soft_temperature``) of MiniLM's
    similarities between the batch's labels, so that a picture is also drawn a little towards the labels of
    related concepts: the image tower learns MiniLM's neighbourhoods, not only which concept is which.
    ``align`` > 0 adds ``align * (1 - cos(picture, its sentence))``: the picture vector is pulled onto its text
    vector (all 384 coordinates as a target), not only nearer to it than to the batch's other sentences.
    """
    if head_lr_scale < 0:
        raise ValueError(f"head_lr_scale is a learning-rate ratio >= 0, not {head_lr_scale}")
    if head_lr_scale == 0 and (model.config.dim != TEXT_WIDTH or model.config.text_hidden):
        raise ValueError(
            f"a frozen text head (head_lr_scale 0) must be MiniLM's identity map: dim {TEXT_WIDTH} and no MLP, "
            f"not dim {model.config.dim} with hidden {model.config.text_hidden}; train the head (e.g. 1.0)"
        )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    fit, validation = corpus.validation_split(validation_fraction, seed=0)
    cache = TextCache(corpus.root)
    sentences, owner = [], []
    for index, concept in enumerate(fit):
        for sentence in prompts(concept):
            sentences.append(sentence)
            owner.append(index)
    text_vectors = torch.from_numpy(cache.vectors(sentences))
    label_vectors = torch.from_numpy(cache.vectors([c["label"] for c in fit]))
    owner_t = torch.tensor(owner)
    by_concept = [torch.nonzero(owner_t == i).flatten() for i in range(len(fit))]
    pictures = torch.from_numpy(np.stack([corpus.images(style, fit) for style in TRAIN_STYLES]))  # (styles, n, ...)
    log(
        f"image/text: {len(fit)} concepts x {len(TRAIN_STYLES)} styles, {len(sentences)} sentences; "
        f"{len(validation)} validation concepts"
    )

    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    groups = [{"params": [*model.image.parameters(), logit_scale]}]
    if head_lr_scale > 0:
        groups.append({"params": list(model.text_head.parameters()), "lr": lr * head_lr_scale})
    else:
        model.text_head.requires_grad_(False)
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(fit) / batch_size)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch * 2
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    started, history = time.monotonic(), []
    for epoch in range(epochs):
        model.image.train()
        model.text_head.train()
        order = torch.randperm(len(fit), generator=generator)
        losses = []
        for first in range(0, len(fit), batch_size):
            index = order[first : first + batch_size]
            if len(index) < 2:
                continue
            style = torch.randint(0, len(TRAIN_STYLES), (len(index),), generator=generator)
            images = augment.pictures(pictures[style, index], generator)
            pick = [int(by_concept[i][torch.randint(0, len(by_concept[i]), (1,), generator=generator)]) for i in index]
            zi = model.embed_images(images)
            zt = model.embed_text(text_vectors[pick])
            logits = logit_scale.exp().clamp(max=100) * zi @ zt.T
            target = torch.eye(len(index))
            if soft > 0:  # part of the target follows how alike MiniLM finds the batch's labels
                labels = label_vectors[index]
                target = (1 - soft) * target + soft * torch.softmax(labels @ labels.T / soft_temperature, dim=1)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            if align > 0:
                loss = loss + align * (1 - (zi * zt).sum(-1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        model.eval()
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.monotonic() - started, 1)}
        if validation and ((epoch + 1) % 5 == 0 or epoch + 1 == epochs):
            row["validation"] = text_to_image(model, corpus, cache, validation, TRAIN_STYLES[0])["text->image"]
            log(
                f"  epoch {epoch + 1}/{epochs} loss {row['loss']:.3f} validation text->image "
                f"R@1 {row['validation']['R@1']:.3f} R@5 {row['validation']['R@5']:.3f} ({row['seconds']:.0f} s)"
            )
        history.append(row)
    model.eval()
    return {
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "soft": soft,
        "soft_temperature": soft_temperature,
        "validation_fraction": validation_fraction,
        "head_lr_scale": head_lr_scale,
        "align": align,
        "fit_concepts": len(fit),
        "validation_concepts": len(validation),
        "seconds": round(time.monotonic() - started, 1),
        "temperature": float(1 / logit_scale.detach().exp().clamp(max=100)),
        "history": history,
    }
