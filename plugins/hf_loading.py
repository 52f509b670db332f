"""Loading Hugging Face models safely: safetensors only, remote code off unless asked, clear errors.

Shared by the model-backed encoder plugins (``clip``, ``siglip``, later ``clap``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from anybind.errors import ModelLoadError

DIGEST_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.model")


def weights_id(family: str, ref: str, config: Any) -> str:
    """Identity of the loaded weights, independent of where a local copy lives.

    ``family@sha256:<digest>`` over a local directory's weights, configs and tokenizer files (moving the
    directory keeps it; retraining changes it), or ``family:<hub id>@<commit>`` for a hub checkpoint.
    """
    path = Path(ref)
    if path.is_dir():
        digest = hashlib.sha256()
        files = sorted({f for pattern in DIGEST_PATTERNS for f in path.glob(pattern) if f.is_file()})
        for file in files:
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        return f"{family}@sha256:{digest.hexdigest()[:16]}"
    commit = getattr(config, "_commit_hash", None) or "unknown-revision"
    return f"{family}:{ref}@{commit}"


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
