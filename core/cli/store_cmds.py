"""``anybind info``, ``anybind remove`` and ``anybind optimize``: inspect and maintain a store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from anybind.errors import StoreError
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


def check(db: DbOption, json_output: JsonOption = False) -> None:
    """Verify every file of a store (checksums, counts, ids, vectors, SQLite integrity). Exit 2 if damaged."""
    from anybind.store.check import check as check_store

    if not Path(db).is_dir():
        raise StoreError(f"{db}: no such store directory")
    report = check_store(Path(db))
    if json_output:
        emit_json(report)
    else:
        state = "ok" if report["ok"] else "DAMAGED"
        counts = ", ".join(f"{name} {part['count']}" for name, part in report["partitions"].items()) or "no partitions"
        print(f"store {db}: {state} (generation {report.get('generation', '?')}; {counts})")
        for problem in report["problems"]:
            print(f"  problem: {problem}")
        for stray in report["stray"]:
            print(f"  stray file (deleted by the next write): {stray}")
        if not report["ok"]:
            print(f"  what to do: {report['hint']}")
    if not report["ok"]:
        raise typer.Exit(2)


def migrate(db: DbOption, json_output: JsonOption = False) -> None:
    """Convert a store of format 1 (anybind 0.1) to format 2 in place; every item is kept."""
    from anybind.store.manifest import FORMAT_VERSION, read_manifest, read_raw
    from anybind.store.migrate import migrate_v1

    found = read_raw(Path(db)).get("format")
    if found not in (1, FORMAT_VERSION):
        read_manifest(Path(db))  # the error that says which format this is and what to do
    if found != 1:
        print(f"anybind: {db} is already format {found}; nothing to migrate", file=sys.stderr)
        result = {"generation": None, "partitions": {}, "migrated": False}
    else:
        result = {**migrate_v1(Path(db)), "migrated": True}
        counts = ", ".join(f"{n} {c}" for n, c in result["partitions"].items())
        print(f"anybind: migrated {db} to format 2 ({counts})", file=sys.stderr)
    if json_output:
        emit_json(result)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("remove")(remove)
    app.command("optimize")(optimize)
    app.command("check")(check)
    app.command("migrate")(migrate)
