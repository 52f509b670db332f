"""``anybind info``, ``anybind remove`` and ``anybind optimize``: inspect and maintain a store."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from anybind.store import Store

from .common import DbOption, JsonOption, emit_json, warn


def info(
    db: DbOption,
    check_recall: Annotated[
        bool, typer.Option("--check-recall", help="Measure ANN recall@10 of each partition against exact search.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """The store's space, items per partition, index types and bytes on disk."""
    with Store.open(db, create=False) as store:
        data = store.info()
        recall = store.check_recall() if check_recall else {}
    for name, value in recall.items():
        data["partitions"][name]["recall@10"] = value["recall"]
    if json_output:
        emit_json(data)
        return
    space = data["space"]
    console = Console()
    console.print(
        f"store {data['path']}  generation {data['generation']}  {data['items']} items  {data['bytes']:,} bytes"
    )
    console.print(f"space {space['name']} ({space['dim']}-d, {space['fingerprint']})", highlight=False)
    table = Table()
    columns = ["partition", "items", "index", "params", "bytes"] + (["recall@10"] if check_recall else [])
    for column in columns:
        table.add_column(column)
    for name, part in data["partitions"].items():
        index = part["index"] + (f" (until trained: {part['requested_index']})" if part["pending_training"] else "")
        params = ", ".join(f"{k}={v}" for k, v in part["params"].items())
        row = [name, str(part["count"]), index, params, f"{part['bytes']:,}"]
        if check_recall:
            row.append("" if part.get("recall@10") is None else f"{part['recall@10']:.3f}")
        table.add_row(*row)
    console.print(table)


def remove(
    db: DbOption,
    ids: Annotated[list[int], typer.Argument(help="Item ids (from `anybind search`).")],
    json_output: JsonOption = False,
) -> None:
    """Remove items by id in one commit. Exit 1 if some ids were not in the store."""
    with Store.open(db, create=False) as store:
        report = store.remove(ids)
    if json_output:
        emit_json({"removed": report.removed, "missing": report.missing, "generation": report.generation})
    print(f"anybind: removed {len(report.removed)} items from {db}", file=sys.stderr)
    if report.missing:
        warn(f"not in the store: {', '.join(map(str, report.missing))}")
        raise typer.Exit(1)


def optimize(
    db: DbOption,
    modality: Annotated[str | None, typer.Option("--modality", "-m", help="Only this partition.")] = None,
    index_type: Annotated[
        str | None, typer.Option("--index", help="Rebuild as this index_factory string (default: IVF sized to n).")
    ] = None,
    target_recall: Annotated[
        float, typer.Option("--target-recall", min=0.01, max=1.0, help="Recall@10 that nprobe/efSearch are tuned to.")
    ] = 0.95,
    json_output: JsonOption = False,
) -> None:
    """Rebuild grown Flat partitions as IVF (or as --index) and tune search parameters to a target recall."""
    with Store.open(db, create=False) as store:
        report = store.optimize(modality=modality, index=index_type, target_recall=target_recall)
    if json_output:
        emit_json(report)
        return
    for name, entry in report.items():
        if entry["action"] == "kept":
            print(f"{name}: kept {entry['index']} ({entry['count']} items; {entry['reason']})")
        else:
            recall = next(v for k, v in entry.items() if k.startswith("recall@"))
            params = ", ".join(f"{k}={v}" for k, v in entry["params"].items()) or "defaults"
            verb = "rebuilt as" if entry["action"] == "rebuilt" else "tuned"
            print(f"{name}: {verb} {entry['index']} ({entry['count']} items), {params}, recall@10 {recall:.3f}")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("remove")(remove)
    app.command("optimize")(optimize)
