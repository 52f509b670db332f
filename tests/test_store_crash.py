"""Crash safety of ``Store.add_files``: writers are SIGKILLed at random moments and at chosen steps of a commit.

Loading torch and the model takes seconds, so the writers are forked from one preloaded process (the
"zygote", which never opens a store): each writer is a separate process that opens the store, indexes the
media folder and is killed (by the zygote after a delay, or by itself at a kill point) without any cleanup.
After every writer the store is read back from disk and checked; at the end a plain re-run must finish the set.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import make_image

import anybind
from anybind.store.store import file_digest

ZYGOTE = textwrap.dedent(
    """
    import json, os, select, signal, sys, time, traceback
    import anybind, torch
    import anybind.store.partition as partition, anybind.store.store as store
    from anybind.store.metadata import MetaDB

    SPACE = anybind.load_space(sys.argv[1], device="cpu", batch_size=4)
    MANIFEST = lambda *args: os.path.basename(args[1]) == "manifest.json"
    POINTS = {  # name: (owner, attribute, kill before or after the call, only for calls where ...)
        "insert": (MetaDB, "insert", "after", None),  # rows inserted, SQLite transaction still open
        "staged": (partition.Partition, "save", "before", None),  # rows committed, no partition file yet
        "index_file": (partition, "write_atomic", "after", None),  # .faiss written, its moments not
        "saved": (partition.Partition, "save", "after", None),  # one partition of the commit written
        "manifest": (store, "write_manifest", "before", None),  # every partition written, no manifest
        "rename": (os, "replace", "before", MANIFEST),  # manifest temp file written, not renamed
        "renamed": (os, "replace", "after", MANIFEST),  # manifest renamed, old files not collected
    }

    def arm(point, nth):
        owner, name, when, only = POINTS[point]
        real, seen = getattr(owner, name), [0]
        def reach():
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        def wrapper(*args, **kwargs):
            hit = only is None or only(*args)
            if hit and when == "before":
                reach()
            result = real(*args, **kwargs)
            if hit and when == "after":
                reach()
            return result
        setattr(owner, name, wrapper)

    def child(cmd, ready):
        torch.set_num_threads(1)
        if cmd["point"]:
            arm(cmd["point"], cmd["nth"])
        db = anybind.Store.open(cmd["db"], space=SPACE, device="cpu")
        os.write(ready, b"r")
        report = db.add_files([cmd["media"]], commit_every=3)
        with open(cmd["report"], "w") as handle:
            json.dump(report.to_dict(), handle)

    print("up", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        ready, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(ready)
                child(cmd, ready_w)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stderr.flush()
            os._exit(code)
        os.close(ready_w)
        os.read(ready, 1)  # the writer holds an open store (or died before)
        os.close(ready)
        start = time.monotonic()
        if cmd["after"] is not None:
            pidfd = os.pidfd_open(pid)
            if not select.select([pidfd], [], [], cmd["after"])[0]:
                os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still this writer's
            os.close(pidfd)
        status = os.waitpid(pid, 0)[1]
        print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                          "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                          "seconds": time.monotonic() - start}), flush=True)
    """
)


class Writers:
    """The zygote process: ``run`` forks one writer over ``media`` into ``db`` and says how it ended."""

    def __init__(self, model: Path, log: Path) -> None:
        self.log, self.log_file = log, log.open("w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("ANYBIND_LOAD_PLUGINS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, f"clip:{model}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            text=True,
            env=env,
        )
        assert self._reply() == "up"

    def _reply(self, timeout: float = 180.0) -> str:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            pytest.fail(f"writer process is stuck; its log:\n{self.log.read_text()[-3000:]}")
        line = self.proc.stdout.readline()
        assert line, f"writer process died; its log:\n{self.log.read_text()[-3000:]}"
        return line.strip()

    def run(self, db: Path, media: Path, *, after: float | None = None, point: str | None = None, nth: int = 1):
        """Index ``media`` into ``db``; SIGKILL the writer ``after`` seconds or at the ``nth`` ``point``.

        Returns ``killed``, ``seconds`` (from opening the store to the end) and ``report`` (the writer's
        IndexReport as a dict, when it finished).
        """
        report = db.parent / "report.json"
        report.unlink(missing_ok=True)
        cmd = {"db": str(db), "media": str(media), "after": after, "point": point, "nth": nth, "report": str(report)}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        end = json.loads(self._reply())
        assert end["code"] in (0, None), f"writer failed; its log:\n{self.log.read_text()[-3000:]}"
        assert end["signal"] in (None, signal.SIGKILL), f"writer crashed; its log:\n{self.log.read_text()[-3000:]}"
        end["killed"] = end["signal"] is not None
        end["report"] = None if end["killed"] else json.loads(report.read_text())
        return end

    def close(self) -> None:
        self.proc.stdin.close()  # the zygote's loop ends
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log_file.close()


@pytest.fixture(scope="module")
def writers(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    zygote = Writers(tiny_clip_dir, tmp_path_factory.mktemp("writers") / "writers.log")
    yield zygote
    zygote.close()


def visible(db: Path, g: int, columns: str) -> list[tuple]:
    """Rows of the items table visible at generation ``g``, read with plain sqlite3."""
    with contextlib.closing(sqlite3.connect(db / "metadata.sqlite")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        query = f"SELECT {columns} FROM items WHERE added_gen <= ? AND (removed_gen IS NULL OR removed_gen > ?)"
        return conn.execute(query, (g, g)).fetchall()


def check_store(db: Path, media: Path, last_generation: int) -> dict:
    """Check what a reader sees in ``db`` and return its manifest. Reads only: takes no write lock, so a killed
    writer's staged rows are still in the database (they must be invisible)."""
    manifest = json.loads((db / "manifest.json").read_text())
    g = manifest["generation"]
    assert g >= last_generation, f"generation went back from {last_generation} to {g}"
    rows = visible(db, g, "id, modality, uri, vector")
    assert all(item_id < manifest["next_id"] for item_id, *_ in rows), "a visible id was never handed out"
    uris = [uri for _, _, uri, _ in rows]
    assert len(uris) == len(set(uris)), "a file is indexed twice"
    assert all(Path(uri).parent == media and Path(uri).exists() for uri in uris), "a phantom file"
    vectors: dict[str, dict[int, np.ndarray]] = {}
    for item_id, modality, _, blob in rows:
        vectors.setdefault(modality, {})[item_id] = np.frombuffer(blob, dtype=np.float32)
    assert set(vectors) <= set(manifest["partitions"]), "visible rows without a partition"
    for modality, record in manifest["partitions"].items():
        index = faiss.read_index(str(db / "partitions" / record["file"]))
        assert (db / "partitions" / record["stats"]).exists()
        ids, rows_here = faiss.vector_to_array(index.id_map).tolist(), vectors.get(modality, {})
        assert len(ids) == len(set(ids)), f"duplicate ids in the {modality} partition"
        assert index.ntotal == record["count"] == len(rows_here), f"{modality}: partition and metadata counts differ"
        assert set(ids) == set(rows_here), f"{modality}: the partition's ids are not the visible rows"
        if ids:  # same ids, same vectors (an id handed out again after a crash must not keep the old vector)
            expected = np.stack([rows_here[i] for i in ids])
            np.testing.assert_allclose(index.index.reconstruct_n(0, index.ntotal), expected, atol=1e-6)
    with anybind.Store.open(db) as store:  # the public API: the same generation, and every hit resolves to a row
        assert store.generation == g and len(store) == len(rows)
        if rows:
            query = np.random.default_rng(g).standard_normal(store.dim)
            assert {hit.id for hit in store.search(vector=query, k=len(rows))} == {row[0] for row in rows}
    return manifest


def check_complete(db: Path, media: Path) -> dict:
    """After an uninterrupted run: every file of ``media`` is indexed once, with its current content."""
    manifest = check_store(db, media, 0)
    g = manifest["generation"]
    assert dict(visible(db, g, "uri, content_hash")) == {str(path): file_digest(path) for path in media.iterdir()}
    with contextlib.closing(sqlite3.connect(db / "metadata.sqlite")) as conn:
        staged = conn.execute("SELECT COUNT(*) FROM items WHERE added_gen > ? OR removed_gen > ?", (g, g))
        assert staged.fetchone() == (0,), "a killed writer's staged changes were kept"
    live = {name for record in manifest["partitions"].values() for name in (record["file"], record["stats"])}
    assert {entry.name for entry in (db / "partitions").iterdir()} == live, "garbage left after a clean run"
    return manifest


def change_media(media: Path, rng: random.Random, serial: int) -> None:
    """New work for the next writer: new pictures, a new caption every other time, two pictures changed."""
    pictures = sorted(media.glob("*.png"))
    for n in range(5):
        make_image(media / f"new{serial:03d}_{n}.png", rng.randrange(10**6))
    if serial % 2:
        (media / f"new{serial:03d}.txt").write_text(f"caption {serial}: {rng.random()}\n")
    for path in rng.sample(pictures, 2):
        make_image(path, rng.randrange(10**6))  # changed content: the writer replaces the picture's item


# (point, nth): kill the writer the nth time it reaches point; "insert"/"manifest"/"rename"/"renamed" are reached
# once per commit, "staged"/"saved" once per partition written, "index_file" once per file written.
KILL_POINTS = [("insert", 1), ("staged", 1), ("index_file", 1), ("manifest", 1), ("rename", 1), ("renamed", 1)]
KILL_POINTS += [("insert", 3), ("saved", 5), ("index_file", 6), ("rename", 2), ("renamed", 3)]
RANDOM_KILLS = 24


def test_killed_writers_leave_a_consistent_store_and_a_rerun_completes_it(writers: Writers, tmp_path: Path):
    """The acceptance test: kills at each step of a commit, then >= 20 SIGKILLs at random moments."""
    media, db = tmp_path.resolve() / "media", tmp_path / "db"
    media.mkdir()
    for n in range(40):  # pictures and captions interleaved, so that commits mix partitions
        if n % 5 == 4:
            (media / f"item{n:03d}.txt").write_text(f"a caption number {n}\n")
        else:
            make_image(media / f"item{n:03d}.png", n)
    assert not writers.run(db, media)["killed"]
    generation = check_complete(db, media)["generation"]
    rng, serial = random.Random(20240611), 0
    for point, nth in KILL_POINTS:  # every run also replaces pictures, so commits mark rows removed
        serial += 1
        change_media(media, rng, serial)
        assert writers.run(db, media, point=point, nth=nth)["killed"], f"the writer never reached {point} #{nth}"
        before, generation = generation, check_store(db, media, generation)["generation"]
        commits = nth if point == "renamed" else nth - 1 if point in ("insert", "manifest", "rename") else None
        if commits is not None:
            assert generation == before + commits, f"killed at {point} #{nth}: generation {generation}"
    kills, span = 0, 0.2
    while kills < RANDOM_KILLS:  # kill anywhere in a run: the span grows until a writer finishes within it
        serial += 1
        assert serial <= len(KILL_POINTS) + 4 * RANDOM_KILLS, f"only {kills} writers were killed before finishing"
        change_media(media, rng, serial)
        end = writers.run(db, media, after=rng.uniform(0.0, span))
        kills += end["killed"]
        generation = check_store(db, media, generation)["generation"]
        if end["killed"]:
            span *= 1.3
        else:
            span = end["seconds"]
            check_complete(db, media)
    finished = writers.run(db, media)["report"]  # the re-run completes the set ...
    check_complete(db, media)
    again = writers.run(db, media)["report"]  # ... and a further one finds nothing to do
    assert not again["added"] and not again["errors"] and again["generation"] == finished["generation"]
    assert sorted(again["unchanged"]) == sorted(str(path) for path in media.iterdir())


def test_a_writer_killed_while_creating_the_store_does_not_block_the_next_one(writers: Writers, tmp_path: Path):
    """A writer killed before the new store's first manifest: the next writer creates the store and indexes."""
    media, db = tmp_path.resolve() / "media", tmp_path / "db"
    media.mkdir()
    make_image(media / "one.png", 1)
    assert writers.run(db, media, point="manifest", nth=1)["killed"]
    assert not (db / "manifest.json").exists()
    assert writers.run(db, media)["report"]["added"]
    check_complete(db, media)
