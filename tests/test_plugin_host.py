"""The plugin host: entry-point discovery, allowlist and blocking, isolation of broken plugins."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest
import typer

import anybind
from anybind import Modality, PluginHost, hookimpl
from anybind.errors import RegistrationError


def _modality(name: str, tower: str = "") -> Modality:
    return Modality(name=name, decode=lambda item: item, embeds_as=tower)


class DepthPlugin:
    """A well-behaved plugin registering one of each thing."""

    @hookimpl
    def anybind_modalities(self, register: Any) -> None:
        register(_modality("depth", "image"))

    @hookimpl
    def anybind_encoders(self, register: Any) -> None:
        register("fake", lambda ref, options: None, aliases=["fk"], description="a fake encoder")

    @hookimpl
    def anybind_spaces(self, register: Any) -> None:
        register("fake-space", "fake:model", description="a preset")


class BrokenPlugin:
    """Registers something, then raises: everything it registered must be discarded."""

    @hookimpl
    def anybind_modalities(self, register: Any) -> None:
        register(_modality("half"))
        raise RuntimeError("boom")


class WrongArgumentPlugin:
    @hookimpl
    def anybind_modalities(self, register: Any) -> None:
        register("not-a-modality-object")


def make_host(**kwargs: Any) -> tuple[PluginHost, list[str]]:
    warnings: list[str] = []
    return PluginHost(warn=warnings.append, **kwargs), warnings


def test_builtin_plugins_come_through_entry_points(host):
    assert {"image", "text"} <= set(host.modalities)
    assert {"clip", "siglip"} <= set(host.encoders)
    for name in ("image", "text", "clip"):
        info = host.plugins[name]
        assert info.distribution == "anybind"
        assert info.version == anybind.__version__
        assert info.builtin and info.status == "loaded"
    assert host.modalities.entry("image").plugin == "image"
    assert host.plugins["image"].registered == {"modalities": ["image"]}
    assert host.plugins["clip"].registered == {"encoders": ["clip", "siglip"]}
    names = {ep.name for ep in metadata.entry_points(group="anybind") if ep.dist and ep.dist.name == "anybind"}
    assert {"image", "text", "clip"} <= names


def test_fake_plugin_registers_everything():
    host, warnings = make_host()
    info = host.add_plugin(DepthPlugin(), "depth-plugin")
    assert warnings == []
    assert info.registered == {"modalities": ["depth"], "encoders": ["fake"], "spaces": ["fake-space"]}
    assert info.hooks == ["anybind_modalities", "anybind_encoders", "anybind_spaces"]
    assert host.modalities.get("depth").tower == "image"
    assert host.encoders.entry("fk").name == "fake"
    assert host.spaces.get("fake-space") == "fake:model"
    host.remove_plugin("depth-plugin")
    assert "depth" not in host.modalities and "fake" not in host.encoders and "fake-space" not in host.spaces


def test_plugin_that_raises_is_named_and_skipped_whole():
    host, warnings = make_host()
    host.add_plugin(DepthPlugin(), "good")
    info = host.add_plugin(BrokenPlugin(), "broken")
    assert info.status == "failed"
    assert "half" not in host.modalities
    assert "depth" in host.modalities  # the good plugin is untouched
    assert len(warnings) == 1
    assert "'broken'" in warnings[0] and "anybind_modalities" in warnings[0] and "boom" in warnings[0]
    assert "skipped" in warnings[0]


def test_register_with_wrong_argument_type_is_reported():
    host, warnings = make_host()
    info = host.add_plugin(WrongArgumentPlugin(), "wrong")
    assert info.status == "failed"
    assert "takes one anybind.Modality" in warnings[0]


def test_duplicate_modality_names_both_plugins_and_keeps_the_first():
    host, warnings = make_host()
    host.add_plugin(DepthPlugin(), "first")
    info = host.add_plugin(DepthPlugin(), "second")
    assert info.status == "failed"
    assert "'first'" in warnings[0] and "'second'" in warnings[0] and "registered twice" in warnings[0]
    assert host.modalities.entry("depth").plugin == "first"


def test_allowlist_and_blocklist():
    host, _ = make_host(allow={"image"})
    host.load_entry_points()
    assert list(host.modalities) == ["image"]
    assert host.plugins["text"].status == "not-allowed"

    host, _ = make_host(allow=set())
    host.load_entry_points()
    assert len(host.modalities) == 0 and len(host.encoders) == 0

    host, _ = make_host(block={"text"})
    host.load_entry_points()
    assert "text" not in host.modalities and "image" in host.modalities
    assert host.plugins["text"].status == "blocked"

    host, _ = make_host(allow={"anybind"})  # a distribution name allows all its plugins
    host.load_entry_points()
    assert {"image", "text"} <= set(host.modalities)


def test_environment_variables(monkeypatch):
    monkeypatch.setenv("ANYBIND_LOAD_PLUGINS", "image, clip")
    monkeypatch.setenv("ANYBIND_BLOCK_PLUGINS", "clip")
    host = PluginHost.from_environment(warn=lambda message: None)
    assert list(host.modalities) == ["image"]
    assert len(host.encoders) == 0
    monkeypatch.setenv("ANYBIND_LOAD_PLUGINS", "")
    assert len(PluginHost.from_environment().modalities) == 0


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint."""

    def __init__(self, name: str, loader: Any, dist: str = "fake-dist") -> None:
        self.name, self.value, self._loader = name, f"{dist.replace('-', '_')}:{name}", loader
        self.dist = type("Dist", (), {"name": dist, "version": "9.9"})()

    def load(self) -> Any:
        return self._loader()


def test_entry_point_that_fails_to_import_is_skipped(monkeypatch):
    def explode() -> Any:
        raise ImportError("No module named 'missing_dependency'")

    eps = [FakeEntryPoint("exploding", explode), FakeEntryPoint("depth", DepthPlugin)]
    monkeypatch.setattr(metadata, "entry_points", lambda group: eps)
    host, warnings = make_host()
    host.load_entry_points()
    assert host.plugins["exploding"].status == "failed"
    assert "missing_dependency" in host.plugins["exploding"].errors[0]
    assert "'exploding' (fake-dist)" in warnings[0]
    assert "depth" in host.modalities
    assert host.plugins["depth"].version == "9.9"


def test_same_plugin_name_from_two_distributions(monkeypatch):
    eps = [FakeEntryPoint("depth", DepthPlugin, "dist-a"), FakeEntryPoint("depth", DepthPlugin, "dist-b")]
    monkeypatch.setattr(metadata, "entry_points", lambda group: eps)
    host, warnings = make_host()
    host.load_entry_points()
    assert host.plugins["depth"].distribution == "dist-a"
    assert host.plugins["depth (dist-b)"].status == "duplicate"
    assert "dist-a" in warnings[0] and "dist-b" in warnings[0]


def test_add_plugin_twice_by_name_is_an_error():
    host, _ = make_host()
    host.add_plugin(DepthPlugin(), "depth")
    with pytest.raises(RegistrationError, match="already registered"):
        host.add_plugin(DepthPlugin(), "depth")


class CommandPlugin:
    @hookimpl
    def anybind_commands(self, app: Any) -> None:
        @app.command()
        def hello_world() -> None:
            typer.echo("hello")


class ClashingCommandPlugin:
    @hookimpl
    def anybind_commands(self, app: Any) -> None:
        @app.command("plugins")
        def mine() -> None:
            pass


def test_anybind_commands_adds_and_refuses_clashes():
    from anybind.cli import build_app

    host, warnings = make_host()
    host.add_plugin(CommandPlugin(), "cmd")
    host.add_plugin(ClashingCommandPlugin(), "clash")
    app = build_app()
    before = len(app.registered_commands)
    host.add_commands(app)
    assert len(app.registered_commands) == before + 1
    assert host.plugins["cmd"].registered["commands"] == ["hello-world"]
    assert host.plugins["clash"].status == "failed"
    assert "plugins" in warnings[0] and "'clash'" in warnings[0]


class GroupHijackPlugin:
    @hookimpl
    def anybind_commands(self, app: Any) -> None:
        app.add_typer(typer.Typer(), name="embed")


class CallbackHijackPlugin:
    @hookimpl
    def anybind_commands(self, app: Any) -> None:
        @app.callback()
        def mine() -> None:
            pass


class UnbuildableCommandPlugin:
    @hookimpl
    def anybind_commands(self, app: Any) -> None:
        @app.command()
        def nested(values: list[list[int]]) -> None:
            pass


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (GroupHijackPlugin, "embed already exist"),
        (CallbackHijackPlugin, "replaced the root callback"),
        (UnbuildableCommandPlugin, "raised in anybind_commands"),
    ],
)
def test_plugin_commands_cannot_take_over_or_break_the_cli(plugin, message):
    from anybind.cli import build_app

    host, warnings = make_host()
    host.add_plugin(plugin(), "bad")
    host.add_plugin(CommandPlugin(), "good")
    app = build_app()
    callback, groups = app.registered_callback, list(app.registered_groups)
    host.add_commands(app)
    assert host.plugins["bad"].status == "failed"
    assert message in warnings[0] and "'bad'" in warnings[0]
    assert app.registered_callback is callback and app.registered_groups == groups
    assert host.plugins["good"].registered["commands"] == ["hello-world"]
    typer.main.get_command(app)  # the CLI still builds


def test_system_exit_in_a_plugin_is_contained(monkeypatch):
    class Exits:
        @hookimpl
        def anybind_modalities(self, register: Any) -> None:
            raise SystemExit(5)

    def exit_at_import() -> Any:
        raise SystemExit(3)

    monkeypatch.setattr(metadata, "entry_points", lambda group: [FakeEntryPoint("quitter", exit_at_import)])
    host, warnings = make_host()
    host.load_entry_points()
    host.add_plugin(Exits(), "exits")
    assert host.plugins["quitter"].status == "failed" and host.plugins["exits"].status == "failed"
    assert len(warnings) == 2


def test_hook_implementations_may_omit_arguments():
    calls = []

    class NoArgs:
        @hookimpl
        def anybind_spaces(self) -> None:
            calls.append("called")

    host, warnings = make_host()
    host.add_plugin(NoArgs(), "noargs")
    assert calls == ["called"] and warnings == [] and host.plugins["noargs"].status == "loaded"


def test_names_compare_like_pypi_names_and_unknown_names_are_reported(monkeypatch):
    eps = [FakeEntryPoint("depth", DepthPlugin, "Depth_Plugins")]
    monkeypatch.setattr(metadata, "entry_points", lambda group: eps)
    host, warnings = make_host(allow={"depth-plugins", "nonexistent"})
    host.load_entry_points()
    assert "depth" in host.modalities
    assert warnings == [
        "ANYBIND_LOAD_PLUGINS names 'nonexistent', but no installed plugin or distribution has that name"
    ]


def test_aliases_must_be_a_sequence_of_names():
    class StringAliases:
        @hookimpl
        def anybind_encoders(self, register: Any) -> None:
            register("fake", lambda ref, options: None, aliases="xyz")

    host, warnings = make_host()
    host.add_plugin(StringAliases(), "aliases")
    assert "pass a list or tuple" in warnings[0] and "x" not in host.encoders
