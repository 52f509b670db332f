"""Space configuration: spec strings and TOML space files, validated with pydantic.

A spec ``NAME:REF`` (``clip:openai/clip-vit-base-patch32``, ``siglip:/models/siglip``) makes encoder
``NAME`` the anchor and binds each of its towers with the identity. A TOML space file says more::

    name = "photos"
    anchor = "clip:./models/clip"          # ./ and ../ are relative to this file

    [modalities.text]                      # optional: per tower or modality tag
    encoder = "anchor"                     # "anchor" (default) or another encoder spec
    binding = "identity"

    [modalities.audio]
    encoder = "clap:./models/clap"
    binding = "./audio.binding.safetensors"  # a learned binding (anybind bind train); relative to this file
    window = 10.0                          # seconds per segment; overlap = 2.0; video also takes fps = 1.0
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import SpaceError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class RouteConfig(BaseModel):
    """How one tower or modality reaches the anchor space."""

    model_config = ConfigDict(extra="forbid")
    encoder: str = "anchor"
    binding: str = "identity"
    window: float | None = Field(default=None, gt=0, description="seconds per segment (audio, video)")
    overlap: float | None = Field(default=None, ge=0, description="seconds shared by consecutive segments")
    fps: float | None = Field(default=None, gt=0, description="video frames sampled per second")


class SpaceConfig(BaseModel):
    """A space: the anchor encoder spec plus optional per-modality routes."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    anchor: str = Field(description="encoder spec NAME:REF whose image tower defines the space")
    modalities: dict[str, RouteConfig] = Field(default_factory=dict)


def split_spec(spec: str) -> tuple[str, str]:
    """``"clip:openai/x"`` -> ``("clip", "openai/x")``; :class:`SpaceError` if there is no ``NAME:``."""
    name, sep, ref = spec.partition(":")
    if not sep or not name or not ref:
        raise SpaceError(f"encoder spec {spec!r} is not of the form NAME:REF (e.g. clip:openai/clip-vit-base-patch32)")
    return name, ref


def _resolve(spec: str, base: Path) -> str:
    if spec == "anchor":
        return spec
    name, ref = split_spec(spec)
    if ref.startswith(("./", "../")):
        ref = str((base / ref).resolve())
    return f"{name}:{ref}"


def read_space_file(path: str | Path) -> SpaceConfig:
    """Parse and validate a TOML space file; errors name the file and the offending field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read space file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = SpaceConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise SpaceError(f"{path}: invalid space file: {problems}") from None
    base = path.resolve().parent
    config.anchor = _resolve(config.anchor, base)
    for route in config.modalities.values():
        route.encoder = _resolve(route.encoder, base)
        if route.binding != "identity" and not Path(route.binding).is_absolute():
            route.binding = str((base / route.binding).resolve())  # a binding file next to the space file
    return config
