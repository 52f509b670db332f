"""Injected disk faults and the write lock.

Every write, flush, fsync (file and directory) and rename of one commit is enumerated by counting them in a dry
run (the hooks replace ``open`` and ``os`` inside :mod:`anybind.store.files`, the one module that writes store
files). Then each of them in turn is failed with ENOSPC or EIO, once or until the fault is cleared, and:

* before the commit point (the rename of ``manifest.json``) the commit raises a :class:`StoreError` (disk full
  says "disk is full"), a fresh ``Store`` reads the previous generation intact (ids, keys, vectors, counts,
  ``check``), and the same ``Store`` commits the same items once the fault clears, with no duplicate;
* after the commit point the commit does not raise: it stands, with ``Commit.warnings``.

SQLite faults: a COMMIT that fails is rolled back and the writer goes on; a database that cannot grow (SQLite's
``max_page_count``: the same SQLITE_FULL as a full disk) is reported as a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import anybind
from anybind.errors import StoreError
from anybind.store import files
from anybind.store.inputs import vector_items
from anybind.store.manifest import read_manifest
from anybind.store.writer import Commit

DIM = 16


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- the store before the faulty commit, and the commit ---------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, clip_space: anybind.Space) -> Path:
    """A store with two partitions (image: keyed, three segments; text) at generation 4."""
    root = tmp_path_factory.mktemp("faults") / "db"
    with anybind.Store.open(root, space=clip_space, device="cpu") as store:
        for n in range(3):
            keys = [f"img-{n * 20 + i}" for i in range(20)]
            store.add_vectors("image", unit_vectors(20, seed=n), keys=keys, metadata={"v": 0})
        store.add_vectors("text", unit_vectors(15, seed=9), keys=[f"txt-{i}" for i in range(15)])
    return root


def the_items() -> list:
    """One commit over three partitions: 10 image keys replaced (tombstones in two segments) plus 5 new ones,
    new text items, and a partition that does not exist yet (a new folder)."""
    image_keys = [f"img-{i}" for i in range(15, 25)] + [f"img-new-{i}" for i in range(5)]
    items = vector_items(
        "image",
        unit_vectors(15, seed=100),
        uris=None,
        texts=None,
        segments=None,
        metadata={"v": 1},
        keys=image_keys,
    )
    items += vector_items(
        "text", unit_vectors(4, seed=101), uris=None, texts=None, segments=None, metadata=None, keys=None
    )
    items += vector_items(
        "audio", unit_vectors(3, seed=102), uris=None, texts=None, segments=None, metadata=None, keys=None
    )
    return items


def commit(store: anybind.Store) -> Commit:
    with store.writer.locked():
        return store.writer.commit(the_items(), upsert=True)


def state(path: Path) -> dict[str, Any]:
    """Everything a reader can see, read by a fresh Store: generation, per-partition counts, rows (id, key,
    metadata) and their vectors."""
    with anybind.Store.open(path, device="cpu") as store:
        manifest = read_manifest(path)
        rows = store.get(range(1, manifest.next_id))
        ids = [r.id for r in rows]
        info = store.info()
        report = store.check()
        assert report["ok"], report["problems"]
        return {
            "generation": store.generation,
            "counts": {name: p["count"] for name, p in info["partitions"].items()},
            "rows": [(r.id, r.key, r.modality, r.metadata) for r in rows],
            "vectors": store.vectors(ids),
            "stray": report["stray"],
        }


def same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["generation"] == b["generation"]
    assert a["counts"] == b["counts"]
    assert a["rows"] == b["rows"]
    np.testing.assert_array_equal(a["vectors"], b["vectors"])


def expected_after(before: dict[str, Any], items: list) -> dict[str, Any]:
    """What the commit must leave, computed from the state before: keys replaced, new items appended."""
    by_key = {key: n for n, (_, key, _, _) in enumerate(before["rows"]) if key is not None}
    gone = {by_key[item.key] for item in items if item.key in by_key}
    rows = [(key, modality, meta) for n, (_, key, modality, meta) in enumerate(before["rows"]) if n not in gone]
    rows += [(item.key, item.modality, dict(item.metadata or {})) for item in items]
    vectors = [v for n, v in enumerate(before["vectors"]) if n not in gone] + [item.vector for item in items]
    counts = dict(before["counts"])
    for n in gone:
        counts[before["rows"][n][2]] -= 1
    for item in items:
        counts[item.modality] = counts.get(item.modality, 0) + 1
    return {"generation": before["generation"] + 1, "counts": counts, "rows": rows, "vectors": np.stack(vectors)}


def matches_expected(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual["generation"] == expected["generation"]
    assert actual["counts"] == expected["counts"]
    assert [(key, modality, meta) for _, key, modality, meta in actual["rows"]] == expected["rows"]
    np.testing.assert_allclose(actual["vectors"], expected["vectors"], atol=1e-6)


# -- fault injection in anybind.store.files -----------------------------------------------------------------


class Faults:
    """Counts (and fails) the write-side calls of :mod:`anybind.store.files`: ``open`` for writing, handle
    ``write``/``flush``, ``os.fsync`` of files and of directories, ``os.replace``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, str]] = []
        self.fail_at: int | None = None
        self.persistent = False
        self.error = errno.EIO
        self.cleared = False

    def check(self, kind: str, target: str) -> None:
        self.calls.append((kind, os.path.relpath(target, self.root)))
        n = len(self.calls) - 1
        if self.cleared or self.fail_at is None:
            return
        if n == self.fail_at or (self.persistent and n > self.fail_at and kind == self.calls[self.fail_at][0]):
            raise OSError(self.error, os.strerror(self.error), target)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        faults = self
        real_os = os

        class Handle:
            def __init__(self, handle: Any, path: str) -> None:
                self.handle, self.path = handle, path

            def __enter__(self) -> Handle:
                return self

            def __exit__(self, *exc: object) -> None:
                self.handle.close()

            def write(self, data: Any) -> int:
                faults.check("write", self.path)
                return self.handle.write(data)

            def flush(self) -> None:
                faults.check("flush", self.path)
                self.handle.flush()

            def fileno(self) -> int:
                return self.handle.fileno()

        def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if any(c in mode for c in "wax+"):
                faults.check("open", str(path))
                return Handle(open(path, mode, *args, **kwargs), str(path))
            return open(path, mode, *args, **kwargs)

        class FakeOs:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_os, name)

            @staticmethod
            def fsync(fd: int) -> None:
                kind = "dirsync" if stat.S_ISDIR(real_os.fstat(fd).st_mode) else "fsync"
                faults.check(kind, real_os.readlink(f"/proc/self/fd/{fd}"))
                real_os.fsync(fd)

            @staticmethod
            def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
                faults.check("replace", str(dst))
                real_os.replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(files, "open", fake_open, raising=False)
        monkeypatch.setattr(files, "os", FakeOs())


@pytest.fixture(scope="module")
def dry_run(template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, str]], dict]:
    """The commit's write-side calls in order, and the state it leaves."""
    path = tmp_path_factory.mktemp("dry") / "db"
    shutil.copytree(template, path)
    faults = Faults(path)
    with pytest.MonkeyPatch.context() as patch, anybind.Store.open(path, device="cpu") as store:
        faults.install(patch)
        with store.writer.locked():
            faults.calls.clear()  # the lock's own work (recovery, garbage collection) is not the commit's
            result = store.writer.commit(the_items(), upsert=True)
        assert not result.warnings
    return faults.calls, state(path)


def commit_point(calls: list[tuple[str, str]]) -> int:
    """The index of the rename of the manifest."""
    (point,) = [n for n, (kind, target) in enumerate(calls) if kind == "replace" and target == "manifest.json"]
    return point


def test_the_dry_run_sees_every_kind_of_write_of_a_commit(dry_run, template):
    calls, after = dry_run
    kinds = {kind for kind, _ in calls}
    assert kinds == {"open", "write", "flush", "fsync", "dirsync", "replace"}
    point = commit_point(calls)
    assert point == max(n for n, (kind, _) in enumerate(calls) if kind == "replace")  # the last rename
    assert any(kind == "dirsync" for kind, _ in calls[point + 1 :])  # the directory fsync after the rename
    renamed = {Path(target).name for kind, target in calls if kind == "replace"}
    assert any(name.endswith(".deleted.npy") for name in renamed) and "manifest.json" in renamed
    assert any(target == "segments/audio" for kind, target in calls if kind == "dirsync")
    matches_expected(after, expected_after(state(template), the_items()))


@pytest.fixture(scope="module")
def baseline(template: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template's state, and the state the commit must leave (computed from it, not by committing)."""
    before = state(template)
    return before, expected_after(before, the_items())


@contextlib.contextmanager
def faulty_copy(template: Path, path: Path) -> Iterator[tuple[anybind.Store, Faults]]:
    """A copy of the template store, opened with fault injection installed (no fault armed yet)."""
    shutil.copytree(template, path)
    faults = Faults(path)
    with pytest.MonkeyPatch.context() as patch, anybind.Store.open(path, device="cpu") as store:
        faults.install(patch)
        yield store, faults


def fault_case(path: Path, template: Path, dry_run: tuple, baseline: tuple, n: int, error: int, persistent: bool):
    """Fail the ``n``-th write-side call of the commit (once, or until cleared) and check what it leaves."""
    calls, _ = dry_run
    point = commit_point(calls)
    before, wanted = baseline
    kind, target = calls[n]
    where = f"{'persistent' if persistent else 'one'} {os.strerror(error)} at call {n} ({kind} {target})"
    with faulty_copy(template, path) as (store, faults):
        with store.writer.locked():
            faults.calls.clear()
            faults.fail_at, faults.persistent, faults.error = n, persistent, error
            if n <= point:
                with pytest.raises(StoreError) as caught:
                    store.writer.commit(the_items(), upsert=True)
                message = str(caught.value)
                if error == errno.ENOSPC:
                    assert "disk is full" in message, where
                else:
                    assert os.strerror(errno.EIO) in message, where
                assert not isinstance(caught.value, OSError)
                assert faults.calls[: n + 1] == calls[: n + 1], where  # the fault hit the call it targeted
                result = None
            else:
                result = store.writer.commit(the_items(), upsert=True)
                assert result.warnings, f"{where}: the failure after the commit point is not reported"
                assert result.generation == before["generation"] + 1
        if result is None:
            fresh = state(path)
            same_state(fresh, before)
            assert fresh["stray"] == [], f"{where}: files of the failed commit left behind"
            assert not [p for p in path.rglob("*") if files.is_temp(p.name)], where
        faults.cleared = True
        retry = commit(store)  # the same Store and writer, fault gone
        assert not retry.warnings, where
    final = state(path)
    if result is None:
        matches_expected(final, wanted)
    else:  # committed despite the fault; the retry replaced the same keys again: no duplicate
        assert final["generation"] == wanted["generation"] + 1, where
        assert final["counts"] == {**wanted["counts"], "text": wanted["counts"]["text"] + 4, "audio": 6}
        keys = [key for _, key, _, _ in final["rows"] if key is not None]
        assert len(keys) == len(set(keys)), where


COMBOS = [(errno.ENOSPC, False), (errno.EIO, True), (errno.EIO, False), (errno.ENOSPC, True)]


def test_a_fault_at_every_write_of_a_commit(tmp_path, template, dry_run, baseline):
    """Each call of the commit failed once, the fault cycling through ENOSPC/EIO, once/persistent (the full
    product is the slow test below)."""
    calls, _ = dry_run
    for n in range(len(calls)):
        error, persistent = COMBOS[n % len(COMBOS)]
        fault_case(tmp_path / f"db{n}", template, dry_run, baseline, n, error, persistent)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_every_fault_at_every_write_of_a_commit(tmp_path, template, dry_run, baseline, error, persistent):
    calls, _ = dry_run
    for n in range(len(calls)):
        fault_case(tmp_path / f"db{n}", template, dry_run, baseline, n, error, persistent)


def test_a_directory_fsync_error_before_the_commit_point_is_not_swallowed(tmp_path, template, dry_run):
    calls, _ = dry_run
    point = commit_point(calls)
    syncs = [n for n, (kind, _) in enumerate(calls[:point]) if kind == "dirsync"]
    assert syncs, "the commit fsyncs no directory before renaming its manifest"
    before = state(template)
    for n in syncs:
        path = tmp_path / f"db{n}"
        with faulty_copy(template, path) as (store, faults), store.writer.locked():
            faults.calls.clear()
            faults.fail_at = n
            with pytest.raises(StoreError, match="Input/output error"):
                store.writer.commit(the_items(), upsert=True)
        same_state(state(path), before)


def test_the_fault_after_the_commit_point_through_add_vectors(tmp_path, template, dry_run, monkeypatch):
    """``Store.add_vectors`` returns the ids of a commit that stands despite a failed directory fsync."""
    path = tmp_path / "db"
    shutil.copytree(template, path)
    faults = Faults(path)
    faults.install(monkeypatch)
    vectors = unit_vectors(6, seed=55)
    raised = []
    with anybind.Store.open(path, device="cpu") as store:
        real_check = faults.check

        def after_manifest(kind: str, target: str) -> None:  # fail every directory fsync once the manifest is in
            faults.calls.append((kind, os.path.basename(target)))
            if kind == "dirsync" and ("replace", "manifest.json") in faults.calls:
                raised.append(target)
                raise OSError(errno.EIO, os.strerror(errno.EIO), target)

        faults.check = after_manifest  # type: ignore[method-assign]
        ids = store.add_vectors("image", vectors, keys=[f"late-{i}" for i in range(6)])
        faults.check = real_check  # type: ignore[method-assign]
    assert raised == [str(path)], "the directory fsync after the manifest's rename was not failed"
    with anybind.Store.open(path, device="cpu") as store:
        assert [r.key for r in store.get(ids)] == [f"late-{i}" for i in range(6)]
        np.testing.assert_allclose(store.vectors(ids), vectors, atol=1e-6)
        assert store.generation == read_manifest(template).generation + 1


# -- SQLite faults ---------------------------------------------------------------------------------------


class FailingCommit:
    """A connection whose COMMIT fails (as SQLite's does on an I/O error or a full disk) while armed."""

    def __init__(self, conn: sqlite3.Connection, message: str, times: int) -> None:
        self._conn, self.message, self.times = conn, message, times

    def execute(self, sql: str, *args: Any) -> Any:
        if self.times and sql.strip().upper() == "COMMIT":
            self.times -= 1
            raise sqlite3.OperationalError(self.message)
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def staged_rows(path: Path) -> int:
    """Rows of generations the manifest does not name (what a failed commit could leave staged)."""
    g = read_manifest(path).generation
    uri = f"file:{path / 'items.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return conn.execute("SELECT COUNT(*) FROM items WHERE added_gen > ?", (g,)).fetchone()[0]


@pytest.mark.parametrize(
    ("message", "said"),
    [("disk I/O error", "I/O error"), ("database or disk is full", "disk is full")],
)
def test_a_failed_sqlite_commit_is_rolled_back_and_the_writer_goes_on(tmp_path, template, message, said):
    path = tmp_path / "db"
    shutil.copytree(template, path)
    before = state(path)
    with anybind.Store.open(path, device="cpu") as store:
        with store.writer.locked():
            db = store.writer.db
            real = db.conn
            db.conn = FailingCommit(real, message, times=1)  # type: ignore[assignment]
            try:
                with pytest.raises(StoreError, match=said) as caught:
                    store.writer.commit(the_items(), upsert=True)
                assert "items.sqlite" in str(caught.value)
                assert not real.in_transaction, "the failed transaction was left open"
            finally:
                db.conn = real
        same_state(state(path), before)
        assert staged_rows(path) == 0
        commit(store)  # the same writer
    matches_expected(state(path), expected_after(before, the_items()))


def test_a_full_database_is_a_disk_full_error_and_the_writer_goes_on(tmp_path, template):
    path = tmp_path / "db"
    shutil.copytree(template, path)
    before = state(path)
    many = unit_vectors(3000, seed=77)
    keys = [f"bulk-{i}" for i in range(3000)]
    with anybind.Store.open(path, device="cpu") as store:
        db = store.writer.db
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # the database cannot grow: SQLITE_FULL
        with pytest.raises(StoreError, match="disk is full"):
            store.add_vectors("image", many, keys=keys, metadata={"note": "x" * 200})
        same_state(state(path), before)
        db.conn.execute("PRAGMA max_page_count = 1073741823")
        ids = store.add_vectors("image", many, keys=keys, metadata={"note": "x" * 200})
    with anybind.Store.open(path, device="cpu") as store:
        assert len(store) == len(before["rows"]) + 3000
        assert [r.key for r in store.get(ids)] == keys
        np.testing.assert_allclose(store.vectors(ids), many, atol=1e-6)


# -- the write lock ----------------------------------------------------------------------------------------


def blocked(store: anybind.Store, seconds: float) -> StoreError:
    """The StoreError of a write refused because another writer holds the lock (timed)."""
    start = time.monotonic()
    with pytest.raises(StoreError) as caught:
        store.add_vectors("image", unit_vectors(1, seed=3), keys=["blocked"])
    waited = time.monotonic() - start
    assert seconds - 0.01 <= waited < seconds + 2.0, f"gave up after {waited:.2f} s, not {seconds} s"
    message = str(caught.value)
    assert "another process is writing" in message and f"waited {seconds:g} s" in message
    assert "ANYBIND_LOCK_TIMEOUT" in message and "lock_timeout" in message
    return caught.value


def test_a_second_writer_waits_lock_timeout_then_gets_a_store_error(tmp_path, template):
    path = tmp_path / "db"
    shutil.copytree(template, path)
    first = anybind.Store.open(path, device="cpu")
    second = anybind.Store.open(path, device="cpu", lock_timeout=0.3)
    generation = first.generation
    with first.writer.locked():
        blocked(second, 0.3)
        first.add_vectors("image", unit_vectors(2, seed=4), keys=["first-0", "first-1"])  # the holder writes on
    second.add_vectors("image", unit_vectors(1, seed=3), keys=["second"])  # lock free: goes through
    assert anybind.Store.open(path, device="cpu").generation == generation + 2
    assert [r.key for r in second.get(keys=["first-0", "first-1", "second"])] == ["first-0", "first-1", "second"]
    first.close()
    second.close()


def test_lock_timeout_from_the_environment_and_the_argument(tmp_path, template, monkeypatch):
    path = tmp_path / "db"
    shutil.copytree(template, path)
    holder = anybind.Store.open(path, device="cpu")
    with holder.writer.locked():
        monkeypatch.setenv("ANYBIND_LOCK_TIMEOUT", "0.2")
        blocked(anybind.Store.open(path, device="cpu"), 0.2)
        monkeypatch.setenv("ANYBIND_LOCK_TIMEOUT", "30")
        blocked(anybind.Store.open(path, device="cpu", lock_timeout=0.1), 0.1)  # the argument wins
        monkeypatch.setenv("ANYBIND_LOCK_TIMEOUT", "0")
        blocked(anybind.Store.open(path, device="cpu"), 0)
        for bad in ("soon", "-1"):
            monkeypatch.setenv("ANYBIND_LOCK_TIMEOUT", bad)
            with pytest.raises(StoreError, match=f"ANYBIND_LOCK_TIMEOUT={bad!r}"):
                anybind.Store.open(path, device="cpu").add_vectors("image", unit_vectors(1, seed=3))
    holder.close()


HOLDER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import anybind
    store = anybind.Store.open(sys.argv[1], device="cpu")
    with store.writer.locked():
        print("locked", flush=True)
        sys.stdin.readline()
        x = np.random.default_rng(8).standard_normal((5, 16)).astype(np.float32)
        store.add_vectors("image", x, keys=[f"holder-{i}" for i in range(5)])
        print("committed", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    """
)


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_the_lock_is_no_file_that_deleting_would_defeat(tmp_path, template):
    path = tmp_path / "db"
    shutil.copytree(template, path)
    with anybind.Store.open(path, device="cpu") as store:  # -wal and -shm exist, as while any writer runs
        store.get([1])
        idle = tree(path)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        held = tree(path)
        assert held == idle, f"holding the lock created {held - idle}"
        manifest = read_manifest(path)
        data = {"manifest.json", "items.sqlite", "items.sqlite-wal", "items.sqlite-shm", "segments"}
        data |= {f"segments/{name}" for name in manifest.partitions}
        data |= {f"segments/{name}" for name in manifest.file_names()}
        deletable = held - data
        for name in sorted(deletable, reverse=True):  # whatever is not store data: a lock file would be here
            target = path / name
            target.rmdir() if target.is_dir() else target.unlink()
        other = anybind.Store.open(path, device="cpu", lock_timeout=0.3)
        blocked(other, 0.3)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "committed"
        blocked(other, 0.3)  # still held after its commit
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "released"
        assert child.wait(timeout=30) == 0
        other.add_vectors("image", unit_vectors(1, seed=3), keys=["other"])
        keys = [r.key for r in other.get(keys=[*[f"holder-{i}" for i in range(5)], "other"])]
        assert keys == [*[f"holder-{i}" for i in range(5)], "other"]
        other.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
