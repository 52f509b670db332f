"""The :class:`Binding` protocol and the identity binding."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from anybind.errors import SpaceError


@runtime_checkable
class Binding(Protocol):
    """Maps ``(n, source_dim)`` native vectors to ``(n, target_dim)`` anchor-space vectors.

    ``id`` is stable for the same map and enters space fingerprints.
    """

    id: str

    def apply(self, vectors: np.ndarray) -> np.ndarray: ...


class IdentityBinding:
    """The encoder's native space already is the anchor space (e.g. CLIP text to CLIP image)."""

    id = "identity"

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return vectors


def load_binding(spec: str) -> Binding:
    """A binding from its spec. ``identity`` is the only one in this version."""
    if spec == "identity":
        return IdentityBinding()
    raise SpaceError(
        f"binding {spec!r}: only 'identity' is supported in this version of anybind "
        "(learned linear/MLP bindings are not implemented yet)"
    )
