"""``anybind bind train`` and ``anybind bind info``: learn a binding into a space, and show what one holds.

``train`` embeds pairs (``--pairs``: media with the image they go with; ``--videos``: each audio chunk of a
video's sound with the frame at its middle; or ``--captions`` for a text bridge), trains a linear or MLP
head with InfoNCE against the frozen anchor vectors, and writes
``OUT.safetensors`` + ``OUT.json``. Rows that cannot be embedded are listed on stderr and dropped; the
rest train (exit 1 when some were dropped, as ``anybind index`` does for files).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from anybind.bindings import KINDS, LearnedBinding, binding_paths, read_binding, save_binding, train_binding
from anybind.bindings.pairs import PairSet, Skipped, pairs_from_captions, pairs_from_file
from anybind.bindings.train import check_settings
from anybind.errors import ItemError, SpaceError
from anybind.space import Space
from anybind.space_config import split_spec
from anybind.space_loader import load_space

from .common import DeviceOption, JsonOption, SpaceOption, emit_json

BRIDGES = ("text",)

bind_app = typer.Typer(
    name="bind",
    help="Train learned bindings (linear/MLP heads into the anchor space) and inspect binding files.",
    no_args_is_help=True,
)


def _absolute_spec(spec: str) -> str:
    """``clip:./dir`` -> ``clip:/abs/dir`` for local checkpoints (as space specs are), so both load once."""
    name, ref = split_spec(spec)
    return f"{name}:{os.path.abspath(ref)}" if os.path.exists(ref) else spec


def _check_out(out: Path) -> None:
    weights, _ = binding_paths(out)
    if not weights.parent.is_dir():
        raise typer.BadParameter(f"folder {weights.parent} does not exist", param_hint="--out")


def _source_info(loaded: Space, encoder: str, modality: str) -> dict[str, Any]:
    """What the binding records about its encoders; errors if ``encoder`` cannot embed ``modality`` at all."""
    mod = loaded.host.modalities.get(modality)
    source = loaded.load_encoder(encoder)
    if mod.tower not in source.towers:
        raise SpaceError(
            f"encoder {encoder!r} has no {mod.tower!r} tower for modality {modality!r} (it has {sorted(source.towers)})"
        )
    return {
        "source": source.id,
        "source_spec": encoder,
        "source_modality": modality,
        "source_tower": mod.tower,
        "anchor": loaded.anchor.id,
        "anchor_spec": loaded.config.anchor,
    }


def file_pairs(loaded: Space, encoder: str, modality: str, pairs: Path) -> tuple[PairSet, dict[str, Any]]:
    """Pairs of ``modality`` items and images from a pairs file, and the binding's info."""
    info = {**_source_info(loaded, encoder, modality), "target_modality": "image"}
    return pairs_from_file(loaded, encoder, modality, pairs), info


def bridge_pairs(
    loaded: Space, encoder: str, modality: str, bridge: str, captions: Path
) -> tuple[PairSet, dict[str, Any]]:
    """Caption pairs for a ``bridge`` (text) binding that applies to ``modality``, and the binding's info."""
    _source_info(loaded, encoder, modality)  # the encoder must embed what the binding is for (audio)
    info = _source_info(loaded, encoder, bridge)
    loaded.route(bridge)  # and the space must embed the bridge modality itself (CLIP text)
    info.update(target_modality=bridge, bridge=bridge, applies_to=modality)
    return pairs_from_captions(loaded, encoder, captions), info


def video_pairs(loaded: Space, encoder: str, videos: list[Path]) -> tuple[PairSet, dict[str, Any]]:
    """(audio chunk, frame) pairs from videos (files, or folders searched recursively), and the binding's info."""
    from anybind.bindings.video_pairs import harvest_video_pairs
    from anybind.modality import detect
    from anybind.store.walk import walk_files

    info = {**_source_info(loaded, encoder, "audio"), "target_modality": "image"}
    mods = [e.value for e in loaded.host.modalities.entries()]
    files, skipped = [], []
    for entry in walk_files(videos, recursive=True):
        if isinstance(entry, ItemError):
            skipped.append(Skipped(entry.source, entry))
            continue
        try:
            if detect(entry, mods).name == "video":
                files.append(entry)
        except ItemError:
            continue  # not a video: folders hold other files too
    if not files and not skipped:
        raise SpaceError(f"no video files in {', '.join(map(str, videos))}")
    pair_set = harvest_video_pairs(loaded, encoder, files)
    pair_set.skipped[:0] = skipped
    return pair_set, info


def _report_skipped(pair_set: PairSet) -> None:
    if not pair_set.skipped:
        return
    total = len(pair_set.skipped) + len(pair_set.source)
    print(f"anybind: {len(pair_set.skipped)} of {total} pairs skipped:", file=sys.stderr)
    counts = Counter(str(skipped.error) for skipped in pair_set.skipped)
    for message, count in counts.items():
        suffix = f" ({count} rows)" if count > 1 else ""
        print(f"  skipped: {message}{suffix}", file=sys.stderr)


def _progress_bar(disabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=disabled,
        transient=True,
    )


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _recall_line(recall: dict[str, float] | None) -> str:
    if not recall:
        return "not measured (no held-out pairs)"
    ordered = sorted(recall.items(), key=lambda item: int(item[0][2:]))  # JSON sorts r@10 before r@5
    return "  ".join(f"R@{key[2:]} {value:.3f}" for key, value in ordered)


@bind_app.command("train")
def train(
    space: SpaceOption,
    encoder: Annotated[
        str, typer.Option("--encoder", "-e", help="Source encoder spec whose native vectors get bound (clap:DIR).")
    ],
    modality: Annotated[
        str, typer.Option("--modality", "-m", help="Modality the binding is for (audio); with --pairs, the media's.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output name: writes OUT.safetensors and OUT.json.")],
    pairs: Annotated[
        Path | None,
        typer.Option("--pairs", help="CSV (header media,image) or JSONL ({media, image}); paths relative to it."),
    ] = None,
    bridge: Annotated[
        str | None, typer.Option("--bridge", help="Learn through a modality both encoders embed: text.")
    ] = None,
    captions: Annotated[
        Path | None, typer.Option("--captions", help="Captions file for --bridge text (one caption per line).")
    ] = None,
    videos: Annotated[
        list[Path] | None,
        typer.Option("--videos", help="Videos or folders: each audio chunk pairs with the frame at its middle."),
    ] = None,
    kind: Annotated[str, typer.Option("--kind", help="linear or mlp (linear skip + GELU residual).")] = "linear",
    hidden: Annotated[
        int | None, typer.Option("--hidden", min=1, help="MLP hidden width (default: widest dim).")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Most epochs to train.")] = 200,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-3,
    temperature: Annotated[float, typer.Option("--temperature", help="InfoNCE temperature.")] = 0.05,
    holdout: Annotated[
        float, typer.Option("--holdout", help="Share of pairs held out (early stopping, recall).")
    ] = 0.2,
    patience: Annotated[
        int, typer.Option("--patience", min=1, help="Epochs without held-out gain before stopping.")
    ] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out split, shuffles and init.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Pairs per InfoNCE step (negatives).")] = 256,
    embed_batch_size: Annotated[int, typer.Option("--embed-batch-size", min=1, help="Items per encoder call.")] = 32,
    device: DeviceOption = "auto",
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar on stderr.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Train a binding from ENCODER's native space into the space's anchor space; writes OUT.{safetensors,json}.

    Exit 1 when some pairs were skipped (listed on stderr; the binding is still written from the rest).
    """
    bridge = _check_sources(pairs, bridge, captions, videos, modality)
    if kind not in KINDS:
        raise typer.BadParameter(f"{kind!r}: choose one of {', '.join(KINDS)}", param_hint="--kind")
    settings = dict(
        temperature=temperature, holdout=holdout, epochs=epochs, lr=lr, batch_size=batch_size, patience=patience
    )
    check_settings(kind, hidden, **settings)  # before minutes of embedding, not after
    _check_out(out)
    loaded = load_space(space, device=device, batch_size=embed_batch_size)
    with Console(stderr=True).status("embedding pairs") if not no_progress else contextlib.nullcontext():
        source_spec = _absolute_spec(encoder)
        if pairs is not None:
            pair_set, info = file_pairs(loaded, source_spec, modality, pairs)
        elif videos:
            pair_set, info = video_pairs(loaded, source_spec, videos)
        else:
            assert captions is not None and bridge is not None  # _check_sources
            pair_set, info = bridge_pairs(loaded, source_spec, modality, bridge, captions)
    _report_skipped(pair_set)
    info["training"] = {**pair_set.summary, "skipped": len(pair_set.skipped)}
    with _progress_bar(no_progress) as bar:
        task = bar.add_task("training", total=epochs)

        def progress(epoch: int, total: int, metrics: dict[str, float]) -> None:
            r1 = metrics.get("r@1")
            described = "training" + (f" (held-out R@1 {r1:.3f})" if r1 is not None else "")
            bar.update(task, completed=epoch, description=described)

        binding, report = train_binding(
            pair_set.source,
            pair_set.target,
            kind=kind,
            hidden=hidden,
            seed=seed,
            progress=progress,
            info=info,
            **settings,
        )
    weights_path, info_path = save_binding(binding, out)
    _print_summary(binding, report, len(pair_set.skipped), weights_path, info_path, json_output)
    if pair_set.skipped:
        raise typer.Exit(1)


def _check_sources(
    pairs: Path | None, bridge: str | None, captions: Path | None, videos: list[Path] | None, modality: str
) -> str | None:
    """Exactly one pair source; returns the bridge modality (``None`` for a pairs file or videos)."""
    if sum(source is not None and source != [] for source in (pairs, captions, videos)) != 1:
        raise typer.BadParameter(
            "give one of --pairs FILE, --videos PATH... or --bridge text --captions FILE", param_hint="--pairs"
        )
    if videos:
        if bridge is not None:
            raise typer.BadParameter("--bridge learns from --captions FILE, not from --videos", param_hint="--bridge")
        if modality != "audio":
            raise typer.BadParameter(
                f"--videos pairs a video's sound with its frames: it trains an audio binding, not {modality!r}",
                param_hint="--modality",
            )
        return None
    if captions is None:
        if bridge is not None:
            raise typer.BadParameter("--bridge learns from --captions FILE, not from --pairs", param_hint="--bridge")
        return None
    bridge = bridge or "text"
    if bridge not in BRIDGES:
        raise typer.BadParameter(f"{bridge!r}: only {', '.join(BRIDGES)} is supported", param_hint="--bridge")
    return bridge


def _print_summary(
    binding: LearnedBinding, report: dict[str, Any], skipped: int, weights: Path, info: Path, json_output: bool
) -> None:
    if json_output:
        emit_json(
            {
                "id": binding.id,
                "kind": binding.kind,
                "source_dim": binding.source_dim,
                "target_dim": binding.target_dim,
                "pairs": report["pairs"],
                "skipped": skipped,
                "train": report["train"],
                "held_out": report["held_out"],
                "recall": report["recall"],
                "epochs_run": report["epochs_run"],
                "best_epoch": report["best_epoch"],
                "files": {"weights": str(weights), "info": str(info)},
            }
        )
        return
    typer.echo(f"trained {binding.kind} binding {binding.id} ({binding.source_dim} -> {binding.target_dim})")
    typer.echo(
        f"pairs: {report['pairs']} used, {skipped} skipped ({report['train']} train, {report['held_out']} held out)"
    )
    typer.echo(f"held-out recall: {_recall_line(report['recall'])}")
    typer.echo(f"epochs: {report['epochs_run']} run, best {report['best_epoch']}")
    typer.echo(f"wrote {weights}\n      {info}")


def _info_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    training = info.get("training") or {}
    dims = f"{info['source_dim']} -> {info['target_dim']}" + (
        f" (hidden {info['hidden']})" if info.get("hidden") else ""
    )
    rows = [
        ("id", info.get("id", "")),
        ("kind", info["kind"]),
        ("dims", dims),
        (
            "source",
            f"{info.get('source', '?')} ({info.get('source_modality', '?')} via {info.get('source_tower', '?')})",
        ),
        ("anchor", str(info.get("anchor", "?"))),
    ]
    if info.get("bridge"):
        rows.append(("bridge", f"{info['bridge']} (applies to {info.get('applies_to', '?')})"))
    if training:
        rows += [
            (
                "pairs",
                f"{_fmt(training.get('pairs'))} from {training.get('pairs_source', '?')}, "
                f"{_fmt(training.get('skipped', 0))} skipped",
            ),
            (
                "split",
                f"{_fmt(training.get('train'))} train, {_fmt(training.get('held_out'))} held out "
                f"(seed {_fmt(training.get('seed'))})",
            ),
            (
                "epochs",
                f"{_fmt(training.get('epochs_run'))} run of {_fmt(training.get('epochs'))}, "
                f"best {_fmt(training.get('best_epoch'))}",
            ),
            (
                "training",
                f"temperature {_fmt(training.get('temperature'))}, lr {training.get('lr', '-')}, "
                f"batch {_fmt(training.get('batch_size'))}",
            ),
        ]
    rows += [
        ("held-out recall", _recall_line(info.get("held_out_recall"))),
        ("created", f"{info.get('created', '?')} (anybind {info.get('anybind_version', '?')})"),
    ]
    return rows


@bind_app.command("info")
def info(
    file: Annotated[Path, typer.Argument(help="A binding: NAME.json, NAME.safetensors or NAME.")],
    json_output: JsonOption = False,
) -> None:
    """What a binding file holds: kind, dims, source and anchor encoders, bridge, training, held-out recall."""
    binding = read_binding(file)
    weights_path, info_path = binding_paths(file)
    data = {**binding.info, "files": {"weights": str(weights_path), "info": str(info_path)}}
    if json_output:
        emit_json(data)
        return
    table = Table(title=escape(str(info_path)), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in _info_rows(binding.info):
        table.add_row(name, escape(value))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(bind_app, name="bind")
