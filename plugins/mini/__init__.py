"""anybind-mini: a small image-anchored space (image, text, audio; video through the image tower) trained here.

Registers the encoder ``mini:`` and the space preset ``anybind-mini`` (= ``mini:builtin``, the weights that
ship in the package). How it was trained and what it scores: ``docs/mini-model.md``.
"""

from __future__ import annotations

from typing import Any

from anybind import hookimpl

SPACE = "anybind-mini"


def _encoder(ref: str, options: Any) -> Any:
    from .encoder import MiniEncoder

    return MiniEncoder(ref, options)


@hookimpl
def anybind_encoders(register: Any) -> None:
    register(
        "mini",
        _encoder,
        description="anybind-mini image/text/audio towers (mini:builtin = shipped weights, or a weights directory)",
    )


@hookimpl
def anybind_spaces(register: Any) -> None:
    register(SPACE, "mini:builtin", description="the small space shipped with anybind (no download; see docs)")
