"""Encoder ``mini:``: anybind-mini's image, text and audio towers (``mini:builtin`` = the weights in the package).

All three towers already end in the image-anchored space (the audio tower was trained against the frozen image
tower), so a space over ``mini:`` binds every tower with the identity. Video frames go through the image tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anybind import EncoderOptions
from anybind.errors import ModelLoadError

from . import minilm, weights
from .model import fit_window, image_array


def weights_dir(ref: str) -> Path:
    """``builtin`` -> the packaged weights; otherwise a directory holding mini.safetensors and mini.json."""
    path = weights.BUILTIN if ref == "builtin" else Path(ref)
    if not (path / weights.WEIGHTS).is_file() or not (path / weights.CONFIG).is_file():
        where = "the installed package" if ref == "builtin" else repr(ref)
        raise ModelLoadError(
            f"mini:{ref}: {where} has no {weights.WEIGHTS} + {weights.CONFIG} ({path}); use mini:builtin or a "
            "directory written by `python -m anybind.plugins.mini.training.run`"
        )
    return path


class MiniEncoder:
    """anybind-mini, batched under ``inference_mode``; MiniLM is loaded on the first text."""

    towers = frozenset({"image", "text", "audio"})

    def __init__(self, ref: str, options: EncoderOptions) -> None:
        import torch

        self.torch = torch
        path = weights_dir(ref)
        self.device = torch.device(options.device.name)
        self.model = weights.load(path, self.device)
        config = self.model.config
        self.dim = config.dim
        self.image_size = config.image_size
        self.features = config.audio
        self.inputs = {"audio": {"sample_rate": self.features.sample_rate, "window": self.features.window}}
        self.id = f"mini@sha256:{weights.digest(path)}+minilm@sha256:{minilm.weights_digest()}"
        self._minilm: minilm.MiniLM | None = None

    def _audio(self, clips: Sequence[Any]) -> Any:
        from anybind.plugins.audio_chunks import clip_samples

        rows = [
            fit_window(clip_samples(clip, self.features.sample_rate, "mini"), self.features.samples) for clip in clips
        ]
        return self.torch.from_numpy(np.stack(rows)).to(self.device)

    def embed(self, tower: str, batch: Sequence[Any]) -> np.ndarray:
        """``(len(batch), dim)`` float32 unit vectors for RGB PIL images, strings or AudioClips."""
        torch = self.torch
        with torch.inference_mode():
            if tower == "image":
                pixels = np.stack([image_array(image, self.image_size) for image in batch])
                out = self.model.embed_images(torch.from_numpy(pixels).to(self.device))
            elif tower == "text":
                if self._minilm is None:
                    self._minilm = minilm.MiniLM(str(self.device))
                sentences = self._minilm.embed(list(batch))
                out = self.model.embed_text(torch.from_numpy(sentences).to(self.device))
            elif tower == "audio":
                out = self.model.embed_waves(self._audio(batch))
            else:
                raise ValueError(f"mini has no {tower!r} tower; it embeds {sorted(self.towers)}")
        return out.float().cpu().numpy()
