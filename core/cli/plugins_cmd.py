"""``anybind plugins``: every plugin, its distribution and version, and what it registered."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anybind.plugin_host import PluginHost, get_host

from .common import JsonOption, emit_json


def plugins_report(host: PluginHost) -> dict[str, Any]:
    """The JSON document ``anybind plugins --json`` prints."""

    def owner(plugin: str) -> dict[str, Any]:
        info = host.plugins[plugin]
        return {"plugin": plugin, "distribution": info.distribution, "version": info.version}

    return {
        "plugins": [info.as_dict() for _, info in sorted(host.plugins.items())],
        "modalities": [
            {
                "name": e.name,
                "embeds_as": e.value.tower,
                "extensions": list(e.value.extensions),
                "description": e.description,
                **owner(e.plugin),
            }
            for e in host.modalities.entries()
        ],
        "encoders": [
            {"name": e.name, "aliases": list(e.aliases), "description": e.description, **owner(e.plugin)}
            for e in host.encoders.entries()
        ],
        "spaces": [
            {"name": e.name, "aliases": list(e.aliases), "description": e.description, **owner(e.plugin)}
            for e in host.spaces.entries()
        ],
    }


def plugins(json_output: JsonOption = False) -> None:
    """List plugins, their distributions, and the modalities, encoders and spaces each registered."""
    report = plugins_report(get_host())
    if json_output:
        emit_json(report)
        return
    table = Table(title="anybind plugins")
    for column in ("plugin", "distribution", "version", "status", "registered"):
        table.add_column(column)
    for info in report["plugins"]:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info["registered"].items())
        detail = registered or "; ".join(info["errors"])
        cells = (info["name"], info["distribution"] or "-", info["version"] or "-", info["status"], detail)
        table.add_row(*(escape(cell) for cell in cells))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
