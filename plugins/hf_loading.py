"""Loading Hugging Face models safely: safetensors only, remote code off unless asked, clear errors.

Shared by the model-backed encoder plugins (``clip``, ``siglip``, later ``clap``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anybind.errors import ModelLoadError

# What defines a checkpoint's vectors: its weights, configs and tokenizer files (not READMEs or stray files).
WEIGHT_PATTERN = "*.safetensors"
DEFINING_FILES = (
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def directory_digest(path: Path) -> str:
    """SHA-256 over the files that define a checkpoint, by name and content (reads every weight file)."""
    digest = hashlib.sha256()
    files = sorted([*path.glob(WEIGHT_PATTERN), *(path / name for name in DEFINING_FILES)])
    for file in files:
        if file.is_file():
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def hub_revision(ref: str) -> str:
    """The commit of the cached hub snapshot that ``from_pretrained`` just loaded (read offline)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref, "config.json")
    return Path(cached).parent.name if isinstance(cached, str) else "unknown-revision"


def weights_id(family: str, ref: str) -> str:
    """Identity of the loaded weights, independent of where a local copy lives.

    ``family@sha256:<digest>`` over a local directory's defining files (moving the directory keeps it;
    retraining changes it), or ``family:<hub id>@<commit>`` for a checkpoint from the hub cache.
    """
    path = Path(ref)
    if path.is_dir():
        return f"{family}@sha256:{directory_digest(path)}"
    return f"{family}:{ref}@{hub_revision(ref)}"


def describe_ref(ref: str) -> str:
    return f"local directory {ref!r}" if os.path.isdir(ref) else f"hub id {ref!r}"


def from_pretrained(loader: Any, ref: str, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(ref, ...)`` with every failure turned into a :class:`ModelLoadError`."""
    try:
        return loader.from_pretrained(ref, **kwargs)
    except OSError as exc:
        hint = (
            "it must hold config.json and model.safetensors (pytorch_model.bin is refused: no pickle)"
            if os.path.isdir(ref)
            else "no local directory of that name exists, and the hub could not be reached or has no such "
            "model; pass a local directory saved with save_pretrained"
        )
        raise ModelLoadError(f"cannot load {what} from {describe_ref(ref)}: {exc}. Hint: {hint}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot load {what} from {describe_ref(ref)}: {type(exc).__name__}: {exc}") from None


@dataclass
class LoadedModel:
    """A checkpoint loaded for inference: its config, the model on its device, and what loading used."""

    torch: Any
    device: Any
    dtype: Any
    config: Any
    model: Any
    safe: dict[str, Any]


def load_model(ref: str, options: Any, model_class_name: str, family: str, model_types: tuple[str, ...]) -> LoadedModel:
    """Config check, then ``transformers.<model_class_name>`` from ``ref`` (safetensors only) on the options' device.

    The config's model type must be one of ``model_types``, else a :class:`ModelLoadError` names what the
    checkpoint holds. ``trust_remote_code`` comes from the options (off unless the user asked).
    """
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    device, dtype = torch.device(options.device.name), getattr(torch, options.device.dtype)
    safe = {"trust_remote_code": options.trust_remote_code}
    config = from_pretrained(transformers.AutoConfig, ref, "model config", **safe)
    if config.model_type not in model_types:
        raise ModelLoadError(
            f"{describe_ref(ref)} holds a {config.model_type!r} model, not a {family} model; "
            f"use the encoder that matches it (clip: for 'clip', siglip: for 'siglip')"
        )
    model_class = getattr(transformers, model_class_name)
    model = from_pretrained(model_class, ref, f"{family} model", use_safetensors=True, dtype=dtype, **safe)
    model.to(device).eval()
    return LoadedModel(torch, device, dtype, config, model, safe)
