"""``anybind search``: query a store with text or a file of any modality; table or JSON results."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anybind.store import SearchResult, Store

from .common import DbOption, DeviceOption, JsonOption, emit_json, parse_pairs


def where_values(raw: list[str]) -> dict[str, list[Any]]:
    """``--where k=v``: v matches as a string and, when it parses as a JSON number/bool/null, as that value."""
    where: dict[str, list[Any]] = {}
    for key, values in parse_pairs(raw, "--where").items():
        options: list[Any] = []
        for value in values:
            options.append(value)
            try:
                parsed = json.loads(value)
            except ValueError:
                continue
            if isinstance(parsed, int) and not isinstance(parsed, bool) and not -(2**63) <= parsed < 2**63:
                continue  # 20 digits: no JSON number a store holds can equal it; the string still matches
            if isinstance(parsed, float) and not math.isfinite(parsed):
                continue
            if parsed is None or isinstance(parsed, (bool, int, float)):
                options.append(parsed)
        where[key] = options
    return where


def _label(hit: Any) -> str:
    if hit.uri:
        return hit.uri
    return repr(hit.text) if hit.text is not None else f"#{hit.id}"


def print_table(result: SearchResult, title: str) -> None:
    table = Table(title=escape(title))
    for column in ("#", "id", "modality", "score", "z", "item", "segment", "metadata"):
        table.add_column(column, overflow="fold")
    for rank, hit in enumerate(result, 1):
        segment = f"{hit.start:.2f}-{hit.end:.2f}s" if hit.segment else ""
        meta = json.dumps(hit.metadata, ensure_ascii=False) if hit.metadata else ""
        table.add_row(
            str(rank),
            str(hit.id),
            hit.modality,
            f"{hit.score:.4f}",
            f"{hit.calibrated:+.2f}",
            escape(_label(hit)),
            segment,
            escape(meta),
        )
    Console().print(table)


def search(
    db: DbOption,
    text: Annotated[str | None, typer.Option("--text", "-t", help="Query text.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Query image file.")] = None,
    audio: Annotated[str | None, typer.Option("--audio", help="Query audio file.")] = None,
    video: Annotated[str | None, typer.Option("--video", help="Query video file.")] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Target modalities, comma-separated (default: every partition).")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Number of results.")] = 10,
    where: Annotated[
        list[str], typer.Option("--where", help="KEY=VALUE metadata filter (repeatable; same key = any of).")
    ] = [],  # noqa: B006 - typer reads the default
    rerank: Annotated[
        int | None, typer.Option("--rerank", min=1, help="Re-score this many ANN candidates exactly.")
    ] = None,
    segments: Annotated[
        bool, typer.Option("--segments", help="Every matching audio/video segment, not just each file's best.")
    ] = False,
    device: DeviceOption = "auto",
    json_output: JsonOption = False,
) -> None:
    """Search a store; several query options make a composed query (e.g. --image x.png --text "in blue")."""
    inputs = {
        name: value
        for name, value in (("text", text), ("image", image), ("audio", audio), ("video", video))
        if value is not None
    }
    if not inputs:
        raise typer.BadParameter("give a query: --text, --image, --audio or --video", param_hint="query")
    with Store.open(db, create=False, device=device) as store:
        result = store.search(
            query=inputs, to=to, k=k, where=where_values(where) or None, rerank=rerank, segments=segments
        )
        if json_output:
            emit_json({"db": str(db), "query": inputs, "k": k, **result.to_dict()})
        else:
            query = ", ".join(f"{name}={value!r}" for name, value in inputs.items())
            print_table(result, f"{query} -> {', '.join(result.partitions) or 'no partitions'}")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
