"""Bindings: maps from an encoder's native space into the image-anchored space.

- ``identity``: the encoder already shares the anchor's space (CLIP text with CLIP images).
- learned ``linear`` / ``mlp`` heads (:class:`LearnedBinding`), trained with :func:`train_binding`
  (InfoNCE against frozen anchor vectors of paired data) or :func:`train_bridge` (through a modality both
  encoders embed, e.g. captions), stored as ``NAME.safetensors`` + ``NAME.json`` by :func:`save_binding`
  and read back by :func:`load_binding`. Pair sources for the CLI are in :mod:`anybind.bindings.pairs`.

torch is imported only when a learned binding is applied or trained.
"""

from .files import binding_paths, load_binding, read_binding, save_binding
from .identity import Binding, IdentityBinding
from .learned import KINDS, LearnedBinding
from .train import TrainingError, retrieval_recall, train_binding, train_bridge

__all__ = [
    "KINDS",
    "Binding",
    "IdentityBinding",
    "LearnedBinding",
    "TrainingError",
    "binding_paths",
    "load_binding",
    "read_binding",
    "retrieval_recall",
    "save_binding",
    "train_binding",
    "train_bridge",
]
