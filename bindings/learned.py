"""Learned bindings: a linear or MLP head from an encoder's native space into the image-anchored space.

Both kinds first L2-normalise each input row (``x̂ = x / ||x||``), then:

- ``linear``: ``y = x̂ Wᵀ + b``;
- ``mlp``: ``y = x̂ Wᵀ + b + W₂ GELU(W₁ x̂ + b₁) + b₂`` — a linear skip plus a one-hidden-layer GELU
  residual. The trainer starts the residual at zero, so an MLP begins as the linear map and only learns
  what a linear map cannot express.

The output is not normalised here: the space L2-normalises every bound vector. Weights are float32 numpy
arrays named as in :data:`TENSOR_NAMES`; the binding's ``id`` is ``KIND@`` plus the first 16 hex digits of
the SHA-256 of its safetensors serialisation, so it is stable for the same weights and changes with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from anybind.errors import EmbeddingError

KINDS = ("linear", "mlp")
LINEAR_TENSORS = ("linear.weight", "linear.bias")
MLP_TENSORS = (*LINEAR_TENSORS, "hidden.weight", "hidden.bias", "out.weight", "out.bias")
TENSOR_NAMES = {"linear": LINEAR_TENSORS, "mlp": MLP_TENSORS}
ID_DIGITS = 16


def tensor_shapes(kind: str, source_dim: int, target_dim: int, hidden: int | None) -> dict[str, tuple[int, ...]]:
    """The shape every tensor of a ``kind`` head must have for these dimensions."""
    shapes: dict[str, tuple[int, ...]] = {"linear.weight": (target_dim, source_dim), "linear.bias": (target_dim,)}
    if kind == "mlp":
        if not hidden:
            raise ValueError("an mlp binding needs a hidden size")
        shapes.update(
            {
                "hidden.weight": (hidden, source_dim),
                "hidden.bias": (hidden,),
                "out.weight": (target_dim, hidden),
                "out.bias": (target_dim,),
            }
        )
    return shapes


def check_tensors(kind: str, tensors: Mapping[str, np.ndarray]) -> tuple[int, int, int | None]:
    """``(source_dim, target_dim, hidden)`` read from the tensors; ``ValueError`` saying what is wrong."""
    if kind not in KINDS:
        raise ValueError(f"unknown binding kind {kind!r}; expected one of {', '.join(KINDS)}")
    expected = set(TENSOR_NAMES[kind])
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"a {kind} binding holds tensors {sorted(expected)}; missing {missing}, unexpected {extra}")
    for name, array in sorted(tensors.items()):
        if array.dtype != np.float32:
            raise ValueError(f"tensor {name!r} is {array.dtype}, expected float32")
        if not np.isfinite(array).all():
            raise ValueError(f"tensor {name!r} holds NaN or infinite values")
    weight = tensors["linear.weight"]
    if weight.ndim != 2 or 0 in weight.shape:
        raise ValueError(f"tensor 'linear.weight' has shape {weight.shape}, expected (target_dim, source_dim)")
    target_dim, source_dim = (int(n) for n in weight.shape)
    hidden = int(tensors["hidden.weight"].shape[0]) if kind == "mlp" and tensors["hidden.weight"].ndim == 2 else None
    for name, shape in tensor_shapes(kind, source_dim, target_dim, hidden or 1).items():
        if tensors[name].shape != shape:
            raise ValueError(f"tensor {name!r} has shape {tensors[name].shape}, expected {shape}")
    return source_dim, target_dim, hidden


def serialize(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors bytes of a head (no header metadata: the JSON sidecar holds the description)."""
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(tensors[name], dtype=np.float32) for name in sorted(tensors)})


def forward(kind: str, params: Mapping[str, Any], x: Any) -> Any:
    """The head on a torch tensor ``x`` of native vectors (rows normalised here); shared by training and apply."""
    import torch.nn.functional as F

    x = F.normalize(x, dim=1, eps=1e-12)
    y = F.linear(x, params["linear.weight"], params["linear.bias"])
    if kind == "mlp":
        h = F.gelu(F.linear(x, params["hidden.weight"], params["hidden.bias"]))
        y = y + F.linear(h, params["out.weight"], params["out.bias"])
    return y


class LearnedBinding:
    """A trained linear or MLP head; ``apply`` maps ``(n, source_dim)`` to ``(n, target_dim)`` float32.

    ``info`` is what the JSON sidecar holds (source and anchor encoder ids, training summary, held-out
    recall); the space compares ``info["source"]`` and ``info["anchor"]`` with the encoders it loaded.
    """

    def __init__(self, kind: str, tensors: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> None:
        arrays = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}
        for array in arrays.values():
            array.setflags(write=False)
        self.source_dim, self.target_dim, self.hidden = check_tensors(kind, arrays)
        self.kind = kind
        self.tensors = arrays
        self.info: dict[str, Any] = dict(info or {})
        self._bytes = serialize(arrays)
        self._params: dict[str, Any] | None = None
        self.id = f"{kind}@{hashlib.sha256(self._bytes).hexdigest()[:ID_DIGITS]}"

    @property
    def weights_bytes(self) -> bytes:
        """The safetensors serialisation that :func:`~anybind.bindings.save_binding` writes (and ``id`` hashes)."""
        return self._bytes

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Bound vectors, float32 ``(n, target_dim)``, not normalised (the space normalises)."""
        import torch

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.source_dim:
            raise EmbeddingError(
                f"binding {self.id!r} maps {self.source_dim}-d vectors, got an array of shape {x.shape}"
            )
        if self._params is None:  # copies: the numpy arrays are read-only
            self._params = {name: torch.tensor(array) for name, array in self.tensors.items()}
        with torch.no_grad():
            return forward(self.kind, self._params, torch.from_numpy(x if x.flags.writeable else x.copy())).numpy()

    def __repr__(self) -> str:
        return f"LearnedBinding({self.id!r}, {self.source_dim} -> {self.target_dim})"
