"""``anybind embed``: embed a few items for a quick check; bad items are reported and the rest kept."""

from __future__ import annotations

import os
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from anybind.errors import ItemError
from anybind.modality import detect
from anybind.plugin_host import get_host
from anybind.space_loader import load_space

from .common import DeviceOption, JsonOption, SpaceOption, emit_json, warn


def _group_by_modality(items: list[str], modality: str | None) -> tuple[dict[str, list[int]], list[ItemError]]:
    """Positions of items per modality; with no ``--modality``, each file's content decides."""
    if modality is not None:
        return {modality: list(range(len(items)))}, []
    groups: dict[str, list[int]] = {}
    failed: list[ItemError] = []
    modalities = [entry.value for entry in get_host().modalities.entries()]
    for index, item in enumerate(items):
        if not os.path.exists(item):
            failed.append(ItemError(item, "no such file (to embed a string, pass --modality text)"))
            continue
        try:
            groups.setdefault(detect(item, modalities).name, []).append(index)
        except ItemError as exc:
            failed.append(exc)
    return groups, failed


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
    groups, failed = _group_by_modality(items, modality)
    rows: dict[int, dict[str, Any]] = {}
    for name, positions in groups.items():
        result = loaded.try_embed(name, [items[i] for i in positions])
        for vector, local in zip(result.vectors, result.indices, strict=True):
            rows[positions[local]] = {"item": items[positions[local]], "modality": name, "vector": vector}
        failed.extend(result.errors)
    for error in failed:
        warn(str(error))
    ordered = [rows[i] for i in sorted(rows)]
    if json_output:
        emit_json(
            {
                "space": loaded.name,
                "fingerprint": loaded.fingerprint,
                "dim": loaded.dim,
                "results": [{**row, "vector": row["vector"].tolist()} for row in ordered],
                "errors": [{"item": error.source, "error": error.reason} for error in failed],
            }
        )
    else:
        table = Table(title=f"{loaded.name} ({loaded.dim}-d, {loaded.fingerprint})")
        for column in ("item", "modality", "norm", "vector"):
            table.add_column(column)
        for row in ordered:
            head = ", ".join(f"{x:+.4f}" for x in row["vector"][:4])
            table.add_row(row["item"], row["modality"], f"{np.linalg.norm(row['vector']):.4f}", f"[{head}, ...]")
        Console().print(table)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
