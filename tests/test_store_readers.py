"""Readers during writes: every search sees exactly one generation, and none raises.

The data make each generation recognisable. The store holds random "distractor" items, and each commit ``g``
adds ``image_size(g)`` image and ``text_size(g)`` text items whose vectors all equal one fixed query direction,
with metadata ``{"gen": g}``, and removes the previous generation's, in the same commit. A search for that
direction must therefore return, above every distractor (score 1), exactly the items of one generation: all
of them, all with the same ``gen``, and exactly the ids the writer got for that generation. Readers are threads
(each with its own ``Store``) and processes; the writer is a thread and, separately, a process.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import anybind
from anybind.store.metadata import NewItem

DIM = 16
COMMITS = 100
K = 30  # more than the largest generation (5 + 4 items)
DISTRACTORS = 200


def image_size(g: int) -> int:
    return 1 + g % 5


def text_size(g: int) -> int:
    return 1 + (g * 3) % 4


def direction() -> np.ndarray:
    q = np.random.default_rng(12345).standard_normal(16)
    return (q / np.linalg.norm(q)).astype(np.float32)


def observe(store, q, k, to=None):
    """One search, reduced to what identifies a generation: (gen, sorted ids of the score-1 hits) per target,
    plus a list of violations of the one-generation rule."""
    hits = store.search(vector=q, k=k, to=to)
    top = [h for h in hits if h.score > 0.9999]
    problems = []
    if [h.score > 0.9999 for h in hits] != [True] * len(top) + [False] * (len(hits) - len(top)):
        problems.append("a distractor ranks above an item of the generation")
    gens = sorted({h.metadata.get("gen") for h in top}, key=str)
    if len(gens) != 1:
        problems.append(f"hits of generations {gens}")
        return None, [], problems
    g = gens[0]
    want = (image_size(g) if to in (None, "image") else 0) + (text_size(g) if to in (None, "text") else 0)
    if len(top) != want:
        problems.append(f"generation {g}: {len(top)} items found, it has {want}")
    modalities = sorted(h.modality for h in top)
    if to is None and modalities != sorted(["image"] * image_size(g) + ["text"] * text_size(g)):
        problems.append(f"generation {g}: modalities {modalities}")
    return g, sorted(h.id for h in top), problems


def gen_items(g: int, q: np.ndarray) -> list[NewItem]:
    return [NewItem("image", q, metadata={"gen": g}) for _ in range(image_size(g))] + [
        NewItem("text", q, metadata={"gen": g}) for _ in range(text_size(g))
    ]


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_generations(path: Path, commits: int) -> dict[int, list[int]]:
    """The writer: generation g's items replace generation g-1's, one commit each. Returns ids per gen."""
    q = direction()
    written: dict[int, list[int]] = {}
    with anybind.Store.open(path, device="cpu") as store:
        previous = written[0] = seed_ids(store)
        for g in range(1, commits + 1):
            with store.writer.locked():
                commit = store.writer.commit(gen_items(g, q), remove=previous)
            assert sorted(i for ids in commit.removed.values() for i in ids) == sorted(previous)
            previous = written[g] = commit.ids
    return written


def seed_ids(store) -> list[int]:
    rows = store.get(range(1, store.manifest.next_id))
    return [r.id for r in rows if r.metadata.get("gen") == 0]


WRITER = (
    textwrap.dedent(
        """
        from __future__ import annotations
        import json, sys
        from pathlib import Path
        import numpy as np
        import anybind
        from anybind.store.metadata import NewItem
        """
    )
    + "".join(inspect.getsource(f) for f in (image_size, text_size, direction, gen_items, seed_ids, write_generations))
    + textwrap.dedent(
        """
        written = write_generations(Path(sys.argv[1]), int(sys.argv[2]))
        print(json.dumps(written), flush=True)
        """
    )
)

READER = (
    textwrap.dedent(
        """
        from __future__ import annotations
        import json, os, sys, time
        import numpy as np
        import anybind
        """
    )
    + "".join(inspect.getsource(f) for f in (image_size, text_size, direction, observe))
    + textwrap.dedent(
        """
        path, stop, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
        q = direction()
        seen, problems, errors, gens, searches = {}, [], [], [], 0
        with anybind.Store.open(path, device="cpu") as store:
            print("ready", flush=True)
            while True:
                last = os.path.exists(stop)  # one more search after the writer is done
                for to in (None, "image", "text"):
                    try:
                        g, ids, bad = observe(store, q, k, to)
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    searches += 1
                    problems += bad
                    if g is not None:
                        gens.append(g)
                        seen.setdefault(f"{g}:{to}", ids)
                        if seen[f"{g}:{to}"] != ids:
                            problems.append(f"generation {g} ({to}) gave ids {ids}, earlier {seen[f'{g}:{to}']}")
                if last:
                    break
                time.sleep(0.005)
        if any(b < a for a, b in zip(gens, gens[1:])):
            problems.append("a later search saw an older generation")
        print(json.dumps({"searches": searches, "seen": seen, "problems": problems[:20], "errors": errors[:20]}))
        """
    )
)


@pytest.fixture
def db(tmp_path: Path, clip_space: anybind.Space) -> Path:
    """Distractors in both partitions, plus generation 0 of the recognisable items, in one commit."""
    path = tmp_path / "db"
    q = direction()
    with anybind.Store.open(path, space=clip_space, device="cpu") as store:
        items = [NewItem("image", v) for v in unit_vectors(DISTRACTORS, seed=1)]
        items += [NewItem("text", v) for v in unit_vectors(DISTRACTORS, seed=2)]
        items += gen_items(0, q)
        with store.writer.locked():
            store.writer.commit(items)
    return path


class ReaderThread(threading.Thread):
    """Searches with its own Store until told to stop (then once more), recording what it saw."""

    def __init__(self, path: Path, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.path, self.stop = path, stop
        self.seen: dict[str, list[int]] = {}
        self.problems: list[str] = []
        self.errors: list[str] = []
        self.gens: list[int] = []
        self.searches = 0

    def run(self) -> None:
        q = direction()
        with anybind.Store.open(self.path, device="cpu") as store:
            while True:
                last = self.stop.is_set()
                for to in (None, "image", "text"):
                    try:
                        g, ids, bad = observe(store, q, K, to)
                    except Exception as exc:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    self.searches += 1
                    self.problems += bad
                    if g is not None:
                        self.gens.append(g)
                        if self.seen.setdefault(f"{g}:{to}", ids) != ids:
                            self.problems.append(f"generation {g} ({to}): ids {ids}, earlier {self.seen[f'{g}:{to}']}")
                if last:
                    break
                time.sleep(0.005)  # let the writer thread have the GIL now and then


def start_reader_processes(path: Path, stop: Path, n: int) -> list[subprocess.Popen]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(path), str(stop), str(K)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    for proc in procs:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()[-3000:]
    return procs


def check_reports(written: dict[int, list[int]], reports: list[dict]) -> None:
    """Every reader's observations are generations the writer made, with exactly that generation's ids."""
    with_gen = {g: sorted(ids) for g, ids in written.items()}
    for report in reports:
        assert report["errors"] == [], report["errors"]
        assert report["problems"] == [], report["problems"]
        assert report["searches"] > 0
        for tag, ids in report["seen"].items():
            g, to = tag.split(":")
            g = int(g)
            assert g in written, f"a reader saw generation {g}, which the writer never made"
            if to == "None":
                assert ids == with_gen[g], f"generation {g}: {ids} != {with_gen[g]}"
            else:
                assert set(ids) <= set(with_gen[g]) and len(ids) == (image_size(g) if to == "image" else text_size(g))
    last = [max(int(tag.split(":")[0]) for tag in report["seen"]) for report in reports]
    assert all(g == max(written) for g in last), f"the final searches saw generations {last}, not {max(written)}"


def thread_report(reader: ReaderThread) -> dict:
    problems = list(reader.problems)
    if any(b < a for a, b in zip(reader.gens, reader.gens[1:], strict=False)):
        problems.append("a later search saw an older generation")
    return {"searches": reader.searches, "seen": reader.seen, "problems": problems, "errors": reader.errors}


def process_reports(procs: list[subprocess.Popen]) -> list[dict]:
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def check_readers(readers: list, procs: list, written: dict) -> None:
    """Join the reader threads, then check every thread's and process's results against what was written."""
    for reader in readers:
        reader.join(timeout=120)
        assert not reader.is_alive()
    reports = [thread_report(r) for r in readers] + process_reports(procs)
    check_reports(written, reports)
    assert len({tag.split(":")[0] for r in reports for tag in r["seen"]}) > 3, "the readers saw too few generations"


def test_searches_during_a_writer_thread_see_one_generation(db, tmp_path):
    stop_file = tmp_path / "stop"
    procs = start_reader_processes(db, stop_file, 1)
    stop = threading.Event()
    readers = [ReaderThread(db, stop) for _ in range(2)]
    try:
        for reader in readers:
            reader.start()
        time.sleep(0.2)
        written = write_generations(db, COMMITS)
    finally:
        stop.set()
        stop_file.touch()
    check_readers(readers, procs, written)


def test_searches_during_a_writer_process_see_one_generation(db, tmp_path):
    stop_file = tmp_path / "stop"
    procs = start_reader_processes(db, stop_file, 1)
    stop = threading.Event()
    readers = [ReaderThread(db, stop) for _ in range(2)]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(COMMITS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for reader in readers:
            reader.start()
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-3000:]
    finally:
        stop.set()
        stop_file.touch()
    written = {int(g): ids for g, ids in json.loads(out.strip().splitlines()[-1]).items()}
    assert sorted(written) == list(range(COMMITS + 1))
    check_readers(readers, procs, written)
