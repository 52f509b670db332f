"""anybind-mini's weight files: ``mini.safetensors`` (the three towers) and ``mini.json`` (shapes, audio feature
statistics, how it was trained and what it scored). The package ships them under ``weights/``."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from anybind.errors import ModelLoadError

BUILTIN = Path(__file__).resolve().parent / "weights"
WEIGHTS, CONFIG = "mini.safetensors", "mini.json"


def digest(directory: Path) -> str:
    """SHA-256 (first 16 hex digits) of the weights and the config: the identity of a trained anybind-mini."""
    sha = hashlib.sha256()
    for name in (WEIGHTS, CONFIG):
        with open(directory / name, "rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
    return sha.hexdigest()[:16]


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a shipped or shared file is readable like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(model: Any, directory: str | Path, info: dict[str, Any]) -> Path:
    """Write the model's trainable tensors and ``{"config": ..., **info}`` to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.startswith("logmel.")}
    _atomic_write(directory / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "anybind-mini/1"}))
    document = {"format": "anybind-mini/1", "config": model.config.to_dict(), **info}
    _atomic_write(directory / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=1) + "\n"))
    return directory


def read_info(directory: str | Path) -> dict[str, Any]:
    """The parsed ``mini.json`` of a weights directory; :class:`ModelLoadError` naming the file if unusable."""
    path = Path(directory) / CONFIG
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read anybind-mini config: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != "anybind-mini/1":
        raise ModelLoadError(f"{path}: not an anybind-mini config (want format 'anybind-mini/1')")
    return document


def load(directory: str | Path, device: str = "cpu") -> Any:
    """A :class:`MiniModel` in eval mode from a weights directory (safetensors only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import MiniConfig, MiniModel

    directory = Path(directory)
    document = read_info(directory)
    try:
        config = MiniConfig.from_dict(document["config"])
        model = MiniModel(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{directory / CONFIG}: invalid config: {type(exc).__name__}: {exc}") from None
    try:
        tensors = load_file(directory / WEIGHTS)
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"{directory / WEIGHTS}: cannot read safetensors weights: {exc}") from None
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shapes differ from what the config says
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise ModelLoadError(f"{directory / WEIGHTS} does not match {directory / CONFIG}: {first}") from None
    missing = [k for k in missing if not k.startswith("logmel.")]
    if missing or unexpected:
        raise ModelLoadError(
            f"{directory / WEIGHTS} does not match {directory / CONFIG}: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {list(unexpected)[:3]}"
        )
    return model.to(device).eval()
