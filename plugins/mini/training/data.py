"""Reading a corpus built by :mod:`anybind.plugins.mini.training.corpus` for training and evaluation.

Layout: ``concepts.jsonl`` (one emoji concept a line: hexcode, label, tags, family, split),
``images/<style>/<hexcode>.png`` (64 px, on white), ``audio.jsonl`` plus ``audio/...`` (16 kHz mono FLAC).
MiniLM sentence vectors are cached under ``cache/`` (keyed by the sentences and the model's digest).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAIN_STYLES = ("twitter", "google")
HELD_OUT_STYLE = "openmoji"


def article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" else "a"


def prompts(concept: dict) -> list[str]:
    """The sentences a concept is trained with; the first (its label) is the one evaluation queries with."""
    label = concept["label"]
    tags = [t for t in concept.get("tags", []) if t.lower() != label.lower()][:5]
    out = [label, f"{article(label)} {label}", f"an emoji of {article(label)} {label}", f"{label} emoji"]
    if tags:
        out.append(", ".join([label, *tags]))
    return out


@dataclass
class AudioClip:
    path: Path
    hexcode: str
    label: str
    kind: str
    split: str


class Corpus:
    """The manifests of one corpus directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.concepts = [json.loads(line) for line in (self.root / "concepts.jsonl").read_text().splitlines() if line]
        self.by_hex = {c["hexcode"]: c for c in self.concepts}
        self.audio: list[AudioClip] = []
        manifest = self.root / "audio.jsonl"
        if manifest.is_file():
            for line in manifest.read_text().splitlines():
                if line:
                    row = json.loads(line)
                    self.audio.append(
                        AudioClip(self.root / row["path"], row["hexcode"], row["label"], row["kind"], row["split"])
                    )

    def split(self, name: str) -> list[dict]:
        return [c for c in self.concepts if c["split"] == name]

    def validation_split(self, fraction: float = 0.08, seed: int = 0) -> tuple[list[dict], list[dict]]:
        """Train concepts cut by family into (fit, validation); families of audio concepts always fit."""
        train = self.split("train")
        audio = {clip.hexcode for clip in self.audio}
        size = Counter(c["family"] for c in train)
        pinned = {c["family"] for c in train if c["hexcode"] in audio}
        candidates = [f for f in sorted(size) if f not in pinned]
        random.Random(seed).shuffle(candidates)
        target, val, taken = fraction * len(train), set(), 0
        for family in candidates:
            if taken >= target:
                break
            if size[family] <= 4:
                val.add(family)
                taken += size[family]
        return [c for c in train if c["family"] not in val], [c for c in train if c["family"] in val]

    def images(self, style: str, concepts: Sequence[dict]) -> np.ndarray:
        """``(n, 3, 64, 64)`` uint8 pictures of ``concepts`` in ``style``."""
        from PIL import Image

        out = [
            np.asarray(Image.open(self.root / "images" / style / f"{c['hexcode']}.png").convert("RGB"))
            for c in concepts
        ]
        return np.stack(out).transpose(0, 3, 1, 2).copy()


class TextCache:
    """MiniLM vectors of sentences, computed once per corpus and kept in ``cache/minilm-<key>.npy``."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "cache"
        self.model = None

    def vectors(self, sentences: Sequence[str]) -> np.ndarray:
        from anybind.plugins.mini.minilm import MiniLM, weights_digest

        key = hashlib.sha256(("\n".join(sentences) + weights_digest()).encode()).hexdigest()[:16]
        path = self.dir / f"minilm-{key}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        if self.model is None:
            self.model = MiniLM()
        vectors = self.model.embed(list(sentences))
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")  # two runs may share a corpus
        np.save(partial, vectors, allow_pickle=False)
        os.replace(partial, path)
        return vectors


def read_clip(path: Path, sample_rate: int) -> np.ndarray:
    import soundfile

    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise ValueError(f"{path}: {rate} Hz, the corpus is {sample_rate} Hz")
    return samples.mean(axis=1)
