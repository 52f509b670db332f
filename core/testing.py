"""Helpers for tests (yours and ours): tiny CLIP and SigLIP checkpoints built from configs, no network.

The models are randomly initialised, so their vectors mean nothing; they exercise the real loading,
preprocessing and embedding code in a fraction of a second::

    from anybind.testing import build_tiny_clip
    build_tiny_clip("tiny-clip")            # then: anybind embed --space clip:tiny-clip -m text "a dog"
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

SENTENCES = [
    "a photo of a dog",
    "a cat sitting on a mat",
    "a red car on the road",
    "the blue sky over the sea",
    "a violin and a piano",
    "a drawing of a house with a tree",
]
IMAGE_SIZE = 32
MAX_TOKENS = 16
PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on :data:`SENTENCES`, wrapped as a transformers tokenizer."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", BOS), ("[EOS]", EOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=MAX_TOKENS,
    )


def _towers(vocab: int) -> tuple[dict, dict]:
    text = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    return text, vision


def build_tiny_clip(directory: str | Path, seed: int = 0, projection_dim: int = 16) -> Path:
    """Save a randomly initialised tiny CLIP (16-d projections unless asked) with tokenizer and image processor."""
    tokenizer = train_tokenizer()
    text, vision = _towers(len(tokenizer))
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(directory)
    return directory


def build_tiny_siglip(directory: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny SigLIP (32-d) with tokenizer and image processor."""
    tokenizer = train_tokenizer()
    text, vision = _towers(len(tokenizer))
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(directory)
    return directory
