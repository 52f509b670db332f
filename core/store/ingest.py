"""``store.add_files`` / ``anybind index``: walk paths, sniff, decode in worker threads, embed, commit.

Decoding (and hashing) runs in a thread pool a bounded distance ahead of the encoder, so the model is fed
while the next files are read. Every file that cannot be indexed is reported with its reason and skipped;
the rest is committed every ``commit_every`` items and at the end (each commit is one generation).

Audio and video files stream through their modality's ``segment`` function in the main thread (video decodes
in its own child process), one item per segment with ``start``/``end``; their parts share encoder batches
across files (:class:`~anybind.segment_embedding.SegmentBatcher`). A file's segments are staged only once all
of them are embedded, so a commit never holds part of a file, and a file that fails half-way is dropped whole.
With ``audio_tracks=True`` a video's sound is also indexed, as ``audio`` items with the video's path and times.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anybind.errors import ItemError, SpaceError
from anybind.modality import Modality, describe_item, detect
from anybind.segment_embedding import SegmentBatcher, SegmentedItem, lazy_segments
from anybind.segments import SegmentPlan
from anybind.space import decode_item

from .inputs import check_keys
from .metadata import NewItem
from .records import IndexReport, file_digest, metadata_list
from .walk import walk_files

if TYPE_CHECKING:
    from anybind.space import Space

    from .writer import Writer

Progress = Callable[[int, int], None]


@dataclass
class Prepared:
    path: str
    modality: str
    digest: str
    value: Any = None
    unchanged: bool = False


def _prepare(
    path: Path,
    forced: Modality | None,
    modalities: Sequence[Modality],
    routed: set[str],
    known: Mapping[str, str | None],
    needs_track: Collection[str] = (),
) -> Prepared:
    """Hash, sniff and decode one file (runs in a worker thread). Raises ItemError naming the file.

    ``needs_track``: paths indexed before without their sound track, re-indexed when tracks are asked for.
    """
    label = str(path)
    try:
        digest = file_digest(path)
    except OSError as exc:
        raise ItemError(label, f"cannot read: {exc.strerror or exc}") from None
    modality = forced or detect(path, modalities)
    if modality.name not in routed:
        embeds = ", ".join(sorted(routed))
        raise ItemError(label, f"is {modality.name!r}, which this store's space cannot embed (it embeds {embeds})")
    if known.get(label) == digest and not (label in needs_track and "audio_track" in modality.extra):
        return Prepared(label, modality.name, digest, unchanged=True)
    if modality.temporal:  # streamed by the main thread (see module docstring)
        return Prepared(label, modality.name, digest)
    return Prepared(label, modality.name, digest, decode_item(modality, path, 0))


class Ingest:
    """Embeds inputs with a space and commits them through a writer: files (``files``) and in-memory items
    (``items``) alike."""

    def __init__(self, space: Space, writer: Writer, exclude: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.space, self.writer, self.exclude = space, writer, list(exclude)

    def files(self, paths: Sequence[str | os.PathLike[str]], **options: Any) -> IndexReport:
        return index_files(self, paths, **options)

    def items(
        self, modality: str, items: Any, *, metadata: Any = None, keys: Any = None, upsert: bool = False
    ) -> IndexReport:
        return add_items(self, modality, items, metadata=metadata, keys=keys, upsert=upsert)


def index_files(
    store: Ingest,
    paths: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    modality: str | None = None,
    metadata: Mapping[str, Any] | Callable[[str], Mapping[str, Any]] | None = None,
    workers: int | None = None,
    commit_every: int = 1024,
    audio_tracks: bool = False,
    progress: Progress | None = None,
) -> IndexReport:
    space = store.space
    report = IndexReport()
    files: list[Path] = []
    for entry in walk_files(paths, recursive=recursive, exclude=store.exclude):
        if isinstance(entry, ItemError):
            report.errors.append(entry)
        else:
            files.append(entry)
    routed = set(space.modalities)
    forced = None
    if modality is not None:
        forced, _ = space.route(modality)  # unknown or unroutable: an error for the whole run
    host_modalities = [e.value for e in space.host.modalities.entries()]
    by_name = {m.name: m for m in host_modalities}
    streams: dict[str, tuple[SegmentPlan, SegmentBatcher]] = {}

    def stream(name: str) -> tuple[SegmentPlan, SegmentBatcher]:
        if name not in streams:
            streams[name] = space.segment_batcher(name)
        return streams[name]

    if audio_tracks and "audio" not in routed:
        embeds = ", ".join(sorted(routed))
        raise SpaceError(f"audio_tracks: this store's space cannot embed audio (it embeds {embeds})")
    batch_size = max(1, space.options.batch_size)
    workers = workers or min(4, os.cpu_count() or 1)
    if progress:
        progress(0, len(files))
    writer = store.writer
    with writer.locked() as manifest:
        known_ids: dict[str, list[int]] = {}
        known: dict[str, str | None] = {}
        needs_track: set[str] = set()
        for uri, (digest, ids, kinds) in writer.db.files([str(f) for f in files], manifest.generation).items():
            known[uri], known_ids[uri] = digest, ids
            if audio_tracks and "audio" not in kinds:  # a video indexed without its sound (or a silent one)
                needs_track.add(uri)
        pending: dict[str, list[Prepared]] = {}
        staged: list[NewItem] = []
        staged_files: list[tuple[str, int]] = []  # (path, number of items) in staging order
        replacing: list[int] = []

        replaced_paths: set[str] = set()

        def replace(path: str) -> None:
            if path not in replaced_paths:
                replaced_paths.add(path)
                replacing.extend(known_ids.get(path, []))

        def commit() -> None:
            if not staged and not replacing:
                return
            ids = iter(writer.commit(staged, remove=replacing).ids)
            for path, count in staged_files:
                report.added.setdefault(path, []).extend(next(ids) for _ in range(count))
                if path in known_ids and path not in report.replaced:
                    report.replaced.append(path)
            staged.clear()
            staged_files.clear()
            replacing.clear()

        # A temporal file is one unit: its segments (and, for a video with audio_tracks, its sound's segments)
        # are staged together once every part is embedded, or not at all if any part failed.
        units: dict[int, tuple[Prepared, list[tuple[str, SegmentedItem]], list[int]]] = {}

        def finish(name: str, finished: list[SegmentedItem]) -> None:
            for item in finished:
                prepared, done, waiting = units[id(item.key)]
                done.append((name, item))
                waiting[0] -= 1
                if waiting[0] == 0:
                    del units[id(item.key)]
                    stage_unit(prepared, done)
            if len(staged) >= commit_every:
                commit()

        def stage_unit(prepared: Prepared, done: list[tuple[str, SegmentedItem]]) -> None:
            errors = [item.error for _, item in done if item.error is not None]
            if errors:  # the file's old items (if any) stay as they were
                report.errors.extend(errors)
                return
            meta = metadata_list(metadata, [prepared.path])[0]
            count = 0
            for name, item in done:
                assert item.vectors is not None
                for start, end, vector in zip(item.starts, item.ends, item.vectors, strict=True):
                    staged.append(
                        NewItem(
                            name,
                            vector,
                            uri=prepared.path,
                            start=start,
                            end=end,
                            metadata=meta,
                            content_hash=prepared.digest,
                        )
                    )
                    count += 1
            staged_files.append((prepared.path, count))
            replace(prepared.path)

        def feed_temporal(prepared: Prepared) -> None:
            modality = by_name[prepared.modality]
            assert modality.segment is not None
            track = modality.extra.get("audio_track") if audio_tracks else None
            units[id(prepared)] = (prepared, [], [2 if track is not None else 1])
            plan, batcher = stream(prepared.modality)
            finish(
                prepared.modality,
                batcher.feed(prepared, prepared.path, lazy_segments(modality.segment, prepared.path, plan)),
            )
            unit = units.get(id(prepared))
            if track is not None and unit is not None and any(item.error for _, item in unit[1]):
                track = None  # the picture already failed: its sound could not be stored without it
                unit[2][0] -= 1
                if unit[2][0] == 0:
                    del units[id(prepared)]
                    stage_unit(prepared, unit[1])
            if track is not None:  # a video without sound has no track segments: not an error
                plan, batcher = stream("audio")
                label = f"{prepared.path} (audio track)"
                finish("audio", batcher.feed(prepared, label, lazy_segments(track, prepared.path, plan), optional=True))

        def encode(name: str) -> None:
            batch = pending.pop(name, [])
            if not batch:
                return
            result = space.try_encode(name, [p.value for p in batch], [p.path for p in batch])
            report.errors.extend(result.errors)
            metas = metadata_list(metadata, [p.path for p in batch])
            for vector, position in zip(result.vectors, result.indices, strict=True):
                prepared = batch[position]
                text = prepared.value if name == "text" and isinstance(prepared.value, str) else None
                meta, digest = metas[position], prepared.digest
                staged.append(NewItem(name, vector, uri=prepared.path, text=text, metadata=meta, content_hash=digest))
                staged_files.append((prepared.path, 1))
                replace(prepared.path)
            if len(staged) >= commit_every:
                commit()

        done = 0
        window: deque[Future[Prepared]] = deque()
        queue = iter(files)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="anybind-decode") as pool:
            while True:
                while len(window) < max(2 * batch_size, 4 * workers):
                    path = next(queue, None)
                    if path is None:
                        break
                    window.append(pool.submit(_prepare, path, forced, host_modalities, routed, known, needs_track))
                if not window:
                    break
                future = window.popleft()
                try:
                    prepared = future.result()
                except ItemError as exc:
                    report.errors.append(exc)
                except Exception as exc:  # pragma: no cover - a bug in a plugin's sniffer
                    report.errors.append(ItemError("<file>", f"{type(exc).__name__}: {exc}"))
                else:
                    if prepared.unchanged:
                        report.unchanged.append(prepared.path)
                    elif by_name[prepared.modality].temporal:
                        feed_temporal(prepared)
                    else:
                        pending.setdefault(prepared.modality, []).append(prepared)
                        if len(pending[prepared.modality]) >= batch_size:
                            encode(prepared.modality)
                        if len(staged) + sum(map(len, pending.values())) >= commit_every:
                            for name in sorted(pending):
                                encode(name)
                            commit()
                done += 1
                if progress:
                    progress(done, len(files))
        for name in sorted(pending):
            encode(name)
        for name, (_, batcher) in sorted(streams.items()):
            finish(name, batcher.flush())
        commit()
        assert writer.manifest is not None
        report.generation = writer.manifest.generation
    return report


def _embedded(
    space: Space, modality: str, seq: Sequence[Any], report: IndexReport
) -> Iterator[tuple[int, np.ndarray, list[tuple[float | None, float | None]]]]:
    """(position, vectors, spans) per input that embedded; errors go to the report."""
    mod, _ = space.route(modality)
    if mod.temporal:
        for item in space.try_embed_segments(modality, seq):
            if item.error is not None:
                report.errors.append(item.error)
            else:
                assert item.vectors is not None
                yield item.key, item.vectors, list(zip(item.starts, item.ends, strict=True))
        return
    result = space.try_embed(modality, seq)
    report.errors.extend(result.errors)
    for vector, position in zip(result.vectors, result.indices, strict=True):
        yield position, vector[None, :], [(None, None)]


def add_items(
    ingest: Ingest, modality: str, items: Any, *, metadata: Any = None, keys: Any = None, upsert: bool = False
) -> IndexReport:
    """Embed in-memory inputs (paths, strings, arrays) and commit every one that embedded, in one commit."""
    seq = [items] if isinstance(items, (str, bytes, os.PathLike)) else list(items)
    metas = metadata_list(metadata, seq)
    key_list = check_keys(keys, len(seq))
    report = IndexReport()
    new, labels = [], []
    for position, vectors, spans in _embedded(ingest.space, modality, seq, report):
        item = seq[position]
        uri = os.path.realpath(item) if isinstance(item, os.PathLike) else None
        if isinstance(item, str) and modality != "text":
            uri = os.path.realpath(item)
        text = item if isinstance(item, str) and uri is None else None
        digest = file_digest(uri) if uri and os.path.isfile(uri) else None
        key = key_list[position]
        for part, (vector, (start, end)) in enumerate(zip(vectors, spans, strict=True)):
            new.append(
                NewItem(
                    modality,
                    vector,
                    uri=uri,
                    start=start,
                    end=end,
                    text=text,
                    metadata=metas[position],
                    content_hash=digest,
                    key=key,
                    part=part,
                )
            )
            labels.append(describe_item(item, position))
    writer = ingest.writer
    with writer.locked() as manifest:
        report.generation = manifest.generation
        if new:
            commit = writer.commit(new, upsert=upsert)  # upsert: every segment of a replaced key goes
            for label, item_id in zip(labels, commit.ids, strict=True):
                report.added.setdefault(label, []).append(item_id)
            report.generation = commit.generation
    return report
