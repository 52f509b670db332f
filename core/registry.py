"""A name -> value table that remembers which plugin registered each entry.

The host owns names and aliases: it validates them, refuses duplicates (naming both plugins) and, on a
miss, lists what exists. Plugins never touch a :class:`Registry` directly; they receive a ``register``
callback bound to their own name (see :mod:`anybind.hookspecs`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import DuplicateNameError, RegistrationError, UnknownNameError

T = TypeVar("T")

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered value: its canonical name, aliases, the value and the plugin that registered it."""

    name: str
    value: T
    plugin: str
    aliases: tuple[str, ...] = ()
    description: str = ""


def check_name(kind: str, name: object, plugin: str) -> str:
    """Return ``name`` if it is a valid registry name, else raise :class:`RegistrationError`."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise RegistrationError(
            f"plugin {plugin!r} registered {kind} name {name!r}: names are lower-case, start with a letter "
            f"and use only a-z 0-9 _ . -"
        )
    return name


class Registry(Generic[T]):
    """Registered values of one kind (``modality``, ``encoder``, ``space``)."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, Entry[T]] = {}
        self._keys: dict[str, str] = {}  # name or alias -> canonical name

    def add(
        self,
        name: str,
        value: T,
        *,
        plugin: str,
        aliases: tuple[str, ...] | list[str] = (),
        description: str = "",
    ) -> Entry[T]:
        """Add an entry. Raises :class:`DuplicateNameError` if the name or an alias is taken."""
        if isinstance(aliases, str):
            raise RegistrationError(
                f"plugin {plugin!r} registered {self.kind} {name!r} with aliases={aliases!r}: "
                "pass a list or tuple of names"
            )
        keys = [check_name(self.kind, name, plugin)]
        keys += [check_name(self.kind, alias, plugin) for alias in aliases]
        if len(set(keys)) != len(keys):
            raise RegistrationError(f"plugin {plugin!r} registered {self.kind} {name!r} with a repeated alias")
        for key in keys:
            if key in self._keys:
                raise DuplicateNameError(self.kind, key, self._entries[self._keys[key]].plugin, plugin)
        entry = Entry(name=name, value=value, plugin=plugin, aliases=tuple(aliases), description=description)
        self._entries[name] = entry
        for key in keys:
            self._keys[key] = name
        return entry

    def remove(self, name: str) -> None:
        """Remove an entry and its aliases (a no-op for an unknown name)."""
        entry = self._entries.pop(name, None)
        if entry is not None:
            for key in (entry.name, *entry.aliases):
                self._keys.pop(key, None)

    def entry(self, name: str) -> Entry[T]:
        """The entry for a name or alias; :class:`UnknownNameError` (listing what exists) otherwise."""
        try:
            return self._entries[self._keys[name]]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries, self.hint) from None

    def get(self, name: str) -> T:
        """The value for a name or alias; :class:`UnknownNameError` (listing what exists) otherwise."""
        return self.entry(name).value

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry[T]]:
        """All entries, sorted by name."""
        return [self._entries[name] for name in sorted(self._entries)]

    def by_plugin(self, plugin: str) -> list[str]:
        """Names registered by one plugin, sorted."""
        return sorted(name for name, entry in self._entries.items() if entry.plugin == plugin)
