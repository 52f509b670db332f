"""Damaged stores are refused, naming the damaged file; bad inputs are typed errors; readers write nothing.

One store is built with two partitions: ``image`` (Flat: three segments, two of them with tombstones) and
``text`` (``IVF4,Flat``: a sealed, indexed segment of more than 1000 rows with tombstones, plus an unsealed
tail). Every file the store wrote on the way is kept, so a "stale" file is a real older file of the same role.
Each case damages one file of a copy of that store (truncated, one bit flipped, deleted, replaced by an older
file) and then a fresh ``Store`` must raise a typed error naming the file, searching and ``info`` alike (never
an empty or wrong result), and ``anybind check --db`` must exit 2 naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image

import anybind
from anybind.cli import main
from anybind.errors import AnybindError, EmbeddingError, MetadataError, QueryError, StoreError
from anybind.store.manifest import read_manifest

DIM = 16


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


SUFFIXES = {".vectors.npy": "vectors", ".ids.npy": "ids", ".deleted.npy": "deleted", ".index.faiss": "index"}


def kind_of(name: str) -> str:
    """The role of a segment folder's file: vectors, ids, deleted, index or moments."""
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    assert name.startswith("moments."), name
    return "moments"


@dataclass
class Built:
    root: Path
    vectors: dict[str, np.ndarray]  # key -> vector of every item stored now
    older: dict[tuple[str, str], dict[bytes, str]]  # (partition, kind) -> content -> file name, of every file written


def _remember(root: Path, older: dict[tuple[str, str], dict[bytes, str]]) -> None:
    for path in (root / "segments").glob("*/*"):
        older.setdefault((path.parent.name, kind_of(path.name)), {}).setdefault(path.read_bytes(), path.name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, clip_space: anybind.Space) -> Built:
    root = tmp_path_factory.mktemp("integrity") / "db"
    older: dict[tuple[str, str], dict[bytes, str]] = {}
    vectors: dict[str, np.ndarray] = {}
    with anybind.Store.open(root, space=clip_space, device="cpu") as store:

        def add(modality: str, start: int, n: int, seed: int) -> None:
            keys = [f"{modality}-{i}" for i in range(start, start + n)]
            x = unit_vectors(n, seed)
            store.add_vectors(modality, x, keys=keys, metadata=[{"i": i} for i in range(start, start + n)])
            vectors.update(zip(keys, x, strict=True))
            _remember(root, older)

        def remove(*keys: str) -> None:
            store.remove(keys=list(keys))
            for key in keys:
                del vectors[key]
            _remember(root, older)

        for n in range(3):
            add("image", 60 * n, 60, seed=n)
        remove("image-3", "image-70")
        remove("image-5", "image-71")  # newer tombstone files of the same two segments
        add("text", 0, 600, seed=10)
        add("text", 600, 500, seed=11)
        store.optimize(modality="text", index="IVF4,Flat")
        _remember(root, older)
        add("text", 1100, 40, seed=12)
        remove(*[f"text-{i}" for i in range(0, 50, 10)])
        store.optimize(modality="text", index="IVF4,Flat")  # a second index, over 1135 rows
        _remember(root, older)
        remove("text-7", "text-8", "text-9")
        add("text", 1140, 30, seed=13)
        info = store.info()
    assert info["partitions"]["image"]["index"] == "Flat"
    assert info["partitions"]["text"]["sealed_segments"] == 1 and info["partitions"]["text"]["segments"] == 2
    assert info["partitions"]["text"]["requested_index"] == "IVF4,Flat"
    uri = f"file:{root / 'items.sqlite'}"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for name in ("items.sqlite-wal", "items.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    return Built(root, vectors, older)


def copy(built: Built, tmp_path: Path) -> Path:
    path = tmp_path / "db"
    shutil.copytree(built.root, path)
    return path


def target_file(path: Path, partition: str, kind: str) -> Path:
    """The file of ``kind`` that the manifest names in ``partition`` (of the first segment that has one)."""
    record = read_manifest(path).partitions[partition]
    if kind == "moments":
        return path / "segments" / partition / record.moments.name
    for seg in record.segments:
        file = getattr(seg, kind)
        if file is not None:
            return path / "segments" / partition / file.name
    raise AssertionError(f"no {kind} file in {partition}")


def damage(file: Path, how: str, built: Built | None = None, partition: str = "", kind: str = "") -> None:
    data = file.read_bytes()
    if how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "bitflip":
        flipped = bytearray(data)
        flipped[len(data) * 2 // 3] ^= 0x10
        file.write_bytes(bytes(flipped))
    elif how == "deleted":
        file.unlink()
    elif how == "stale":  # an older file of the same role in the same partition, preferably of the same size
        assert built is not None
        candidates = [content for content, name in built.older[(partition, kind)].items() if content != data]
        assert candidates, f"no older {kind} file of {partition} was written"
        candidates.sort(key=lambda content: (len(content) != len(data), len(content)))
        file.write_bytes(candidates[0])
    else:  # pragma: no cover
        raise AssertionError(how)


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(path: Path, named: str, capsys: pytest.CaptureFixture[str], query: np.ndarray, to: str) -> None:
    """A fresh Store (searching ``to``, searching everything, ``info``) and ``anybind check`` all refuse, naming
    ``named``."""
    attempts = {
        "search to": lambda s: s.search(vector=query, to=to, k=5),
        "search all": lambda s: s.search(vector=query, k=5),
        "info": lambda s: s.info(),
    }
    for what, attempt in attempts.items():
        with pytest.raises(AnybindError) as caught:
            store = anybind.Store.open(path, device="cpu")
            try:
                result = attempt(store)
                pytest.fail(f"{what} returned {result!r} from a store with a damaged {named}")
            finally:
                store.close()
        assert isinstance(caught.value, StoreError), f"{what}: {type(caught.value).__name__}: {caught.value}"
        assert named in str(caught.value), f"{what}: {caught.value}"
    code, out, err = cli(capsys, "check", "--db", path)
    assert code == 2, out + err
    assert named in out + err and "DAMAGED" in out + err


SEGMENT_CASES = [
    (partition, kind, how)
    for partition, kinds in (
        ("image", ("vectors", "ids", "deleted", "moments")),
        ("text", ("vectors", "ids", "deleted", "index", "moments")),
    )
    for kind in kinds
    for how in ("truncated", "bitflip", "deleted", "stale")
]


@pytest.mark.parametrize(("partition", "kind", "how"), SEGMENT_CASES, ids=["-".join(c) for c in SEGMENT_CASES])
def test_a_damaged_segment_file_is_refused_and_named(built, tmp_path, capsys, partition, kind, how):
    path = copy(built, tmp_path)
    file = target_file(path, partition, kind)
    damage(file, how, built, partition, kind)
    query = built.vectors[f"{partition}-{60 if partition == 'image' else 1100}"]
    assert_refused(path, file.name, capsys, query, partition)


def test_the_tail_segment_of_an_ann_partition_is_checked_too(built, tmp_path, capsys):
    path = copy(built, tmp_path)
    tail = read_manifest(path).partitions["text"].segments[-1]
    assert tail.index is None
    file = path / "segments" / "text" / tail.vectors.name
    damage(file, "bitflip")
    assert_refused(path, file.name, capsys, built.vectors["text-1150"], "text")


# -- the manifest --------------------------------------------------------------------------------------------


def _edit_count(path: Path, fix_checksum: bool) -> None:
    file = path / "manifest.json"
    raw = json.loads(file.read_text())
    raw["partitions"]["image"]["count"] += 1
    if fix_checksum:  # a consistent-looking edit: the manifest's own checksum recomputed
        body = {k: v for k, v in raw.items() if k != "checksum"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        raw["checksum"] = f"{zlib.crc32(text) & 0xFFFFFFFF:08x}"
    file.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize("how", ["truncated", "bitflip", "edited count"])
def test_a_damaged_manifest_is_refused_and_named(built, tmp_path, capsys, how):
    path = copy(built, tmp_path)
    if how == "edited count":
        _edit_count(path, fix_checksum=False)
    else:
        damage(path / "manifest.json", how)
    with pytest.raises(StoreError, match=r"manifest\.json"):
        anybind.Store.open(path, device="cpu")
    code, out, err = cli(capsys, "check", "--db", path)
    assert code == 2 and "manifest.json" in out + err
    code, out, err = cli(capsys, "search", "--db", path, "--text", "x")
    assert code == 2 and "manifest.json" in err


def test_sixty_single_bit_flips_of_the_manifest_are_all_caught(built, tmp_path):
    data = (built.root / "manifest.json").read_bytes()
    path = copy(built, tmp_path)
    rng = np.random.default_rng(0)
    for position in sorted(rng.choice(len(data), size=60, replace=False).tolist()):
        flipped = bytearray(data)
        flipped[position] ^= 1 << int(rng.integers(8))
        (path / "manifest.json").write_bytes(bytes(flipped))
        with pytest.raises(StoreError, match=r"manifest\.json"):
            anybind.Store.open(path, device="cpu")


def test_a_recomputed_checksum_does_not_hide_an_edited_count(built, tmp_path, capsys):
    path = copy(built, tmp_path)
    count = read_manifest(path).partitions["image"].count
    _edit_count(path, fix_checksum=True)
    query = built.vectors["image-60"]
    for attempt in (lambda s: s.search(vector=query, to="image", k=5), lambda s: s.info()):
        with pytest.raises(StoreError, match=f"segments hold {count} live rows, the manifest counts {count + 1}"):
            store = anybind.Store.open(path, device="cpu")
            try:
                attempt(store)
            finally:
                store.close()
    code, out, _ = cli(capsys, "check", "--db", path)
    assert code == 2 and "segments/image" in out


def visible_rows(path: Path) -> int:
    uri = f"file:{path / 'items.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return conn.execute("SELECT COUNT(*) FROM items WHERE removed_gen IS NULL").fetchone()[0]


COORDINATION = {"items.sqlite-wal", "items.sqlite-shm"}  # SQLite's reader coordination files, not store data


def listing(path: Path) -> dict[str, tuple[int, int]]:
    """Every store file under ``path`` (not SQLite's -wal/-shm): (size, mtime in ns)."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in path.rglob("*")
        if p.is_file() and p.name not in COORDINATION
    }


def test_a_deleted_manifest_is_refused_and_the_store_is_not_recreated(
    built, tmp_path, capsys, clip_space, tiny_clip_dir
):
    path = copy(built, tmp_path)
    (path / "manifest.json").unlink()
    rows = visible_rows(path)
    before = listing(path)
    for options in ({}, {"space": clip_space}, {"create": False}, {"space": clip_space, "index": "Flat"}):
        with pytest.raises(StoreError, match=r"holds store files .* no readable manifest\.json"):
            anybind.Store.open(path, device="cpu", **options)
    media = tmp_path / "media"
    media.mkdir()
    make_image(media / "one.png", 1)
    code, _, err = cli(capsys, "index", media, "--db", path, "-s", f"clip:{tiny_clip_dir}", "--no-progress")
    assert code == 2 and "manifest.json" in err, err
    code, out, err = cli(capsys, "check", "--db", path)
    assert code == 2 and "manifest.json" in out + err
    assert not (path / "manifest.json").exists()
    assert visible_rows(path) == rows
    after = listing(path)
    assert after == before, "refusing the store changed its files"


# -- the items database ------------------------------------------------------------------------------------


def test_an_empty_items_database_is_refused_and_named(built, tmp_path, capsys):
    path = copy(built, tmp_path)
    (path / "items.sqlite").write_bytes(b"")
    assert_refused(path, "items.sqlite", capsys, built.vectors["image-60"], "image")
    assert (path / "items.sqlite").stat().st_size == 0


def test_a_deleted_items_database_is_refused_and_not_recreated(built, tmp_path, capsys, clip_space):
    path = copy(built, tmp_path)
    (path / "items.sqlite").unlink()
    assert_refused(path, "items.sqlite", capsys, built.vectors["image-60"], "image")
    with pytest.raises(StoreError, match=r"items\.sqlite"):
        anybind.Store.open(path, space=clip_space, device="cpu").add_vectors("image", unit_vectors(1, 5))
    assert not (path / "items.sqlite").exists()


def test_an_items_database_with_its_pages_overwritten_is_refused_and_named(built, tmp_path, capsys):
    path = copy(built, tmp_path)
    file = path / "items.sqlite"
    data = bytearray(file.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    rng = np.random.default_rng(1)
    data[page:] = rng.integers(0, 256, len(data) - page, dtype=np.uint8).tobytes()  # every page but the first
    file.write_bytes(bytes(data))
    assert_refused(path, "items.sqlite", capsys, built.vectors["image-60"], "image")


def test_a_corrupted_page_under_a_key_is_refused_never_misread(built, tmp_path, capsys):
    """One page (the one holding a key's row) overwritten: reading that item raises a StoreError naming the
    database; every search either raises so or returns exactly the right hits; ``check`` reports it."""
    path = copy(built, tmp_path)
    file = path / "items.sqlite"
    data = bytearray(file.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    at = data.find(b"image-150")
    assert at > page
    start = at // page * page
    data[start : start + page] = np.random.default_rng(2).integers(0, 256, page, dtype=np.uint8).tobytes()
    file.write_bytes(bytes(data))
    with anybind.Store.open(path, device="cpu") as store:
        with pytest.raises(StoreError, match=r"items\.sqlite"):
            store.get(keys=["image-150"])
        keys = sorted(built.vectors)
        for key in [*keys[::37], "image-150"]:
            query = built.vectors[key]
            modality = key.split("-")[0]
            try:
                hits = store.search(vector=query, to=modality, k=3)
            except StoreError as exc:
                assert "items.sqlite" in str(exc)
                continue
            same = [k for k in keys if k.startswith(modality + "-")]
            scores = np.stack([built.vectors[k] for k in same]) @ query
            assert hits[0].key == key and [h.score for h in hits] == pytest.approx(
                np.sort(scores)[::-1][:3].tolist(), abs=1e-5
            )
    code, out, err = cli(capsys, "check", "--db", path)
    assert code == 2 and "items.sqlite" in out + err


CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import anybind
    store = anybind.Store.open(sys.argv[1], device="cpu")
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    store.add_vectors("image", x, keys=[f"late-{i}" for i in range(5)])
    assert os.path.getsize(os.path.join(sys.argv[1], "items.sqlite-wal")) > 0
    os.kill(os.getpid(), signal.SIGKILL)  # no checkpoint, no close
    """
)


def test_a_lost_wal_after_a_writer_crash_is_refused_and_named(built, tmp_path, capsys):
    path = copy(built, tmp_path)
    done = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(path)], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    with anybind.Store.open(path, device="cpu") as store:  # with its WAL the store is whole
        assert len(store.get(keys=[f"late-{i}" for i in range(5)])) == 5
    (path / "items.sqlite-wal").unlink()
    (path / "items.sqlite-shm").unlink(missing_ok=True)
    assert_refused(path, "items.sqlite", capsys, built.vectors["image-60"], "image")


# -- readers write nothing -----------------------------------------------------------------------------------


def contents(path: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(path))] = (st.st_size, st.st_mtime_ns, p.read_bytes())
    return out


def test_searching_writes_nothing(built, tmp_path):
    path = copy(built, tmp_path)
    before = contents(path)
    with anybind.Store.open(path, device="cpu") as store:
        for key in ("image-60", "text-1100", "text-1150"):
            hits = store.search(vector=built.vectors[key], k=5)
            assert hits[0].key == key
        store.search(vector=built.vectors["image-60"], k=5, where={"i": 61})
        store.get(keys=["image-60"])
        store.vectors([1, 2, 3])
        store.info()
        assert store.check()["ok"]
    after = contents(path)
    created = set(after) - set(before)
    assert created <= COORDINATION, f"a reader created {created - COORDINATION}"  # SQLite makes these, empty
    if "items.sqlite-wal" in created:
        assert after["items.sqlite-wal"][0] == 0, "a reader wrote to the WAL"
    assert set(before) <= set(after), "a reader deleted files"
    for name, value in before.items():
        if name != "items.sqlite-shm":  # shared memory of SQLite's readers, not data
            assert after[name] == value, f"a reader changed {name}"


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` made read-only: a read-only bind mount of it onto itself when running as root (permissions do not
    stop root), else modes 0o555/0o444."""
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, check=False)
        if mounted.returncode != 0:
            pytest.skip(f"root cannot bind-mount here ({mounted.stderr.decode().strip()}): read-only is untestable")
        try:
            remount = ["mount", "-o", "remount,ro,bind", str(path)]
            subprocess.run(remount, capture_output=True, check=True)
            yield
        finally:
            subprocess.run(["umount", str(path)], capture_output=True, check=False)
        return
    modes = [(p, p.stat().st_mode) for p in [path, *path.rglob("*")]]
    for p, _ in reversed(modes):
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p, mode in modes:
            p.chmod(mode)


def test_a_store_on_a_read_only_directory_can_be_searched(built, tmp_path):
    path = copy(built, tmp_path)
    with read_only(path):
        with pytest.raises(OSError):
            (path / "probe").write_text("x")  # the directory really is read-only
        before = contents(path)
        with anybind.Store.open(path, device="cpu") as store:
            for key in ("image-60", "text-1100"):
                hits = store.search(vector=built.vectors[key], k=3)
                assert hits[0].key == key and hits[0].score == pytest.approx(1.0, abs=1e-5)
            assert len(store) == len(built.vectors)
            with pytest.raises(StoreError):
                store.add_vectors("image", unit_vectors(1, 9))
        assert contents(path) == before


# -- bad inputs -----------------------------------------------------------------------------------------------

ODD_KEYS = [
    "ключ/🎵",
    "it's",
    "a.b",
    "$",
    "[0]",
    "*",
    "x') OR 1=1 --",
    "'; DROP TABLE items; --",
    "a b",
    "back\\slash",
    "tab\there",
]


@pytest.fixture
def small(tmp_path: Path, clip_space: anybind.Space):
    """Ten image items with odd metadata keys and big numbers."""
    store = anybind.Store.open(tmp_path / "db", space=clip_space, device="cpu")
    meta = [
        {"n": 12345678901234567890 + i, "s": str(12345678901234567890 + i), "big": 9223372036854775807 - i}
        | {key: i % 2 for key in ODD_KEYS}
        | {"nested": {"b": i}}
        for i in range(10)
    ]
    store.add_vectors("image", unit_vectors(10, seed=4), metadata=meta, keys=[f"k{i}" for i in range(10)])
    yield store
    store.close()


@pytest.mark.parametrize("k", [0, -1, "a", 2.5, None, True])
def test_k_must_be_a_positive_integer(small, k):
    with pytest.raises(QueryError, match="k must be a positive integer"):
        small.search(vector=unit_vectors(1, 1)[0], k=k)


@pytest.mark.parametrize("rerank", [0, -3, "5"])
def test_rerank_must_be_a_positive_integer(small, rerank):
    with pytest.raises(QueryError, match="rerank"):
        small.search(vector=unit_vectors(1, 1)[0], rerank=rerank)


@pytest.mark.parametrize("key", ODD_KEYS)
def test_odd_filter_keys_match_literally(small, key):
    hits = small.search(vector=unit_vectors(1, 1)[0], k=10, where={key: 1})
    assert sorted(h.key for h in hits) == [f"k{i}" for i in range(1, 10, 2)]
    assert small.search(vector=unit_vectors(1, 1)[0], k=10, where={key + "x": 1}).hits == []


def test_sql_in_a_filter_value_matches_nothing(small):
    for value in ["1' OR '1'='1", '1" OR "1"="1', "1) OR (1=1", "%", "_"]:
        assert small.search(vector=unit_vectors(1, 1)[0], k=10, where={"it's": value}).hits == []
    assert len(small) == 10  # and the table is still there


def test_a_dotted_key_is_not_a_path(small):
    assert small.search(vector=unit_vectors(1, 1)[0], k=10, where={"nested.b": 3}).hits == []


@pytest.mark.parametrize(
    "where",
    [
        {'say "hi"': 1},
        {"": 1},
        {5: 1},
        {None: 1},
        {"\ud800": 1},
        {"a\x00b": 1},
        {"s": {"x": 1}},
        {"s": float("nan")},
        {"s": "\ud800"},
        {"s": "a\x00"},
        {"s": [1, [2]]},
        ["s"],
        "s=1",
    ],
)
def test_filters_that_cannot_be_applied_are_metadata_errors(small, where):
    with pytest.raises(MetadataError):
        small.search(vector=unit_vectors(1, 1)[0], k=10, where=where)


def test_a_twenty_digit_filter_value_matches_exactly(small):
    q = unit_vectors(1, 1)[0]
    hits = small.search(vector=q, k=10, where={"s": "12345678901234567893"})
    assert [h.key for h in hits] == ["k3"]
    hits = small.search(vector=q, k=10, where={"big": 9223372036854775807})
    assert [h.key for h in hits] == ["k0"]
    hits = small.search(vector=q, k=10, where={"n": 12345678901234567893})
    assert [h.key for h in hits] == ["k3"]  # not k2 or k4, which the same float64 would match too


@pytest.mark.parametrize(("row", "value", "said"), [(3, np.nan, "NaN"), (0, np.inf, "infinite"), (6, 0.0, "zeros")])
def test_unusable_vectors_are_refused_naming_the_row(small, row, value, said):
    vectors = unit_vectors(8, seed=6)
    if value == 0.0:
        vectors[row] = 0.0
    else:
        vectors[row, 5] = value
    generation = small.generation
    with pytest.raises(EmbeddingError, match=rf"vector {row} for 'image' .*{said}"):
        small.add_vectors("image", vectors)
    assert small.generation == generation and len(small) == 10
