"""Encoders ``clip:`` and ``siglip:``: image and text towers of HF ``CLIPModel`` / ``SiglipModel``.

Both towers already share one space, so a ``clip:<ref>`` space binds them with the identity. Each tower
is preprocessed by the checkpoint's own tokenizer and image processor; text longer than the model's
context is truncated (never an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anybind import EncoderOptions, hookimpl
from anybind.errors import ModelLoadError

from .hf_loading import from_pretrained, load_model, weights_id


class ContrastiveEncoder:
    """Image + text towers of a CLIP-style dual encoder, batched, under ``torch.inference_mode``."""

    family = ""
    model_class_name = ""
    model_types: tuple[str, ...] = ()
    text_padding: bool | str = True
    towers = frozenset({"image", "text"})

    def __init__(self, ref: str, options: EncoderOptions) -> None:
        import transformers

        loaded = load_model(ref, options, self.model_class_name, self.family, self.model_types)
        self.torch, self.device, self.dtype, self.model = loaded.torch, loaded.device, loaded.dtype, loaded.model
        safe = loaded.safe
        self.tokenizer = from_pretrained(transformers.AutoTokenizer, ref, "tokenizer", **safe)
        self.image_processor = from_pretrained(transformers.AutoImageProcessor, ref, "image processor", **safe)
        self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.dim = self._output_dim(self.model.config)
        self.id = weights_id(self.family, ref)

    def _output_dim(self, config: Any) -> int:
        raise NotImplementedError

    def embed(self, tower: str, batch: Sequence[Any]) -> np.ndarray:
        """``(len(batch), dim)`` float32 native vectors for RGB PIL images or strings."""
        with self.torch.inference_mode():
            if tower == "image":
                pixels = self.image_processor(images=list(batch), return_tensors="pt")["pixel_values"]
                output = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
            elif tower == "text":
                tokens = self.tokenizer(
                    list(batch),
                    padding=self.text_padding,
                    truncation=True,
                    max_length=self.max_text_tokens,
                    return_tensors="pt",
                ).to(self.device)
                output = self.model.get_text_features(**tokens)
            else:
                raise ValueError(f"{self.family} has no {tower!r} tower; it embeds {sorted(self.towers)}")
        features = getattr(output, "pooler_output", output)  # transformers 5 returns an output object
        return features.float().cpu().numpy()


class ClipEncoder(ContrastiveEncoder):
    family = "clip"
    model_types = ("clip",)
    model_class_name = "CLIPModel"

    def _output_dim(self, config: Any) -> int:
        return int(config.projection_dim)


class SiglipEncoder(ContrastiveEncoder):
    family = "siglip"
    model_types = ("siglip",)
    model_class_name = "SiglipModel"
    text_padding = "max_length"  # SigLIP was trained on text padded to its full context

    def _output_dim(self, config: Any) -> int:
        image_dim = int(config.vision_config.hidden_size)
        text_dim = int(getattr(config.text_config, "projection_size", None) or config.text_config.hidden_size)
        if image_dim != text_dim:
            raise ModelLoadError(f"siglip model has image width {image_dim} but text width {text_dim}")
        return image_dim


@hookimpl
def anybind_encoders(register: Any) -> None:
    register("clip", ClipEncoder, description="HF CLIPModel image+text towers (hub id or local directory)")
    register("siglip", SiglipEncoder, description="HF SiglipModel image+text towers (hub id or local directory)")
