"""Binding files: ``NAME.safetensors`` (the weights) and ``NAME.json`` (what they are and how they were made).

:func:`save_binding` writes both, each atomically (temp file, fsync, rename), weights first: the JSON
records the weights' SHA-256, so a crash between the two renames is caught on load, never half-read.
:func:`load_binding` takes ``"identity"`` or the path of either file (or of ``NAME`` without a suffix).
Every problem is a :class:`~anybind.errors.SpaceError` naming the file and the reason. Weights are read
with safetensors only: no pickle, no ``torch.load``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from anybind.errors import SpaceError

from .identity import Binding, IdentityBinding
from .learned import KINDS, LearnedBinding, check_tensors

FORMAT = "anybind-binding"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
INFO_SUFFIX = ".json"
MAX_WEIGHTS_BYTES = 1 << 30
MAX_INFO_BYTES = 16 << 20
HINT = "bindings are written by `anybind bind train` or anybind.bindings.save_binding"


def binding_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights, info)`` paths of a binding named by either file or by the common stem without a suffix."""
    path = Path(path)
    if path.suffix in (WEIGHTS_SUFFIX, INFO_SUFFIX):
        path = path.with_suffix("")
    return path.with_name(path.name + WEIGHTS_SUFFIX), path.with_name(path.name + INFO_SUFFIX)


def _version() -> str:
    from anybind import __version__

    return __version__


def describe(binding: LearnedBinding) -> dict[str, Any]:
    """The JSON sidecar of ``binding``: its ``info`` plus the fields the file format fixes."""
    info = dict(binding.info)
    info.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "id": binding.id,
            "kind": binding.kind,
            "source_dim": binding.source_dim,
            "target_dim": binding.target_dim,
            "hidden": binding.hidden,
            "weights_sha256": hashlib.sha256(binding.weights_bytes).hexdigest(),
        }
    )
    info.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    info.setdefault("anybind_version", _version())
    return info


def save_binding(binding: LearnedBinding, path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``PATH.safetensors`` and ``PATH.json`` (``PATH`` may carry either suffix); returns both paths.

    Each file is replaced atomically; an existing binding of that name is overwritten.
    """
    from anybind.store.files import write_atomic  # not at import time: the store imports the space, which imports us

    weights_path, info_path = binding_paths(path)
    try:
        text = json.dumps(describe(binding), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise SpaceError(f"{info_path}: binding info cannot be written as JSON: {exc}") from None
    try:
        write_atomic(weights_path, binding.weights_bytes)
        write_atomic(info_path, (text + "\n").encode("utf-8"))
    except OSError as exc:
        raise SpaceError(f"{exc.filename or weights_path}: cannot write binding: {exc.strerror or exc}") from None
    return weights_path, info_path


def _read(path: Path, limit: int, other: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise SpaceError(f"{path}: binding file is {size} bytes, over the {limit}-byte limit")
            return handle.read()
    except FileNotFoundError:
        if other.exists():
            raise SpaceError(f"{path}: missing; a binding is two files, {path.name} next to {other.name}") from None
        raise SpaceError(f"{path}: no such binding file ({HINT})") from None
    except IsADirectoryError:
        raise SpaceError(f"{path}: is a directory, not a binding file") from None
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read binding file: {exc.strerror or exc}") from None


def _parse_info(path: Path, data: bytes) -> dict[str, Any]:
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SpaceError(f"{path}: binding info is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise SpaceError(f"{path}: binding info must be a JSON object, not {type(info).__name__}")
    if info.get("format") != FORMAT:
        raise SpaceError(f"{path}: not an anybind binding file (format {info.get('format')!r}, expected {FORMAT!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise SpaceError(
            f"{path}: binding format version {info.get('format_version')!r} is not supported; this anybind "
            f"({_version()}) reads version {FORMAT_VERSION}"
        )
    if info.get("kind") not in KINDS:
        raise SpaceError(f"{path}: binding kind {info.get('kind')!r} is unknown; expected one of {', '.join(KINDS)}")
    for key in ("source_dim", "target_dim"):
        if not isinstance(info.get(key), int) or isinstance(info.get(key), bool) or info[key] < 1:
            raise SpaceError(f"{path}: {key} must be a positive integer, got {info.get(key)!r}")
    return info


def _parse_weights(path: Path, data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types for every malformed header
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpaceError(f"{path}: not a safetensors file ({reason})") from None


def read_binding(path: str | os.PathLike[str]) -> LearnedBinding:
    """The learned binding stored at ``path`` (either file, or the name without a suffix)."""
    weights_path, info_path = binding_paths(path)
    if not weights_path.exists() and not info_path.exists():
        raise SpaceError(f"{path}: no such binding file; give 'identity' or a binding's path ({HINT})")
    info = _parse_info(info_path, _read(info_path, MAX_INFO_BYTES, weights_path))
    data = _read(weights_path, MAX_WEIGHTS_BYTES, info_path)
    tensors = _parse_weights(weights_path, data)
    try:
        source_dim, target_dim, hidden = check_tensors(info["kind"], tensors)
    except ValueError as exc:
        raise SpaceError(f"{weights_path}: {exc}") from None
    if (source_dim, target_dim) != (info["source_dim"], info["target_dim"]):
        raise SpaceError(
            f"{weights_path}: weights map {source_dim} -> {target_dim} dimensions but {info_path.name} says "
            f"{info['source_dim']} -> {info['target_dim']}"
        )
    if info["kind"] == "mlp" and info.get("hidden") != hidden:
        raise SpaceError(f"{weights_path}: hidden size {hidden} but {info_path.name} says {info.get('hidden')!r}")
    digest = info.get("weights_sha256")
    if digest is not None and digest != hashlib.sha256(data).hexdigest():
        raise SpaceError(
            f"{weights_path}: these weights are not the ones {info_path.name} describes (SHA-256 differs); "
            "the two files come from different trainings: train again or restore the matching pair"
        )
    binding = LearnedBinding(info["kind"], tensors, info)
    binding.info["id"] = binding.id
    return binding


def load_binding(spec: str | os.PathLike[str]) -> Binding:
    """A binding from its spec: ``"identity"``, or the path of a learned binding's files (see :func:`read_binding`)."""
    if isinstance(spec, str) and spec == "identity":
        return IdentityBinding()
    if isinstance(spec, str) and not spec.strip():
        raise SpaceError(f"binding spec is empty; give 'identity' or a binding path ({HINT})")
    return read_binding(spec)
