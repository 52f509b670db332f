"""``store.add_files`` / ``store.add`` / ``anybind index``: embed inputs with a space and commit them.

:class:`Ingest` is one pipeline with two sources. Files (:meth:`Ingest.files`) are walked, hashed, sniffed and
decoded in a thread pool a bounded distance ahead of the encoder, so the model is fed while the next files are
read; files whose content is already stored are skipped. In-memory inputs (:meth:`Ingest.items`) are decoded
in the calling thread. From there both take the same steps: values are encoded in batches, time-based inputs
stream through their modality's ``segment`` function (video decodes in its own child process), one item per
segment with ``start``/``end``, their parts sharing encoder batches across inputs
(:class:`~anybind.segment_embedding.SegmentBatcher`); what embedded is staged, and committed every
``commit_every`` items and at the end (each commit is one generation; in-memory inputs: one commit). Every
input that cannot be indexed is reported with its reason and skipped.

A time-based input is one unit: its segments are staged only once all of them are embedded, so a commit never
holds part of a file, and an input that fails half-way is dropped whole. With ``audio_tracks=True`` the unit
also holds the input's companion streams (:attr:`~anybind.modality.Modality.companions`; a video's sound
track): their segments are stored as items of the companion's modality, with the input's uri and times.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from anybind.errors import ItemError, SpaceError
from anybind.modality import Modality, Segmenter, describe_item, detect
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


@dataclass(eq=False)
class Prepared:
    """One input on its way to the encoder: a file hashed, sniffed and (unless time-based) decoded, or an
    in-memory item.

    ``label`` names it in the report and in errors (a file's path); ``tag`` is the modality its items are
    stored as; ``source`` is what a segmenter reads. ``metadata`` is None for files (asked of the run's
    metadata when staged); ``digest`` is None for in-memory items until staged (their file's hash, if any).
    """

    label: str
    tag: str
    modality: Modality
    source: Any
    uri: str | None = None
    digest: str | None = None
    value: Any = None
    text: str | None = None
    metadata: Mapping[str, Any] | None = None
    key: str | None = None
    position: int = 0  # in the input sequence
    numbered: bool = False  # rows carry their segment's number as ``part`` (the parts of a key)
    unchanged: bool = False


@dataclass(eq=False)
class Unit:
    """A time-based input being embedded: its own segments and its companions', staged together once every
    stream has finished (``waiting`` counts the streams not finished yet), or not at all if one failed."""

    prepared: Prepared
    waiting: int
    done: list[tuple[str, SegmentedItem]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(item.error is not None for _, item in self.done)


class Stored(NamedTuple):
    """What the store holds of a file already indexed: its content hash, item ids and their modalities."""

    digest: str | None
    ids: list[int]
    modalities: set[str]


@dataclass
class Run:
    """The state of one :meth:`Ingest.files` / :meth:`Ingest.items` call: its report, what is waiting for the
    encoder, and what the next commit writes and replaces."""

    report: IndexReport = field(default_factory=IndexReport)
    metadata: Any = None  # files: a dict for all, or callable(path)
    commit_every: int | None = None  # None: one commit at the end
    companions: bool = False
    upsert: bool = False
    in_input_order: bool = False  # errors reported in input order (in-memory items), else as they happen
    modalities: dict[str, Modality] = field(default_factory=dict)  # registered ones, by name
    routed: set[str] = field(default_factory=set)  # the ones the space embeds
    known: dict[str, Stored] = field(default_factory=dict)  # files already in the store, by path
    pending: dict[str, list[Prepared]] = field(default_factory=dict)  # decoded values by modality, one batch each
    streams: dict[str, tuple[SegmentPlan, SegmentBatcher]] = field(default_factory=dict)
    staged: list[NewItem] = field(default_factory=list)
    staged_inputs: list[tuple[str, int]] = field(default_factory=list)  # (label, items staged), in order
    replacing: list[int] = field(default_factory=list)  # ids of stored files the next commit removes
    replaced: set[str] = field(default_factory=set)  # files whose ids are removed (now or already)
    error_positions: list[int] = field(default_factory=list)  # alongside report.errors


class Ingest:
    """Embeds inputs with a space and commits them through a writer: files (``files``) and in-memory items
    (``items``) alike, through one pipeline (see the module docstring). ``exclude``: paths never indexed (the
    store's own directory). One call at a time; ``run`` holds the state of the latest."""

    def __init__(self, space: Space, writer: Writer, exclude: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.space, self.writer, self.exclude = space, writer, list(exclude)
        self.run = Run()

    # -- the two sources -------------------------------------------------------------------------------

    def files(
        self,
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
        """Index files and folders; the report lists what was added, unchanged, replaced and what failed.

        ``modality`` forces every file's modality (default: sniff each); ``metadata`` is stored with every file
        (a dict, or callable(path) -> dict); ``workers`` decoding threads (default: up to 4); ``audio_tracks``
        also indexes each file's companion streams (a video's sound, as ``audio`` items). Raises
        :class:`SpaceError` when the space cannot embed the forced modality or a companion stream's modality.
        """
        self.run = run = Run(metadata=metadata, commit_every=commit_every, companions=audio_tracks)
        files = self._walk(paths, recursive)
        run.routed = set(self.space.modalities)
        forced = self.space.route(modality)[0] if modality is not None else None  # an error for the whole run
        run.modalities = {e.value.name: e.value for e in self.space.host.modalities.entries()}
        if audio_tracks:
            self._check_companions(forced)
        workers = workers or min(4, os.cpu_count() or 1)
        if progress:
            progress(0, len(files))
        with self.writer.locked():
            self._load_known(files)
            with contextlib.closing(self._prepare_all(files, forced, workers)) as prepared:
                for done, outcome in enumerate(prepared, 1):
                    if isinstance(outcome, ItemError):
                        self._fail(outcome)
                    else:
                        self._take(outcome)
                    if progress:
                        progress(done, len(files))
            self._drain()
            self._commit()
            return self._report()

    def items(
        self, modality: str, items: Any, *, metadata: Any = None, keys: Any = None, upsert: bool = False
    ) -> IndexReport:
        """Embed in-memory inputs (paths, strings, arrays, ...) of one modality and commit every one that
        embedded, in one commit (taking the store's lock only for it). ``metadata``: a dict for all, one per
        item, or callable(item); ``keys``: one unique string per item; ``upsert``: replace the items of keys
        already stored (every segment of a time-based input)."""
        seq = [items] if isinstance(items, (str, bytes, os.PathLike)) else list(items)
        metas = metadata_list(metadata, seq)
        key_list = check_keys(keys, len(seq))
        mod, _ = self.space.route(modality)
        self.run = Run(upsert=upsert, in_input_order=True)
        for position, item in enumerate(seq):
            prepared = self._prepare_item(mod, modality, item, position, metas[position], key_list[position])
            if prepared is not None:
                self._take(prepared)
        self._drain()
        with self.writer.locked():
            self._commit()
            return self._report()

    # -- preparing inputs ------------------------------------------------------------------------------

    def _walk(self, paths: Sequence[str | os.PathLike[str]], recursive: bool) -> list[Path]:
        files: list[Path] = []
        for entry in walk_files(paths, recursive=recursive, exclude=self.exclude):
            if isinstance(entry, ItemError):
                self._fail(entry)
            else:
                files.append(entry)
        return files

    def _check_companions(self, forced: Modality | None) -> None:
        """Every companion stream of the modalities this run may index is a time-based modality the space
        embeds; else a :class:`SpaceError` naming it (before anything is read)."""
        run = self.run
        owners = [forced] if forced is not None else [m for m in run.modalities.values() if m.name in run.routed]
        for owner in owners:
            for name in owner.companions:
                if name not in run.routed:
                    embeds = ", ".join(sorted(run.routed))
                    raise SpaceError(
                        f"audio_tracks: this store's space cannot embed {name}, the companion stream of "
                        f"{owner.name} files (it embeds {embeds}); add [modalities.{name}] to the space file "
                        "or index without audio tracks"
                    )
                if not run.modalities[name].temporal:
                    raise SpaceError(
                        f"modality {owner.name!r} names {name!r} as a companion stream, but {name!r} is not cut "
                        "into time segments (a bug in the plugin that registered it)"
                    )

    def _load_known(self, files: Sequence[Path]) -> None:
        assert self.writer.manifest is not None
        stored = self.writer.db.files([str(f) for f in files], self.writer.manifest.generation)
        self.run.known = {uri: Stored(*entry) for uri, entry in stored.items()}

    def _prepare_all(
        self, files: Sequence[Path], forced: Modality | None, workers: int
    ) -> Generator[Prepared | ItemError, None, None]:
        """Each file's :class:`Prepared` (or its :class:`ItemError`) in order, from a pool of ``workers``
        threads kept a bounded distance ahead."""
        ahead = max(2 * self._batch_size, 4 * workers)
        window: deque[Future[Prepared]] = deque()
        queue = iter(files)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="anybind-decode") as pool:
            while True:
                while len(window) < ahead and (path := next(queue, None)) is not None:
                    window.append(pool.submit(self._prepare, path, forced))
                if not window:
                    return
                outcome: Prepared | ItemError
                try:
                    outcome = window.popleft().result()
                except ItemError as exc:
                    outcome = exc
                except Exception as exc:  # pragma: no cover - a bug in a plugin's sniffer
                    outcome = ItemError("<file>", f"{type(exc).__name__}: {exc}")
                yield outcome

    def _prepare(self, path: Path, forced: Modality | None) -> Prepared:
        """Hash, sniff and (unless time-based) decode one file; runs in a worker thread. Raises ItemError
        naming the file. A file stored with this content is ``unchanged``, unless companion streams are asked
        for and the store lacks one of them (a video indexed without its sound, or a silent one)."""
        run = self.run
        label = str(path)
        try:
            digest = file_digest(path)
        except OSError as exc:
            raise ItemError(label, f"cannot read: {exc.strerror or exc}") from None
        modality = forced or detect(path, list(run.modalities.values()))
        if modality.name not in run.routed:
            embeds = ", ".join(sorted(run.routed))
            raise ItemError(label, f"is {modality.name!r}, which this store's space cannot embed (it embeds {embeds})")
        prepared = Prepared(label, modality.name, modality, label, uri=label, digest=digest)
        stored = run.known.get(label)
        if stored is not None and stored.digest == digest:
            missing = run.companions and not set(modality.companions) <= stored.modalities
            prepared.unchanged = not missing
        if not prepared.unchanged and not modality.temporal:  # time-based files stream in the main thread
            prepared.value = decode_item(modality, path, 0)
            if modality.textual and isinstance(prepared.value, str):
                prepared.text = prepared.value
        return prepared

    def _prepare_item(
        self, mod: Modality, tag: str, item: Any, position: int, meta: Mapping[str, Any], key: str | None
    ) -> Prepared | None:
        """An in-memory input (decoded now unless time-based), or None when it cannot be decoded (reported).

        A path (``os.PathLike``, or a ``str`` for a modality that is not textual) is stored as its real path."""
        uri = None
        if isinstance(item, os.PathLike) or (isinstance(item, str) and not mod.textual):
            uri = os.path.realpath(item)
        text = item if isinstance(item, str) and uri is None else None
        label = describe_item(item, position)
        prepared = Prepared(
            label, tag, mod, item, uri=uri, text=text, metadata=meta, key=key, position=position, numbered=True
        )
        if not mod.temporal:
            try:
                prepared.value = decode_item(mod, item, position)
            except ItemError as exc:
                self._fail(exc, prepared)
                return None
        return prepared

    # -- embedding -------------------------------------------------------------------------------------

    @property
    def _batch_size(self) -> int:
        return max(1, self.space.options.batch_size)

    def _take(self, prepared: Prepared) -> None:
        if prepared.unchanged:
            self.run.report.unchanged.append(prepared.label)
        elif prepared.modality.temporal:
            self._stream(prepared)
        else:
            self._queue(prepared)

    def _queue(self, prepared: Prepared) -> None:
        """Add a decoded value to its modality's batch; encode a full batch; commit when enough is waiting."""
        run = self.run
        batch = run.pending.setdefault(prepared.tag, [])
        batch.append(prepared)
        if len(batch) >= self._batch_size:
            self._encode(prepared.tag)
        if run.commit_every is not None and len(run.staged) + sum(map(len, run.pending.values())) >= run.commit_every:
            for name in sorted(run.pending):
                self._encode(name)
            self._commit()

    def _encode(self, tag: str) -> None:
        """Encode the batch waiting for ``tag`` and stage what embedded."""
        batch = self.run.pending.pop(tag, [])
        if not batch:
            return
        result = self.space.try_encode(tag, [p.value for p in batch], [p.label for p in batch])
        for error, position in zip(result.errors, result.failed, strict=True):
            self._fail(error, batch[position])
        metas = self._metadata(batch)
        for vector, position in zip(result.vectors, result.indices, strict=True):
            prepared = batch[position]
            self._stage(prepared, [self._row(prepared, tag, vector, metas[position])])
        self._commit_due()

    def _stream(self, prepared: Prepared) -> None:
        """Feed a time-based input's segments, then (if asked for) its companion streams', to their batchers."""
        modality = prepared.modality
        assert modality.segment is not None
        companions = list(modality.companions.items()) if self.run.companions else []
        unit = Unit(prepared, waiting=1 + len(companions))
        self._feed(unit, prepared.tag, prepared.label, modality.segment)
        for n, (name, segment) in enumerate(companions):
            if unit.failed:  # the input already failed: its companions could not be stored without it
                unit.waiting -= len(companions) - n
                if unit.waiting == 0:
                    self._stage_unit(unit)
                return
            self._feed(unit, name, f"{prepared.label} ({name} track)", segment, optional=True)

    def _feed(self, unit: Unit, tag: str, label: str, segment: Segmenter, optional: bool = False) -> None:
        """One stream of ``unit`` through ``tag``'s batcher. ``optional``: a stream without segments (a video
        without sound) is not an error."""
        if tag not in self.run.streams:
            self.run.streams[tag] = self.space.segment_batcher(tag)
        plan, batcher = self.run.streams[tag]
        segments = lazy_segments(segment, unit.prepared.source, plan)
        self._finish(tag, batcher.feed(unit, label, segments, optional=optional))

    def _finish(self, tag: str, finished: list[SegmentedItem]) -> None:
        """Streams that finished: a unit whose every stream finished is staged (or its errors reported)."""
        for item in finished:
            unit: Unit = item.key
            unit.done.append((tag, item))
            unit.waiting -= 1
            if unit.waiting == 0:
                self._stage_unit(unit)
        self._commit_due()

    def _drain(self) -> None:
        """Encode every batch still waiting, and what the segment batchers hold."""
        for tag in sorted(self.run.pending):
            self._encode(tag)
        for tag, (_, batcher) in sorted(self.run.streams.items()):
            self._finish(tag, batcher.flush())

    # -- staging and committing ------------------------------------------------------------------------

    def _metadata(self, batch: Sequence[Prepared]) -> list[Mapping[str, Any]]:
        if all(p.metadata is not None for p in batch):
            return [p.metadata for p in batch]  # type: ignore[misc]
        return metadata_list(self.run.metadata, [p.label for p in batch])

    def _row(
        self,
        prepared: Prepared,
        tag: str,
        vector: np.ndarray,
        meta: Mapping[str, Any],
        start: float | None = None,
        end: float | None = None,
        part: int = 0,
    ) -> NewItem:
        if prepared.digest is None and prepared.uri is not None and os.path.isfile(prepared.uri):
            prepared.digest = file_digest(prepared.uri)
        return NewItem(
            tag,
            vector,
            uri=prepared.uri,
            start=start,
            end=end,
            text=prepared.text,
            metadata=meta,
            content_hash=prepared.digest,
            key=prepared.key,
            part=part if prepared.numbered else 0,
        )

    def _stage_unit(self, unit: Unit) -> None:
        """Stage every segment of a finished unit, or report its errors (a stored file's old items stay)."""
        errors = [item.error for _, item in unit.done if item.error is not None]
        for error in errors:
            self._fail(error, unit.prepared)
        if errors:
            return
        prepared = unit.prepared
        (meta,) = self._metadata([prepared])
        rows = []
        for tag, item in unit.done:
            assert item.vectors is not None
            spans = zip(item.starts, item.ends, item.vectors, strict=True)
            rows += [self._row(prepared, tag, v, meta, start, end, part) for part, (start, end, v) in enumerate(spans)]
        self._stage(prepared, rows)

    def _stage(self, prepared: Prepared, rows: list[NewItem]) -> None:
        """Stage an input's rows for the next commit, which also removes the items of its stored version."""
        run = self.run
        run.staged += rows
        run.staged_inputs.append((prepared.label, len(rows)))
        if prepared.label not in run.replaced:
            run.replaced.add(prepared.label)
            run.replacing += run.known[prepared.label].ids if prepared.label in run.known else []

    def _commit_due(self) -> None:
        if self.run.commit_every is not None and len(self.run.staged) >= self.run.commit_every:
            self._commit()

    def _commit(self) -> None:
        """Commit what is staged (one generation) and record the new ids in the report. Under the lock."""
        run = self.run
        if not run.staged and not run.replacing:
            return
        ids = iter(self.writer.commit(run.staged, remove=run.replacing, upsert=run.upsert).ids)
        for label, count in run.staged_inputs:
            run.report.added.setdefault(label, []).extend(itertools.islice(ids, count))
            if label in run.known and label not in run.report.replaced:
                run.report.replaced.append(label)
        run.staged, run.staged_inputs, run.replacing = [], [], []

    def _fail(self, error: ItemError, prepared: Prepared | None = None) -> None:
        self.run.report.errors.append(error)
        self.run.error_positions.append(prepared.position if prepared is not None else -1)

    def _report(self) -> IndexReport:
        """The run's report, at the writer's generation. Under the lock."""
        run = self.run
        assert self.writer.manifest is not None
        run.report.generation = self.writer.manifest.generation
        if run.in_input_order:
            order = sorted(range(len(run.report.errors)), key=run.error_positions.__getitem__)
            run.report.errors = [run.report.errors[i] for i in order]
        return run.report
