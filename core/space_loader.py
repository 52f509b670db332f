"""``anybind.load_space(spec)``: spec strings, TOML space files and named presets -> :class:`Space`."""

from __future__ import annotations

import os
from pathlib import Path

from .devices import resolve_device
from .encoder import EncoderOptions
from .errors import SpaceError, UnknownNameError
from .plugin_host import PluginHost, get_host
from .space import Space
from .space_config import SpaceConfig, read_space_file, split_spec

MAX_PRESET_DEPTH = 8


def resolve_config(spec: str | os.PathLike[str] | SpaceConfig, host: PluginHost, depth: int = 0) -> SpaceConfig:
    """A :class:`SpaceConfig` from a config, a TOML path, a preset name or an ``ENCODER:REF`` spec."""
    if depth > MAX_PRESET_DEPTH:
        raise SpaceError(f"space preset {spec!r} refers to itself through other presets")
    if isinstance(spec, SpaceConfig):
        return spec
    text = os.fspath(spec)
    if text.endswith(".toml") or (isinstance(spec, Path) and spec.is_file()):
        return read_space_file(text)
    if text in host.spaces:
        return resolve_config(host.spaces.get(text), host, depth + 1)
    if ":" in text:
        name, ref = split_spec(text)
        if name not in host.encoders:
            raise UnknownNameError("encoder", name, host.encoders, host.encoders.hint)
        if os.path.exists(ref):  # a local checkpoint: keep meaning the same from any working directory
            text = f"{name}:{os.path.abspath(ref)}"
        return SpaceConfig(anchor=text)
    raise UnknownNameError(
        "space",
        text,
        host.spaces,
        "Give a preset name, a TOML space file, or ENCODER:REF with an encoder from: "
        + (", ".join(host.encoders) or "none registered"),
    )


def load_space(
    spec: str | os.PathLike[str] | SpaceConfig,
    *,
    device: str = "auto",
    batch_size: int = 32,
    trust_remote_code: bool = False,
    host: PluginHost | None = None,
) -> Space:
    """Load a space: ``clip:<hub id|dir>``, ``siglip:<hub id|dir>``, a ``.toml`` space file, or a preset.

    ``device`` is ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; models run in fp16 on
    GPU. ``trust_remote_code`` stays off unless you ask for it.
    """
    host = host or get_host()
    if batch_size < 1:
        raise SpaceError(f"batch_size must be at least 1, got {batch_size}")
    config = resolve_config(spec, host)
    options = EncoderOptions(resolve_device(device), batch_size=batch_size, trust_remote_code=trust_remote_code)
    return Space(config, host, options)
