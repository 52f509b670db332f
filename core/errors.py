"""Typed errors. Every error a user can hit names what it is about and says what would fix it.

All inherit from :class:`AnybindError`, so callers (and the CLI) can catch one type.
"""

from __future__ import annotations

from collections.abc import Iterable


class AnybindError(Exception):
    """Base class of every error anybind raises on purpose."""


class UnknownNameError(AnybindError, LookupError):
    """A name (modality, encoder, space, plugin) that nothing registered. Lists what exists."""

    def __init__(self, kind: str, name: str, available: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        choices = ", ".join(self.available) if self.available else "none registered"
        message = f"unknown {kind} {name!r}; available: {choices}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


class DuplicateNameError(AnybindError):
    """Two plugins registered the same name (or alias) for the same kind of thing."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        self.kind = kind
        self.name = name
        self.first = first
        self.second = second
        super().__init__(
            f"{kind} {name!r} registered twice: first by plugin {first!r}, again by plugin {second!r}; "
            f"rename one, or block one with ANYBIND_BLOCK_PLUGINS={second}"
        )


class RegistrationError(AnybindError):
    """A plugin called ``register`` with something the host cannot accept."""


class ItemError(AnybindError):
    """One input item could not be embedded. ``source`` names the file (or the item), ``reason`` says why."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class DecodeError(ItemError):
    """An input item could not be read or decoded (missing, empty, corrupt, truncated, wrong type)."""


class ModelLoadError(AnybindError):
    """A model could not be loaded from a hub id or a local directory."""


class SpaceError(AnybindError):
    """A space spec or space file is invalid, or a space cannot embed what was asked."""


class EmbeddingError(AnybindError):
    """An encoder or binding produced unusable vectors (wrong shape, NaN/inf, zero norm)."""


class StoreError(AnybindError):
    """A store directory is missing, unreadable, of another format, locked, or was built with another space."""


class MetadataError(AnybindError, ValueError):
    """Item metadata that cannot be stored (not a dict, not JSON-able, wrong count)."""


class QueryError(AnybindError, ValueError):
    """A search request that cannot be run as given (``k`` or ``rerank`` not a positive integer, nothing to search
    with). Filters that cannot be applied raise :class:`MetadataError`."""
