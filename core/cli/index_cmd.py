"""``anybind index``: add files and folders to a store; every file that fails is listed with its reason."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from anybind.store import Store

from .common import DbOption, DeviceOption, JsonOption, OptionalSpaceOption, emit_json, needs_migration, parse_pairs


def index(
    paths: Annotated[list[str], typer.Argument(help="Files and folders to index.")],
    db: DbOption,
    space: OptionalSpaceOption = None,
    modality: Annotated[
        str | None, typer.Option("--modality", "-m", help="Index every file as this modality (default: sniff each).")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Items per encoder call.")] = 32,
    device: DeviceOption = "auto",
    index_type: Annotated[
        str | None,
        typer.Option("--index", help="faiss index_factory string of a new store (Flat, HNSW32, IVF1024,Flat)."),
    ] = None,
    meta: Annotated[
        list[str], typer.Option("--meta", help="KEY=VALUE stored with every file indexed now (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Decoding threads (default: up to 4).")
    ] = None,
    audio_tracks: Annotated[
        bool,
        typer.Option(
            "--audio-tracks",
            help="Also index companion streams (each video's sound as audio items, same file and times).",
        ),
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar on stderr.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Index files into a store (created on first use; --space, default anybind-mini). Exit 1 if any file failed."""
    metadata = {key: values[-1] for key, values in parse_pairs(meta, "--meta").items()}
    if needs_migration(db):
        print(
            f"anybind: {db} is a store of format 1; migrating it to format 2 first (every item is kept)",
            file=sys.stderr,
        )
    store = Store.open(db, space=space, index=index_type, device=device, batch_size=batch_size, migrate=True)
    console = Console(stderr=True)
    with Progress(
        TextColumn("indexing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=no_progress,
        transient=True,
    ) as bar:
        task = bar.add_task("index", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = store.add_files(
            paths,
            recursive=recursive,
            modality=modality,
            metadata=metadata,
            workers=workers,
            audio_tracks=audio_tracks,
            progress=progress,
        )
    items = len(report.ids)
    summary = (
        f"indexed {len(report.added)} files ({items} items) into {db}; {len(report.unchanged)} unchanged, "
        f"{len(report.replaced)} replaced, {len(report.errors)} failed"
    )
    print(f"anybind: {summary}", file=sys.stderr)
    for error in report.errors:
        print(f"  failed: {error.source}: {error.reason}", file=sys.stderr)
    if json_output:
        emit_json({"db": str(db), **report.to_dict()})
    store.close()
    if report.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("index")(index)
