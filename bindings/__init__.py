"""Bindings: maps from an encoder's native space into the image-anchored space.

Only the identity binding exists today (CLIP/SigLIP text is already aligned with their images).
"""

from .identity import Binding, IdentityBinding, load_binding

__all__ = ["Binding", "IdentityBinding", "load_binding"]
