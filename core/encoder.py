"""Encoders: turn a batch of decoded values of one tower (``image``, ``text``, ...) into vectors.

A plugin registers an encoder *factory* by name from its ``anybind_encoders`` hook. The host calls
``factory(ref, options)`` with the part of a spec after ``name:`` (a hub id or a local directory) and
gets back an object satisfying :class:`Encoder`. Vectors come back in the encoder's *native* space;
the space applies the binding and L2-normalises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .devices import Device


@dataclass(frozen=True)
class EncoderOptions:
    """What the host passes to every encoder factory."""

    device: Device
    batch_size: int = 32
    trust_remote_code: bool = False


@runtime_checkable
class Encoder(Protocol):
    """What a space needs from an encoder.

    - ``id``: stable identity of the weights, e.g. ``clip:<ref>@sha256:<digest>``; it enters fingerprints.
    - ``dim``: width of the native vectors.
    - ``towers``: the decoded kinds it embeds (``{"image", "text"}`` for CLIP).
    - ``embed(tower, batch)``: ``(len(batch), dim)`` float array for one batch of decoded values.
    """

    id: str
    dim: int
    towers: frozenset[str]

    def embed(self, tower: str, batch: Sequence[Any]) -> np.ndarray: ...


EncoderFactory = Callable[[str, EncoderOptions], Encoder]
