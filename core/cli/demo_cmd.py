"""``anybind demo``: index the sample corpus bundled with anybind-mini and query it in every direction, offline.

The corpus (``anybind/plugins/mini/sample/``) holds pictures, recordings and captions of a few concepts and
three short videos; ``sample.json`` says which concept each file shows (for a video: when each is on screen).
The demo indexes it into a temporary store (or ``--db DIR``, kept and re-used: unchanged files are skipped),
runs the fixed :data:`QUERIES`, and prints each query's top hits with their scores and whether the expected
concept is among them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from anybind.errors import AnybindError
from anybind.space_loader import load_space
from anybind.store import Hit, Store
from anybind.store.store import DEFAULT_SPACE

from .common import DeviceOption, JsonOption, emit_json

SAMPLE_PACKAGE = "anybind.plugins.mini"
MEDIA = ("image", "audio", "video", "text")


class DemoError(AnybindError):
    """The demo cannot run: its sample corpus is missing or unreadable, or its space does not load."""


@dataclass(frozen=True)
class Query:
    """One demo query: ``value`` is the text itself (``text``) or a file of the sample, relative to its folder."""

    direction: str
    modality: str
    value: str
    target: str
    expected: str


QUERIES: list[Query] = [
    Query("text → image", "text", "violin", "image", "violin"),
    Query("text → audio", "text", "a trumpet", "audio", "trumpet"),
    Query("image → audio", "image", "images/bird.png", "audio", "bird"),
    Query("audio → image", "audio", "audio/violin.flac", "image", "violin"),
    Query("audio → text", "audio", "audio/drum.flac", "text", "drum"),
    Query("text → video", "text", "a helicopter", "video", "helicopter"),
    Query("image → video", "image", "images/trumpet.png", "video", "trumpet"),
]
"""The demo's queries, in the order they are shown."""


@dataclass
class SampleFile:
    path: Path  # absolute
    name: str  # relative to the sample folder
    modality: str
    spans: list[tuple[str, float | None, float | None]] = field(default_factory=list)  # (concept, start, end)

    def concepts(self, start: float | None = None, end: float | None = None) -> list[str]:
        """Concepts of the file; for a segment (start, end), those on screen / heard during it."""
        found = []
        for concept, lo, hi in self.spans:
            if start is None or end is None or lo is None or hi is None or (lo < end and start < hi):
                found.append(concept)
        return list(dict.fromkeys(found))


@dataclass
class Sample:
    root: Path
    files: list[SampleFile]

    def by_path(self) -> dict[str, SampleFile]:
        return {os.path.realpath(f.path): f for f in self.files}


def sample_dir() -> Path:
    """The sample folder inside the installed ``anybind.plugins.mini`` package."""
    try:
        return Path(str(resources.files(SAMPLE_PACKAGE) / "sample"))
    except ModuleNotFoundError as exc:
        raise DemoError(f"the demo needs the {SAMPLE_PACKAGE} package, which is not installed ({exc})") from None


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DemoError(f"{where}: expected seconds, got {value!r}")
    return float(value)


def _concept(entry: dict[str, Any]) -> str | None:
    value = entry.get("label", entry.get("concept"))
    return value if isinstance(value, str) else None


def _spans(entry: dict[str, Any], where: str) -> list[tuple[str, float | None, float | None]]:
    """(concept, start, end) of a file: its ``label``, or each of its ``segments`` (label, start, end seconds)."""
    spans: list[tuple[str, float | None, float | None]] = []
    if (concept := _concept(entry)) is not None:
        spans.append((concept, None, None))
    for part in entry.get("segments") or []:
        concept = _concept(part) if isinstance(part, dict) else None
        if concept is None:
            raise DemoError(f"{where}: each segment needs a label, got {part!r}")
        spans.append((concept, _number(part.get("start"), where), _number(part.get("end"), where)))
    if not spans:
        raise DemoError(f"{where}: no label and no segments")
    return spans


def read_sample(root: Path) -> Sample:
    """Parse ``root/sample.json``; :class:`DemoError` naming the file if it is missing or malformed."""
    manifest = root / "sample.json"
    if not manifest.is_file():
        raise DemoError(
            f"the demo's sample corpus is missing from this install ({manifest} not found); reinstall anybind "
            "(pip install -e . from a clone)"
        )
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DemoError(f"{manifest}: cannot read the sample description: {exc}") from None
    entries = document.get("files") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise DemoError(f"{manifest}: expected a list of files under 'files'")
    files = []
    for position, entry in enumerate(entries):
        where = f"{manifest}: files[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise DemoError(f"{where}: each file needs a 'path'")
        name = entry["path"]
        modality = entry.get("modality")
        if modality not in MEDIA:
            raise DemoError(f"{where}: modality {modality!r} is not one of {', '.join(MEDIA)}")
        path = root / name
        if not path.is_file():
            raise DemoError(f"{path}: listed in {manifest} but missing; reinstall anybind")
        files.append(SampleFile(path, name, modality, _spans(entry, where)))
    return Sample(root, files)


def _query_input(query: Query, sample: Sample) -> str:
    if query.modality == "text":
        return query.value
    path = sample.root / query.value
    if not path.is_file():
        raise DemoError(f"{path}: the demo's query file is missing from the sample corpus; reinstall anybind")
    return str(path)


def _hit_record(hit: Hit, known: dict[str, SampleFile], expected: str) -> dict[str, Any]:
    entry = known.get(os.path.realpath(hit.uri)) if hit.uri else None
    concepts = entry.concepts(hit.start, hit.end) if entry is not None else []
    name = entry.name if entry is not None else (os.path.basename(hit.uri) if hit.uri else None)
    return {
        "id": hit.id,
        "uri": hit.uri,
        "name": name,
        "modality": hit.modality,
        "score": hit.score,
        "start": hit.start,
        "end": hit.end,
        "text": hit.text,
        "concepts": concepts,
        "match": expected in concepts,
    }


def _index(store: Store, sample: Sample, show_progress: bool) -> tuple[Any, float]:
    console = Console(stderr=True)
    started = time.perf_counter()
    with Progress(
        TextColumn("indexing the sample"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=True,
    ) as bar:
        task = bar.add_task("index", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = store.add_files([f.path for f in sample.files], progress=progress)
    return report, time.perf_counter() - started


def run_demo(db: Path | None, k: int, device: str, show_progress: bool) -> dict[str, Any]:
    """Index the sample into ``db`` (or a temporary store) and run :data:`QUERIES`; the ``--json`` document."""
    sample = read_sample(sample_dir())
    inputs = [_query_input(query, sample) for query in QUERIES]
    started = time.perf_counter()
    try:
        space = load_space(DEFAULT_SPACE, device=device)
        space.embed("text", ["warm-up"])  # loads the text tower's MiniLM now, so that the timings below are fair
    except AnybindError as exc:
        raise DemoError(
            f"the demo's space {DEFAULT_SPACE!r} failed to load: {exc} (is the mini plugin blocked, e.g. by "
            "ANYBIND_LOAD_PLUGINS or --plugin no:mini?)"
        ) from exc
    load_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="anybind-demo-") as scratch:
        path = Path(db) if db is not None else Path(scratch) / "store"
        with Store.open(path, space=space, device=device) as store:
            report, index_seconds = _index(store, sample, show_progress)
            known = sample.by_path()
            queries = []
            started = time.perf_counter()
            for query, value in zip(QUERIES, inputs, strict=True):
                result = store.search(query={query.modality: value}, to=query.target, k=k)
                hits = [_hit_record(hit, known, query.expected) for hit in result]
                rank = next((n for n, hit in enumerate(hits, 1) if hit["match"]), None)
                queries.append(
                    {
                        "direction": query.direction,
                        "modality": query.modality,
                        "query": query.value,
                        "target": query.target,
                        "expected": query.expected,
                        "expected_rank": rank,
                        "hits": hits,
                    }
                )
            search_seconds = time.perf_counter() - started
            partitions = {name: record.count for name, record in sorted(store.manifest.partitions.items())}
    return {
        "space": {"preset": DEFAULT_SPACE, "name": space.name, "fingerprint": space.fingerprint, "dim": space.dim},
        "sample": str(sample.root),
        "db": str(db) if db is not None else None,
        "k": k,
        "index": {
            "files": len(sample.files),
            "added": len(report.added),
            "unchanged": len(report.unchanged),
            "replaced": len(report.replaced),
            "items": sum(partitions.values()),
            "partitions": partitions,
            "errors": [{"item": e.source, "error": e.reason} for e in report.errors],
        },
        "seconds": {"load": load_seconds, "index": index_seconds, "search": search_seconds},
        "queries": queries,
    }


def _describe_query(entry: dict[str, Any]) -> str:
    return repr(entry["query"]) if entry["modality"] == "text" else os.path.basename(entry["query"])


def _describe_hit(hit: dict[str, Any]) -> str:
    label = os.path.basename(hit["name"]) if hit["name"] else f"#{hit['id']}"
    if hit["modality"] == "text" and hit["text"]:
        text = " ".join(hit["text"].split())
        label += f" “{text[:60]}{'…' if len(text) > 60 else ''}”"
    return label


def print_report(data: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"anybind demo: {DEFAULT_SPACE} ({data['space']['dim']}-d), top {data['k']} hits per query")
    table.add_column("direction, query", overflow="fold")
    table.add_column("#", no_wrap=True)
    table.add_column("hit", overflow="fold")
    table.add_column("segment", no_wrap=True)
    table.add_column("score", no_wrap=True, justify="right")
    for entry in data["queries"]:
        rank = entry["expected_rank"]
        found = f"[green]found #{rank}[/green]" if rank else "[red]missed[/red]"
        first = (
            f"[bold]{entry['direction']}[/bold]\n{escape(_describe_query(entry))}\n"
            f"expects {escape(entry['expected'])}: {found}"
        )
        for n, hit in enumerate(entry["hits"], 1):
            segment = f"{hit['start']:.1f}-{hit['end']:.1f} s" if hit["start"] is not None else ""
            mark = " [green]✓[/green]" if hit["match"] else ""
            table.add_row(first, str(n), escape(_describe_hit(hit)) + mark, segment, f"{hit['score']:.3f}")
            first = ""
        if not entry["hits"]:
            table.add_row(first, "", "(no hits)", "", "")
        table.add_section()
    console.print(table)
    index, seconds = data["index"], data["seconds"]
    where = f"store {data['db']} (kept)" if data["db"] else "temporary store (removed)"
    found = sum(1 for entry in data["queries"] if entry["expected_rank"])
    console.print(
        f"expected concept in the top {data['k']}: {found}/{len(data['queries'])} queries\n"
        f"model load {seconds['load']:.1f} s · index {seconds['index']:.1f} s ({index['added']} files added, "
        f"{index['unchanged']} unchanged; {index['items']} items) · search {seconds['search']:.2f} s "
        f"({len(data['queries'])} queries)\n{where}",
        highlight=False,
    )


def demo(
    db: Annotated[
        Path | None,
        typer.Option(
            "--db", help="Keep the demo's store in this directory (a second run re-uses it); default: temporary."
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Hits per query.")] = 3,
    device: DeviceOption = "auto",
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar on stderr.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Index the bundled sample (pictures, sounds, captions, videos) with anybind-mini and query it every way.

    Runs offline. Exit 1 if some sample file could not be indexed (the queries still run), 2 on an error.
    """
    data = run_demo(db, k, device, show_progress=not no_progress)
    if json_output:
        emit_json(data)
    else:
        print_report(data)
    for error in data["index"]["errors"]:
        print(f"anybind: failed to index {error['item']}: {error['error']}", file=sys.stderr)
    if data["index"]["errors"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
