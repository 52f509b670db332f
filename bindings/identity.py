"""The :class:`Binding` protocol and the identity binding."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Binding(Protocol):
    """Maps ``(n, source_dim)`` native vectors to ``(n, target_dim)`` anchor-space vectors.

    ``id`` is stable for the same map and enters space fingerprints. Learned bindings also carry
    ``source_dim``, ``target_dim`` and ``info`` (the encoders they were trained for); the space checks them.
    """

    id: str

    def apply(self, vectors: np.ndarray) -> np.ndarray: ...


class IdentityBinding:
    """The encoder's native space already is the anchor space (e.g. CLIP text to CLIP image)."""

    id = "identity"
    kind = "identity"
    source_dim: int | None = None  # any width: the space checks that encoder and anchor widths agree
    target_dim: int | None = None

    @property
    def info(self) -> dict[str, Any]:
        return {}

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return vectors
