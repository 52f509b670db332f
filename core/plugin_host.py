"""The plugin host: discovers plugins through entry points and collects what they register.

Built-in plugins (``anybind.plugins.image``, ``.text``, ``.clip``) are found through the same
``anybind`` entry-point group as third-party ones. Controls:

- ``ANYBIND_LOAD_PLUGINS=a,b``: load only these plugins (by plugin or distribution name); set and empty
  loads none.
- ``ANYBIND_BLOCK_PLUGINS=a,b`` (or ``anybind -p no:a``): never load these.

A plugin that fails to import, or whose hook raises, is reported on stderr by name and skipped; what it
registered in the failing hook is discarded. Nothing a plugin does can stop the host.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .encoder import EncoderFactory
from .errors import AnybindError, RegistrationError
from .modality import Modality
from .registry import Registry

LOAD_ENV = "ANYBIND_LOAD_PLUGINS"
BLOCK_ENV = "ANYBIND_BLOCK_PLUGINS"
BUILTIN_DISTRIBUTION = "anybind"
REGISTRATION_HOOKS = {
    "anybind_modalities": "modalities",
    "anybind_encoders": "encoders",
    "anybind_spaces": "spaces",
}


@dataclass
class PluginInfo:
    """What ``anybind plugins`` reports for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: str = "loaded"  # loaded | failed | blocked | not-allowed | duplicate
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "status": self.status,
            "hooks": sorted(self.hooks),
            "registered": {kind: sorted(names) for kind, names in sorted(self.registered.items()) if names},
            "errors": list(self.errors),
        }


def normalise(name: str) -> str:
    """Plugin and distribution names compare like PyPI names: ``Anybind_Sketch`` == ``anybind-sketch``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_name_list(value: str | None) -> set[str] | None:
    """``"a, b"`` -> ``{"a", "b"}``; ``None`` (variable unset) -> ``None``; ``""`` -> empty set."""
    if value is None:
        return None
    return {normalise(part.strip()) for part in value.split(",") if part.strip()}


def _stderr_warning(message: str) -> None:
    print(f"anybind: warning: {message}", file=sys.stderr)


class PluginHost:
    """Holds the pluggy manager and the registries of modalities, encoders and spaces."""

    def __init__(
        self,
        *,
        allow: Iterable[str] | None = None,
        block: Iterable[str] = (),
        warn: Callable[[str], None] = _stderr_warning,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.allow = {normalise(name) for name in allow} if allow is not None else None
        self.block = {normalise(name) for name in block}
        self.warn = warn
        self.modalities: Registry[Modality] = Registry(
            "modality", hint="install or allow the plugin that provides it (see `anybind plugins`)"
        )
        self.encoders: Registry[EncoderFactory] = Registry(
            "encoder", hint="install or allow the plugin that provides it (see `anybind plugins`)"
        )
        self.spaces: Registry[Any] = Registry("space", hint="or give a spec such as clip:<hub id or directory>")
        self.plugins: dict[str, PluginInfo] = {}

    @classmethod
    def from_environment(cls, block: Iterable[str] = (), warn: Callable[[str], None] = _stderr_warning) -> PluginHost:
        """A host configured from ``ANYBIND_LOAD_PLUGINS`` / ``ANYBIND_BLOCK_PLUGINS``, entry points loaded."""
        blocked = set(block) | (parse_name_list(os.environ.get(BLOCK_ENV)) or set())
        host = cls(allow=parse_name_list(os.environ.get(LOAD_ENV)), block=blocked, warn=warn)
        host.load_entry_points()
        return host

    # -- discovery -------------------------------------------------------------------------------------

    def _permitted(self, info: PluginInfo, use_allowlist: bool = True) -> bool:
        names = {normalise(info.name), normalise(info.distribution or "")}
        if names & self.block:
            info.status = "blocked"
            return False
        if use_allowlist and self.allow is not None and not names & self.allow:
            info.status = "not-allowed"
            return False
        return True

    def load_entry_points(self, group: str = hookspecs.PROJECT) -> None:
        """Import and register every plugin in the entry-point group; built-in ones first."""
        seen: set[tuple[str, str]] = set()
        eps = sorted(
            metadata.entry_points(group=group),
            key=lambda ep: (ep.dist is None or ep.dist.name != BUILTIN_DISTRIBUTION, ep.name),
        )
        for ep in eps:
            if (ep.name, ep.value) in seen:
                continue  # the same distribution visible twice on sys.path
            seen.add((ep.name, ep.value))
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            info = PluginInfo(ep.name, dist, version)
            if ep.name in self.plugins:
                first = self.plugins[ep.name]
                info.status = "duplicate"
                info.errors.append(
                    f"plugin name {ep.name!r} is taken by distribution {first.distribution!r}; "
                    f"distribution {dist!r} skipped"
                )
                self.warn(info.errors[-1])
                self.plugins[f"{ep.name} ({dist})"] = info
                continue
            if not self._permitted(info):
                self.plugins[ep.name] = info
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must never stop the host
                self._fail(info, f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}")
                self.plugins[ep.name] = info
                continue
            self._register(plugin, info)
        known = {normalise(n) for ep in eps for n in (ep.name, ep.dist.name if ep.dist else "")}
        sources = ((LOAD_ENV, self.allow or set()), (f"{BLOCK_ENV} or -p no:NAME", self.block))
        for source, names in sources:
            for unknown in sorted(names - known):
                self.warn(f"{source} names {unknown!r}, but no installed plugin or distribution has that name")

    def add_plugin(
        self, plugin: object, name: str, distribution: str | None = None, version: str | None = None
    ) -> PluginInfo:
        """Register a plugin object by hand (tests, notebooks).

        Registering by hand is explicit, so the allowlist does not apply; the blocklist does.
        """
        if name in self.plugins:
            raise RegistrationError(f"a plugin named {name!r} is already registered")
        info = PluginInfo(name, distribution, version)
        if self._permitted(info, use_allowlist=False):
            self._register(plugin, info)
        else:
            self.plugins[name] = info
        return info

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin and everything it registered."""
        del self.plugins[name]
        self._forget(name)

    # -- registration ----------------------------------------------------------------------------------

    def _fail(self, info: PluginInfo, message: str, consequence: str = "skipped") -> None:
        info.status = "failed"
        info.errors.append(message)
        where = f" ({info.distribution})" if info.distribution else ""
        self.warn(f"plugin {info.name!r}{where} {message}; {consequence}")

    def _forget(self, name: str) -> None:
        for kind in REGISTRATION_HOOKS.values():
            registry: Registry[Any] = getattr(self, kind)
            for entry_name in registry.by_plugin(name):
                registry.remove(entry_name)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)

    def _register(self, plugin: object, info: PluginInfo) -> None:
        self.plugins[info.name] = info
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # pluggy validates hook signatures here
            self._fail(info, f"could not be registered: {type(exc).__name__}: {exc}")
            return
        info.hooks = [hook for hook in hookspecs.HOOK_NAMES if self._impl(info.name, hook)]
        for hook, kind in REGISTRATION_HOOKS.items():
            impl = self._impl(info.name, hook)
            if impl is None:
                continue
            register = _Recorder()
            try:
                _call(impl, register=register)
                info.registered[kind] = self._commit(kind, register.calls, info.name)
            except (Exception, SystemExit) as exc:  # the whole plugin is skipped: nothing half-registered stays
                self._forget(info.name)
                info.registered.clear()
                self._fail(info, f"raised in {hook}: {type(exc).__name__}: {exc}")
                return

    def _commit(self, kind: str, staged: list[tuple[tuple[Any, ...], dict[str, Any]]], plugin: str) -> list[str]:
        """Add a hook's staged registrations all together, or none of them."""
        registry: Registry[Any] = getattr(self, kind)
        added: list[str] = []
        try:
            for args, kwargs in staged:
                if kind == "modalities":
                    added.append(self._add_modality(plugin, *args, **kwargs))
                else:
                    registry.add(*args, plugin=plugin, **kwargs)
                    added.append(args[0] if args else kwargs["name"])
        except Exception:
            for name in added:
                registry.remove(name)
            raise
        return added

    def _add_modality(self, plugin: str, modality: Any, **kwargs: Any) -> str:
        if kwargs or not isinstance(modality, Modality):
            raise RegistrationError(f"register() in anybind_modalities takes one anybind.Modality, got {modality!r}")
        self.modalities.add(modality.name, modality, plugin=plugin, description=modality.description)
        return modality.name

    def _impl(self, plugin_name: str, hook: str) -> pluggy.HookImpl | None:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == plugin_name:
                return impl
        return None

    # -- CLI -------------------------------------------------------------------------------------------

    def add_commands(self, app: Any) -> None:
        """Let each plugin add CLI commands to ``app``.

        A plugin whose hook raises, adds a command or group whose name is taken, replaces the root
        callback, or adds something typer cannot build is reported and its additions are undone; the
        rest of what it registered stays.
        """
        import typer

        for name, info in list(self.plugins.items()):
            impl = self._impl(name, "anybind_commands") if info.status == "loaded" else None
            if impl is None:
                continue
            commands, groups = list(app.registered_commands), list(app.registered_groups)
            callback = app.registered_callback
            taken = {_command_name(c) for c in commands} | {g.name for g in groups}
            try:
                _call(impl, app=app)
                added = [_command_name(c) for c in app.registered_commands[len(commands) :]]
                added += [str(g.name) for g in app.registered_groups[len(groups) :]]
                clashes = sorted(set(added) & taken)
                if clashes:
                    raise AnybindError(f"command name(s) {', '.join(clashes)} already exist")
                if app.registered_callback is not callback:
                    raise AnybindError("it replaced the root callback (global options)")
                typer.main.get_command(app)  # fails here, not at every later run, if typer cannot build it
            except (Exception, SystemExit) as exc:
                app.registered_commands[:], app.registered_groups[:] = commands, groups
                app.registered_callback = callback
                self._fail(info, f"raised in anybind_commands: {type(exc).__name__}: {exc}", "its commands skipped")
                continue
            info.registered["commands"] = sorted(added)


def _call(impl: pluggy.HookImpl, **arguments: Any) -> Any:
    """Call one plugin's hook implementation the way pluggy does: with the arguments it names."""
    return impl.function(*[arguments[name] for name in impl.argnames])


class _Recorder:
    """The ``register`` callback a hook receives: records calls, committed only if the hook returns."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


def _command_name(command: Any) -> str:
    if command.name:
        return str(command.name)
    return str(command.callback.__name__).replace("_", "-")


_default_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, built from entry points and the environment on first use."""
    global _default_host
    if _default_host is None:
        _default_host = PluginHost.from_environment()
    return _default_host


def set_host(host: PluginHost | None) -> None:
    """Replace the process-wide host (``None``: rebuild from the environment on next use)."""
    global _default_host
    _default_host = host
