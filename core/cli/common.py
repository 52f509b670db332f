"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from anybind import __version__
from anybind.store.store import DEFAULT_SPACE


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"anybind {__version__}")
        raise typer.Exit()


def _check_plugin_flags(values: list[str]) -> list[str]:
    for value in values:
        if not value.startswith("no:") or len(value) <= 3:
            raise typer.BadParameter(f"{value!r}: only no:NAME (block plugin NAME) is supported")
    return values


def root_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    plugin: Annotated[
        list[str],
        typer.Option("-p", "--plugin", callback=_check_plugin_flags, help="no:NAME blocks plugin NAME (repeatable)."),
    ] = [],  # noqa: B006 - typer reads the default
) -> None:
    """Any-modality retrieval in one image-anchored embedding space."""


def emit_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    json.dump(data, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def needs_migration(db: str | Path) -> bool:
    """Whether ``db`` holds a store of format 1 (which a write migrates first, saying so)."""
    try:
        return json.loads((Path(db) / "manifest.json").read_bytes()).get("format") == 1
    except (OSError, ValueError, AttributeError):
        return False


def warn(message: str) -> None:
    print(f"anybind: {message}", file=sys.stderr)


SpaceOption = Annotated[
    str,
    typer.Option(
        "--space",
        "-s",
        envvar="ANYBIND_SPACE",
        default_factory=lambda: DEFAULT_SPACE,
        show_default=False,
        help=(
            "Space: ENCODER:REF (clip:<hub id|dir>, siglip:..., mini:<dir>), a .toml space file, or a preset name; "
            f"default {DEFAULT_SPACE}, the small space shipped with anybind."
        ),
    ),
]
OptionalSpaceOption = Annotated[
    str | None,
    typer.Option(
        "--space",
        "-s",
        envvar="ANYBIND_SPACE",
        show_default=False,
        help=(
            f"Space of a new store (ENCODER:REF, .toml file or preset; default {DEFAULT_SPACE}); an existing store "
            "uses its own."
        ),
    ),
]
DbOption = Annotated[
    Path, typer.Option("--db", envvar="ANYBIND_DB", help="Store directory (created by `anybind index`).")
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def parse_pairs(values: list[str], option: str) -> dict[str, list[str]]:
    """``KEY=VALUE`` options -> {key: [values]}; a malformed one is a usage error naming the option."""
    pairs: dict[str, list[str]] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint=option)
        pairs.setdefault(key.strip(), []).append(rest)
    return pairs
