"""Crash safety of the store's commits: writer processes are SIGKILLed at random moments and at chosen steps of
a commit, and the store is read back from disk after every kill.

The writer is a separate ``python -c`` process that opens the store without a space (``add_vectors`` needs
none, so it starts in well under a second) and works through a list of operations: ``add`` a batch of 50-500
keyed vectors, later ``upsert`` the same keys with a new version. Every vector is derived from (seed, batch,
version, row), so the parent recomputes what each item must hold. After each add returns, the child appends the
ids it got to an acknowledgement file (``os.write``: the line is in the kernel before the next commit starts, so
a SIGKILL cannot lose it). A restarted child resumes where the store is: a batch already at the operation's
version is skipped (and acknowledged with the ids found).

After each kill the parent checks, against its own model: every acknowledged batch holds exactly its
acknowledged ids and version; the one operation that was in flight left either the old or the new version of its
batch, never a mix or neither; nothing else is stored (no phantom, no duplicate key); every stored vector is the
generated one (finite, unit length) and its own exact top-1; per-partition counts (``Store.info``) equal the
visible rows; ``Store.check`` finds no problem.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import anybind
from anybind.store.files import is_temp
from anybind.store.manifest import read_manifest

DIM = 16  # the tiny CLIP's dimension
MODALITIES = ("image", "text")


# -- the data, shared with the child (its source is pasted into the child's script) -----------------------


def batch_vectors(seed: int, batch: int, version: int, n: int) -> np.ndarray:
    """The ``n`` unit vectors (float32) of one batch at one version."""
    x = np.random.default_rng([seed, batch, version]).standard_normal((n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def batch_keys(modality: str, batch: int, n: int) -> list[str]:
    return [f"{modality}:{batch}:{row}" for row in range(n)]


def make_plan(seed: int, batches: int) -> list[dict]:
    """Per batch: its modality and size (50-500 items)."""
    rng = np.random.default_rng(seed)
    return [{"modality": MODALITIES[int(rng.integers(2))], "n": int(rng.integers(50, 501))} for _ in range(batches)]


def make_ops(batches: int, rounds: int) -> list[list]:
    """Every batch added (version 0), then ``rounds`` rounds upserting every batch (versions 1, 2, ...)."""
    ops = [["add", b, 0] for b in range(batches)]
    ops += [["upsert", b, v] for v in range(1, rounds + 1) for b in range(batches)]
    return ops


CHILD_HEAD = textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np
    import anybind
    import anybind.store.metadata as metadata
    import anybind.store.segment as segment
    import anybind.store.writer as writer

    def _is_manifest(args):
        return os.path.basename(str(args[1])) == "manifest.json"

    POINTS = {  # name: (owner, attribute, kill before or after the call, only calls where ...)
        "insert": (metadata.MetaDB, "insert", "after", None),  # rows staged, SQLite transaction open
        "segment": (segment, "write_new", "after", None),  # a segment file renamed in, no manifest
        "moments": (writer, "write_atomic", "after", None),  # a partition's moments written, no manifest
        "manifest_tmp": (os, "replace", "before", _is_manifest),  # new manifest written to its temp name
        "renamed": (os, "replace", "after", _is_manifest),  # committed; not acknowledged, not collected
    }

    def arm(point, nth):
        owner, name, when, only = POINTS[point]
        real, seen = getattr(owner, name), [0]

        def reach():
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

        def wrapper(*args, **kwargs):
            hit = only is None or only(args)
            if hit and when == "before":
                reach()
            result = real(*args, **kwargs)
            if hit and when == "after":
                reach()
            return result

        setattr(owner, name, wrapper)
    """
)
CHILD_WORK = textwrap.dedent(
    """
    cmd = json.loads(sys.argv[1])
    store = anybind.Store.open(cmd["db"], device="cpu", lock_timeout=60)
    ack = os.open(cmd["ack"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for index in range(cmd["start"], cmd["stop"]):
        kind, b, v = cmd["ops"][index]
        modality, n = cmd["plan"][b]["modality"], cmd["plan"][b]["n"]
        keys = batch_keys(modality, b, n)
        if cmd["kill"] and cmd["kill"]["op"] == index:
            arm(cmd["kill"]["point"], cmd["kill"]["nth"])
        rows = sorted(store.get(keys=keys), key=lambda r: int(r.key.rsplit(":", 1)[1]))
        versions = sorted({r.metadata["v"] for r in rows})
        meta = {"b": b, "v": v}
        if len(rows) == n and versions == [v]:
            ids, how = [r.id for r in rows], "found"
        elif kind == "add" and not rows:
            vectors = batch_vectors(cmd["seed"], b, v, n)
            ids, how = store.add_vectors(modality, vectors, keys=keys, metadata=meta), kind
        elif kind == "upsert" and len(rows) == n and versions == [v - 1]:
            vectors = batch_vectors(cmd["seed"], b, v, n)
            ids, how = store.upsert_vectors(modality, vectors, keys=keys, metadata=meta), kind
        else:
            print(f"op {index} {kind} b={b} v={v}: found {len(rows)} rows, versions {versions}", file=sys.stderr)
            sys.exit(3)
        os.write(ack, (json.dumps({"op": index, "b": b, "v": v, "ids": ids, "how": how}) + "\\n").encode())
    """
)


def child_script() -> str:
    """The writer child: imports and kill points, this module's data helpers, then the work."""
    return CHILD_HEAD + inspect.getsource(batch_vectors) + inspect.getsource(batch_keys) + CHILD_WORK


# -- running children ----------------------------------------------------------------------------------


class Campaign:
    """One store, its plan of operations, and what the children acknowledged."""

    def __init__(self, root: Path, seed: int, batches: int, rounds: int) -> None:
        self.db = root / "db"
        self.ack = root / "ack.jsonl"
        self.seed = seed
        self.plan = make_plan(seed, batches)
        self.ops = make_ops(batches, rounds)
        self.acked: dict[int, tuple[int, list[int]]] = {}  # batch -> (version, ids) last acknowledged
        self.next_op = 0
        self.read_acks = 0
        self.script = child_script()
        self.log = root / "child.log"

    @property
    def first_upsert(self) -> int:
        return next(i for i, op in enumerate(self.ops) if op[0] == "upsert")

    def start(self, stop: int | None = None, kill: dict | None = None) -> subprocess.Popen:
        cmd = {
            "db": str(self.db),
            "ack": str(self.ack),
            "seed": self.seed,
            "plan": self.plan,
            "ops": self.ops,
            "start": self.next_op,
            "stop": len(self.ops) if stop is None else stop,
            "kill": kill,
        }
        with open(self.log, "ab") as log:
            return subprocess.Popen([sys.executable, "-c", self.script, json.dumps(cmd)], stderr=log)

    def collect(self) -> None:
        """Read the acknowledgements the last child wrote."""
        lines = self.ack.read_text().splitlines() if self.ack.exists() else []
        for line in lines[self.read_acks :]:
            entry = json.loads(line)
            assert entry["op"] == self.next_op, f"acknowledged op {entry['op']}, expected {self.next_op}"
            assert len(entry["ids"]) == self.plan[entry["b"]]["n"]
            self.acked[entry["b"]] = (entry["v"], entry["ids"])
            self.next_op += 1
        self.read_acks = len(lines)

    def finished(self, child: subprocess.Popen) -> int:
        code = child.wait(timeout=120)
        if code not in (0, -signal.SIGKILL):
            pytest.fail(f"writer exited with {code}: {self.log.read_text()[-3000:]}")
        self.collect()
        return code

    def in_flight(self) -> list | None:
        return self.ops[self.next_op] if self.next_op < len(self.ops) else None


def visible_count(db: Path) -> int:
    """Visible rows at the manifest's generation, counted by the test's own read-only SQLite connection."""
    g = read_manifest(db).generation
    uri = f"file:{db / 'items.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        query = "SELECT COUNT(*) FROM items WHERE added_gen <= ? AND (removed_gen IS NULL OR removed_gen > ?)"
        return conn.execute(query, (g, g)).fetchone()[0]


def verify(c: Campaign, expect: str | None = None, rng: random.Random | None = None, probes: int = 40) -> str | None:
    """Check the store on disk against the campaign's model. Returns what the in-flight operation left ("old" or
    "new"); ``expect`` asserts it."""
    rng = rng or random.Random(0)
    flight = c.in_flight()
    with anybind.Store.open(c.db, device="cpu") as store:
        manifest = read_manifest(c.db)
        rows = store.get(range(1, manifest.next_id))
        keys = [r.key for r in rows]
        assert None not in keys, "an item without a key: none was ever added"
        assert len(set(keys)) == len(keys), "a key is stored twice"
        by_batch: dict[int, list] = defaultdict(list)
        for r in rows:
            modality, b, row = r.key.split(":")
            b, row = int(b), int(row)
            assert b < len(c.plan) and row < c.plan[b]["n"], f"phantom item {r.key}"
            assert r.modality == modality == c.plan[b]["modality"]
            assert r.metadata["b"] == b
            by_batch[b].append(r)
        outcome = None
        for b, entry in enumerate(c.plan):
            got = sorted(by_batch.get(b, []), key=lambda r: int(r.key.rsplit(":", 1)[1]))
            versions = {r.metadata["v"] for r in got}
            assert len(versions) <= 1, f"batch {b} holds versions {sorted(versions)} at once"
            assert not got or len(got) == entry["n"], f"batch {b} holds {len(got)} of its {entry['n']} items"
            actual = (versions.pop(), [r.id for r in got]) if got else None
            old = c.acked.get(b)
            if actual == old:
                state = "old"
            elif (
                flight is not None
                and flight[1] == b
                and actual is not None
                and actual[0] == flight[2]
                and (old is None or not set(actual[1]) & set(old[1]))
            ):
                state = "new"
            else:
                shown = [(v, ids[:3]) if ids else None for v, ids in (actual or (None, None), old or (None, None))]
                pytest.fail(f"batch {b}: stored (version, first ids) {shown[0]}, acknowledged {shown[1]}")
            if flight is not None and flight[1] == b:
                outcome = state
        if expect is not None:
            assert outcome == expect, f"the killed {flight} left the {outcome} version, expected the {expect}"

        assert len(store) == len(rows) == visible_count(c.db)
        info = store.info()
        for modality in MODALITIES:
            count = sum(r.modality == modality for r in rows)
            assert info["partitions"].get(modality, {"count": 0})["count"] == count
        assert info["items"] == len(rows)
        if not rows:
            return outcome

        ids = [r.id for r in rows]
        expected = np.empty((len(rows), DIM), np.float32)
        position = {item_id: n for n, item_id in enumerate(ids)}
        for b, got in by_batch.items():
            vectors = batch_vectors(c.seed, b, got[0].metadata["v"], c.plan[b]["n"])
            for r in got:
                expected[position[r.id]] = vectors[int(r.key.rsplit(":", 1)[1])]
        stored = store.vectors(ids)
        assert np.isfinite(stored).all(), "a stored vector is NaN (or an id has no vector)"
        np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(stored, expected, atol=1e-5)

        probe = rng.sample(range(len(rows)), min(probes, len(rows)))
        if flight is not None and flight[1] in by_batch:  # the in-flight batch's first and last items too
            probe += [position[by_batch[flight[1]][0].id], position[by_batch[flight[1]][-1].id]]
        for n in probe:
            hits = store.search(vector=expected[n], to=rows[n].modality, k=2)
            assert (hits[0].id, hits[0].key) == (rows[n].id, rows[n].key)
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert len(hits) < 2 or hits[1].score < 1 - 1e-4  # the old version of an upserted item is gone
        report = store.check()
        assert report["ok"], report["problems"]
    return outcome


# kill points armed inside an upsert: (point, nth call, what the store must hold afterwards)
POINTS = [
    ("insert", 1, "old"),
    ("segment", 1, "old"),
    ("segment", 3, "old"),
    ("moments", 1, "old"),
    ("manifest_tmp", 1, "old"),
    ("renamed", 1, "new"),
]


def campaign(tmp_path: Path, space: anybind.Space, *, seed: int, batches: int, rounds: int, kills: int) -> Campaign:
    """Kill writers ``kills`` times (random moments, and every point of :data:`POINTS` inside upserts), checking
    the store after each; then let one writer finish cleanly."""
    anybind.Store.open(tmp_path / "db", space=space, device="cpu").close()
    c = Campaign(tmp_path, seed, batches, rounds)
    rng = random.Random(seed)
    done = 0
    points = list(POINTS)
    while done < kills and c.next_op < len(c.ops):
        forced = points and (done % 2 == 1 or c.next_op >= c.first_upsert)
        if forced:
            point, nth, expect = points.pop(0)
            at = max(c.next_op, c.first_upsert)
            child = c.start(kill={"op": at, "point": point, "nth": nth})
            code = c.finished(child)
            assert code == -signal.SIGKILL, f"kill point {point} was not reached"
            assert c.ops[c.next_op][0] == "upsert"
        else:
            child = c.start()
            try:
                child.wait(timeout=rng.uniform(0.3, 0.9))
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
            code = c.finished(child)
            expect = None
        if code == -signal.SIGKILL:
            done += 1
        verify(c, expect=expect, rng=rng)
    assert done >= kills, f"only {done} kills before the work ran out"
    return c


def segment_files(db: Path) -> set[str]:
    """The files in the partitions' folders, as the manifest names them (``modality/name``)."""
    return {f"{p.parent.name}/{p.name}" for p in (db / "segments").glob("*/*")}


def finish_and_check_files(c: Campaign, stop: int | None = None) -> None:
    """One writer runs to the end; then one more commit, and only the files the manifest names remain."""
    code = c.finished(c.start(stop=stop))
    assert code == 0
    verify(c)
    with anybind.Store.open(c.db, device="cpu") as store:
        before = read_manifest(c.db)
        store.add_vectors("image", batch_vectors(c.seed, 10_000, 0, 3), keys=["final:0", "final:1", "final:2"])
        after = read_manifest(c.db)
        assert after.generation == before.generation + 1
        temps = [p for p in c.db.rglob("*") if is_temp(p.name)]
        assert not temps, f"temp files left after a clean commit: {temps}"
        assert {p.name for p in c.db.iterdir()} <= {
            "manifest.json",
            "items.sqlite",
            "items.sqlite-wal",
            "items.sqlite-shm",
            "segments",
        }
        # files of the generation before stay for its readers; anything else is gone
        assert segment_files(c.db) <= after.file_names() | before.file_names()
    with anybind.Store.open(c.db, device="cpu") as store, store.writer.locked():
        pass  # the next writer collects the previous generation's files
    assert segment_files(c.db) == after.file_names()
    assert {p.name for p in (c.db / "segments").iterdir()} <= set(MODALITIES)


def test_sigkilled_writers_lose_nothing_acknowledged_and_leave_no_half_batch(tmp_path, clip_space):
    c = campaign(tmp_path, clip_space, seed=11, batches=8, rounds=40, kills=10)  # more work than 10 kills reach
    assert c.next_op > c.first_upsert, "the kills ended before every batch was added"
    finish_and_check_files(c, stop=c.next_op + 3)
    last = c.ops[c.next_op - 1][2]  # the version the last operation wrote; batches after it hold the one before
    assert len(c.acked) == 8 and {v for v, _ in c.acked.values()} <= {last - 1, last}


@pytest.mark.slow
def test_a_hundred_sigkills_over_ten_thousand_items(tmp_path, clip_space):
    batches = 40
    plan = make_plan(23, batches)
    assert sum(e["n"] for e in plan) >= 10_000
    c = campaign(tmp_path, clip_space, seed=23, batches=batches, rounds=60, kills=100)
    assert c.next_op >= c.first_upsert, "the kills ended before every batch was added"
    finish_and_check_files(c, stop=min(len(c.ops), c.next_op + 3))


# -- a writer killed while it creates the store --------------------------------------------------------

CREATOR = textwrap.dedent(
    """
    import json, os, signal, sys
    import anybind
    import anybind.store.metadata as metadata
    import anybind.store.writer as writer
    from anybind.space import Space
    from anybind.space_config import SpaceConfig

    class RecordedSpace(Space):
        '''The test's space as the manifest records it (name, config, fingerprint, dim), without its models.'''

        def __init__(self, record):
            self.config = SpaceConfig.model_validate(record["config"])
            self.dim = record["dim"]
            self._describe = record["describe"]

        def describe(self):
            return self._describe

    def die(*_):
        os.kill(os.getpid(), signal.SIGKILL)

    cmd = json.loads(sys.argv[1])
    point = cmd["point"]
    if point == "db_created":  # the items database exists, with its schema
        real_init = metadata.MetaDB.__init__
        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            die()
        metadata.MetaDB.__init__ = init
    elif point == "generation_0":  # the first commits row staged, not committed
        metadata.MetaDB.record_commit = die
    elif point == "before_manifest":  # the database committed, no manifest
        writer.write_manifest = die
    elif point in ("manifest_tmp", "renamed"):
        real_replace = os.replace
        def replace(src, dst, *args, **kwargs):
            if point == "manifest_tmp" and os.path.basename(str(dst)) == "manifest.json":
                die()
            real_replace(src, dst, *args, **kwargs)
            if point == "renamed" and os.path.basename(str(dst)) == "manifest.json":
                die()
        os.replace = replace
    anybind.Store.open(cmd["db"], space=RecordedSpace(cmd["space"]), device="cpu")
    sys.exit(5)  # the kill point was not reached
    """
)


@pytest.mark.parametrize("point", ["db_created", "generation_0", "before_manifest", "manifest_tmp", "renamed"])
def test_a_writer_killed_while_creating_the_store_does_not_block_the_next(tmp_path, clip_space, point):
    db = tmp_path / "db"
    record = {"config": clip_space.config.model_dump(mode="json"), "describe": clip_space.describe()}
    record["dim"] = clip_space.dim
    cmd = json.dumps({"db": str(db), "point": point, "space": record})
    done = subprocess.run([sys.executable, "-c", CREATOR, cmd], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert db.is_dir() and any(db.iterdir())
    assert (db / "manifest.json").exists() == (point == "renamed")
    vectors = batch_vectors(5, 0, 0, 4)
    with anybind.Store.open(db, space=clip_space, device="cpu", lock_timeout=5) as store:
        assert len(store) == 0 and store.generation == 0
        ids = store.add_vectors("image", vectors, keys=["a", "b", "c", "d"])
    with anybind.Store.open(db, space=clip_space, device="cpu") as store:
        assert store.generation == 1 and len(store) == 4
        assert [r.key for r in store.get(ids)] == ["a", "b", "c", "d"]
        np.testing.assert_allclose(store.vectors(ids), vectors, atol=1e-6)
        assert store.check()["ok"]
        assert not [p for p in db.rglob("*") if is_temp(p.name)]
