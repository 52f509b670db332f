"""``anybind embed``: embed a few items for a quick check; bad items are reported and the rest kept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anybind.errors import ItemError, SpaceError
from anybind.modality import detect
from anybind.plugin_host import get_host
from anybind.space import Space
from anybind.space_loader import load_space

from .common import DeviceOption, JsonOption, SpaceOption, emit_json, warn


def _inputs(items: list[str], modality: str | None) -> tuple[dict[str, list[int]], list[Any], dict[int, ItemError]]:
    """Items grouped by modality, the value to embed for each, and the items that failed detection.

    With ``--modality``, every argument goes in as given (a string is the text itself for ``text``, a
    path for file modalities). Without it, every argument must be a file: its content decides the
    modality, and it goes in as a ``Path`` so that text files are read, not their names embedded.
    """
    if modality is not None:
        return {modality: list(range(len(items)))}, list(items), {}
    groups: dict[str, list[int]] = {}
    failed: dict[int, ItemError] = {}
    modalities = [entry.value for entry in get_host().modalities.entries()]
    for index, item in enumerate(items):
        if not os.path.exists(item):
            failed[index] = ItemError(item, "no such file (to embed a string, pass --modality text)")
            continue
        try:
            groups.setdefault(detect(item, modalities).name, []).append(index)
        except ItemError as exc:
            failed[index] = exc
    return groups, [Path(item) for item in items], failed


def _embed_groups(
    space: Space, groups: dict[str, list[int]], values: list[Any], failed: dict[int, ItemError]
) -> dict[int, tuple[str, np.ndarray]]:
    vectors: dict[int, tuple[str, np.ndarray]] = {}
    for name, positions in groups.items():
        try:
            result = space.try_embed(name, [values[i] for i in positions])
        except SpaceError as exc:  # this space has no route for the modality: its items fail, not the run
            failed.update({i: ItemError(str(values[i]), str(exc)) for i in positions})
            continue
        for vector, local in zip(result.vectors, result.indices, strict=True):
            vectors[positions[local]] = (name, vector)
        for local, error in zip(result.failed, result.errors, strict=True):
            failed[positions[local]] = error
    return vectors


def embed(
    items: Annotated[list[str], typer.Argument(help="File paths, or strings with --modality text.")],
    space: SpaceOption,
    modality: Annotated[
        str | None, typer.Option("--modality", "-m", help="Modality of every item (default: sniff each file).")
    ] = None,
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Items per encoder call.")] = 32,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow model repositories to run their own code.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Embed items into the space; prints vectors (unit norm, anchor space). Exit 1 if any item failed."""
    loaded = load_space(space, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)
    if modality is not None:
        loaded.route(modality)  # an unknown modality or one without a route is an error for the whole run
    groups, values, failed = _inputs(items, modality)
    vectors = _embed_groups(loaded, groups, values, failed)
    for index in sorted(failed):
        warn(str(failed[index]))
    if json_output:
        emit_json(
            {
                "space": loaded.name,
                "fingerprint": loaded.fingerprint,
                "dim": loaded.dim,
                "results": [
                    {"index": i, "item": items[i], "modality": name, "vector": vector.tolist()}
                    for i, (name, vector) in sorted(vectors.items())
                ],
                "errors": [{"index": i, "item": items[i], "error": failed[i].reason} for i in sorted(failed)],
            }
        )
    else:
        table = Table(title=escape(f"{loaded.name} ({loaded.dim}-d, {loaded.fingerprint})"))
        for column in ("item", "modality", "norm", "vector"):
            table.add_column(column)
        for i, (name, vector) in sorted(vectors.items()):
            head = ", ".join(f"{x:+.4f}" for x in vector[:4])
            table.add_row(escape(items[i]), name, f"{np.linalg.norm(vector):.4f}", escape(f"[{head}, ...]"))
        Console().print(table)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
