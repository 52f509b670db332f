"""Store engine v2 (issue 15): ingest by commits, bytes on disk, RSS, cold open and search after many commits.

    python bench/store_bench.py [--smoke] [--n N] [--out DIR] [--chroma-max N] [--workdir DIR]
    python bench/run.py --only store            # --quick runs the --smoke sizes

Full: 1M x 512 ingested, search at 100k, 10,000 small commits, 1,000 queries; ``--smoke``: 20k everywhere, 1,000
small commits, 200 queries (a few minutes on 2 cores). Vectors are ``data.py``'s (512-d, unit length, clustered
like CLIP image embeddings); every system runs in its own child process (``common.run_in_child``):

- **ingest**: the vectors in batches of 1,024, one commit per batch, each call timed: anybind
  ``store.add_vectors("image", V)``, lancedb ``table.add`` (a local table of ``id`` int64 and ``vector``
  ``fixed_size_list<float32>[512]``), chromadb ``collection.add(ids=..., embeddings=...)`` into a
  ``PersistentClient`` (at most ``--chroma-max`` vectors; the rest extrapolated, see :func:`extrapolate_total`).
  Peak RSS of the ingest is the high-water mark after the store is open (reset then through
  ``/proc/self/clear_refs``) minus the RSS right after opening (anybind's store loads its space, a tiny random
  CLIP: torch and transformers); disk = bytes under the store's directory vs the raw vectors (N x 512 x 4).
- **cold open**: a fresh process opens each store and answers one vector query (k = 10), first with the store's
  files dropped from the page cache (``posix_fadvise(DONTNEED)``), then again warm; interpreter start-up and the
  library import are timed apart from open + first result.
- **search**: Flat p50 (one query at a time, k = 10, ``store.search(vector=q)`` end to end) after a bulk load in
  batches of 1,024, after many small commits onto a bulk-loaded base, and in one segment
  (``optimize(index="Flat")``), against raw faiss ``IndexFlatIP``; HNSW32 (``index="HNSW32"`` store, bulk load,
  ``optimize()`` to recall 0.95) against raw faiss ``IndexHNSWFlat`` M=32 at the same efSearch. Raw faiss runs on
  one thread (as anybind runs faiss for a few queries; faiss Flat is also faster so at batch 1 here). The systems
  compared are searched in one process, taking turns in blocks of 50 queries (:func:`paired`): RSS is not
  measured there, and load from other work on a shared machine then falls on all of them alike. Overhead =
  anybind p50 - raw faiss p50.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import data
import numpy as np
from common import (
    FIG_DIR,
    MIB,
    Section,
    directory_bytes,
    figure_link,
    log,
    machine_info,
    md_table,
    peak_rss_mib,
    recall_at_k,
    rss_mib,
    run_in_child,
    save_figure,
    summarize,
    utc_now,
    versions,
)

BATCH = 1024
PER_COMMIT = 5  # items per small commit
K = 10
GB = 1e9
TARGET_DISK, TARGET_RSS_GB, TARGET_OPEN_S, TARGET_OVERHEAD_MS = 1.15, 1.5, 2.0, 0.2
SYSTEMS = ("anybind", "lancedb", "chromadb")


@dataclass(frozen=True)
class Sizes:
    n: int  # vectors ingested (disk, RSS, cold open)
    search_n: int  # vectors of the search comparison
    commits: int  # small commits of PER_COMMIT items onto a bulk-loaded base
    queries: int
    chroma_max: int  # chromadb ingests at most this many (the rest is extrapolated)
    timeout_s: int  # per child process


FULL = Sizes(1_000_000, 100_000, 10_000, 1000, 200_000, 3 * 3600)
SMOKE = Sizes(20_000, 20_000, 1_000, 200, 20_000, 900)


# -- children: ingest --------------------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _anybind_adder(path: str, clip: str) -> tuple[Any, Any]:
    import anybind

    db = anybind.Store.open(path, space=f"clip:{clip}")

    def finish() -> dict:
        part = db.info()["partitions"]["image"]
        db.close()
        sqlite = sum(f.stat().st_size for f in Path(path).glob("items.sqlite*"))
        return {"segments": part["segments"], "index": part["index"], "generation_bytes": part["bytes"]} | {
            "sqlite_bytes": sqlite
        }

    return lambda first, block: db.add_vectors("image", block), finish


def _lance_adder(path: str, clip: str) -> tuple[Any, Any]:
    import lancedb
    import pyarrow as pa

    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), data.DIM))])
    table = lancedb.connect(path).create_table("bench", schema=schema)

    def add(first: int, block: np.ndarray) -> None:
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), data.DIM)
        table.add(pa.table({"id": pa.array(np.arange(first, first + len(block))), "vector": vectors}, schema=schema))

    return add, lambda: {"versions": table.version}


def _chroma_adder(path: str, clip: str) -> tuple[Any, Any]:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
    collection = client.create_collection("bench", configuration={"hnsw": {"space": "ip"}})

    def add(first: int, block: np.ndarray) -> None:
        collection.add(ids=[str(r) for r in range(first, first + len(block))], embeddings=block)

    return add, lambda: {"count": collection.count()}


ADDERS = {"anybind": _anybind_adder, "lancedb": _lance_adder, "chromadb": _chroma_adder}


def child_ingest(system: str, base: str, n: int, path: str, clip: str) -> dict:
    """Open a new store of ``system`` and add the first ``n`` base vectors in batches of BATCH, timing each call."""
    shutil.rmtree(path, ignore_errors=True)
    out: dict[str, Any] = {"rss_start_mib": rss_mib(), "load_before": os.getloadavg()[0]}
    add, finish = ADDERS[system](path, clip)
    out |= {"rss_open_mib": rss_mib(), "peak_open_mib": peak_rss_mib(), "peak_reset": _reset_peak_rss()}
    commit_s: list[float] = []
    start = time.perf_counter()
    for first, block in data.iter_rows(Path(base), BATCH):  # plain reads: the input never counts towards RSS
        if first >= n:
            break
        block = block[: n - first]
        began = time.perf_counter()
        add(first, block)
        commit_s.append(time.perf_counter() - began)
    out |= {"loop_s": time.perf_counter() - start, "peak_ingest_mib": peak_rss_mib()}
    out |= finish() | {"items": min(n, len(commit_s) * BATCH), "commit_s": commit_s}
    out["disk_bytes"] = directory_bytes(Path(path))
    return out


# -- children: cold open -------------------------------------------------------------------------------------


def _open_anybind(path: str) -> Any:
    import anybind

    db = anybind.Store.open(path)
    return lambda q: [hit.id for hit in db.search(vector=q, k=K)]


def _open_lance(path: str) -> Any:
    import lancedb

    table = lancedb.connect(path).open_table("bench")
    return lambda q: [
        row["id"] for row in table.search(q).distance_type("dot").select(["id", "_distance"]).limit(K).to_list()
    ]


def _open_chroma(path: str) -> Any:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
    collection = client.get_collection("bench")
    return lambda q: collection.query(query_embeddings=[q], n_results=K, include=[])["ids"][0]


OPENERS = {
    "anybind": ("anybind", _open_anybind),
    "lancedb": ("lancedb", _open_lance),
    "chromadb": ("chromadb", _open_chroma),
}


def child_cold_open(system: str, path: str, queries: str) -> dict:
    """A fresh process: interpreter start-up (process creation to here, bench imports included), the library
    import, then open + first vector query, and a second query once open."""
    import psutil

    out: dict[str, Any] = {"interpreter_s": time.time() - psutil.Process().create_time()}
    q = np.load(queries)[:2]
    module, opener = OPENERS[system]
    start = time.perf_counter()
    importlib.import_module(module)
    out["import_s"] = time.perf_counter() - start
    start = time.perf_counter()
    search = opener(path)
    opened = time.perf_counter()
    first = search(q[0])
    done = time.perf_counter()
    search(q[1])
    out |= {"open_s": opened - start, "first_query_s": done - opened, "open_to_first_s": done - start}
    out |= {"second_query_s": time.perf_counter() - done, "hits": len(first), "rss_mib": rss_mib()}
    out["torch_loaded"] = "torch" in sys.modules
    return out


def evict_page_cache(path: Path) -> float:
    """Drop the page-cache pages of every file under ``path`` (fsync, then ``posix_fadvise(DONTNEED)``: only
    these files, nothing else on the machine); the MiB the kernel's page cache shrank by meanwhile."""
    import psutil

    before = psutil.virtual_memory().cached
    for file in path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return (before - psutil.virtual_memory().cached) / MIB


# -- children: search ------------------------------------------------------------------------------------------


def _add_in_commits(db: Any, vectors: np.ndarray, first_row: int, size: int) -> tuple[int, list[float]]:
    """Add ``vectors`` (base rows from ``first_row``) in commits of ``size``; (store id minus base row, seconds of
    each commit)."""
    offset, seconds = None, []
    for at in range(0, len(vectors), size):
        began = time.perf_counter()
        ids = db.add_vectors("image", vectors[at : at + size])
        seconds.append(time.perf_counter() - began)
        offset = ids[0] - (first_row + at) if offset is None else offset
    return int(offset), seconds


PAIR_BLOCK = 50  # queries a call searches in a row before the next call takes over


def paired(calls: dict[str, Any], files: dict) -> dict[str, dict]:
    """p50/p99/QPS and recall@10 of each search call over the same queries, the calls taking turns block by block
    of PAIR_BLOCK queries (their order rotating), so that load from other work on a shared machine falls on every
    call alike. Blocks, not single queries: a call that searched the query just searched by another would find
    its part of the index in the CPU caches (an HNSW walk revisits the same nodes) and look faster than it is."""
    queries, truth = np.load(files["queries"]), np.load(files["truth"])
    names = list(calls)
    for q in queries[:5]:  # warm-up, untimed
        for call in calls.values():
            call(q)
    seconds = {name: np.empty(len(queries)) for name in names}
    found: dict[str, list] = {name: [None] * len(queries) for name in names}
    for turn, start in enumerate(range(0, len(queries), PAIR_BLOCK)):
        rows = range(start, min(start + PAIR_BLOCK, len(queries)))
        first = turn % len(names)
        for name in names[first:] + names[:first]:
            for row in rows:
                began = time.perf_counter()
                found[name][row] = calls[name](queries[row])
                seconds[name][row] = time.perf_counter() - began
    return {name: summarize(seconds[name]) | {"recall": recall_at_k(found[name], truth)} for name in names}


def _anybind_calls(name: str, db: Any, offset: int) -> dict[str, Any]:
    """``store.search(vector=q, k=10)`` end to end (hits), and its partition's own search (``name partition``)."""
    view = db.partition("image")
    return {
        name: lambda q: [hit.id - offset for hit in db.search(vector=q, k=K)],
        f"{name} partition": lambda q: view.search(q[None], K)[1][0] - offset,
    }


def _described(measured: dict, name: str, db: Any) -> dict:
    """``name``'s figures, its partition's p50, and the partition's segments / index / params (``Store.info()``)."""
    part = db.info()["partitions"]["image"]
    out = measured[name] | {"partition_p50_ms": measured[f"{name} partition"]["p50_ms"]}
    return out | {"segments": part["segments"], "index": part["index"], "params": part["params"]}


def child_flat_search(files: dict, root: str, clip: str, commits: int) -> dict:
    """anybind Flat stores of the same vectors: a bulk load in commits of BATCH; a base so loaded plus ``commits``
    commits of PER_COMMIT; a copy of that one after ``optimize(index="Flat")`` (one segment); and raw faiss
    ``IndexFlatIP`` on one thread, all searched interleaved."""
    import faiss

    import anybind

    base = np.load(files["base"])
    paths = {name: Path(root) / f"flat-{name}" for name in ("bulk", "small_commits", "one_segment")}
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    bulk = anybind.Store.open(paths["bulk"], space=f"clip:{clip}")
    bulk_offset, bulk_s = _add_in_commits(bulk, base, 0, BATCH)
    small = anybind.Store.open(paths["small_commits"], space=f"clip:{clip}")
    first_small = len(base) - commits * PER_COMMIT
    offset, _ = _add_in_commits(small, base[:first_small], 0, BATCH)
    _, small_s = _add_in_commits(small, base[first_small:], first_small, PER_COMMIT)
    small.close()
    shutil.copytree(paths["small_commits"], paths["one_segment"])
    small, one = anybind.Store.open(paths["small_commits"]), anybind.Store.open(paths["one_segment"])
    start = time.perf_counter()
    one.optimize(index="Flat")
    optimize_s = time.perf_counter() - start
    index = faiss.IndexFlatIP(data.DIM)
    index.add(base)
    faiss.omp_set_num_threads(1)  # its faster batch-1 setting ("Physical limit"); no OpenMP barrier in the pairing
    stores = {"bulk": (bulk, bulk_offset), "small_commits": (small, offset), "one_segment": (one, offset)}
    calls = {key: call for name, (db, at) in stores.items() for key, call in _anybind_calls(name, db, at).items()}
    measured = paired(calls | {"faiss": lambda q: index.search(q[None], K)[1][0]}, files)
    out = {name: _described(measured, name, db) for name, (db, _) in stores.items()}
    out["faiss"] = measured["faiss"] | {"threads": 1}
    out["bulk"]["build_s"], out["one_segment"]["optimize_s"] = sum(bulk_s), optimize_s
    out["small_commits"] |= {"base_items": first_small, "commits": len(small_s), "per_commit": PER_COMMIT}
    ms = np.asarray(small_s) * 1e3
    out["small_commits"] |= {"commits_total_s": ms.sum() / 1e3, "commit_p50_ms": np.median(ms)}
    out["small_commits"] |= {"commit_p99_ms": np.percentile(ms, 99), "commit_max_ms": ms.max()}
    for db, _ in stores.values():
        db.close()
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    return out


def child_hnsw_search(files: dict, root: str, clip: str) -> dict:
    """anybind HNSW32 store: bulk load in commits of BATCH (segments sealed and merged as they go), searched at
    its default efSearch; then ``optimize(target_recall=0.95)`` (one segment, efSearch tuned with stored vectors
    as queries), searched interleaved with raw faiss ``IndexHNSWFlat(512, 32)`` at the same efSearch, one thread."""
    import faiss

    import anybind

    base, path = np.load(files["base"]), Path(root) / "hnsw-bulk"
    shutil.rmtree(path, ignore_errors=True)
    db = anybind.Store.open(path, space=f"clip:{clip}", index="HNSW32")
    offset, seconds = _add_in_commits(db, base, 0, BATCH)
    out = {"bulk": _described(paired(_anybind_calls("bulk", db, offset), files), "bulk", db)}
    out["bulk"]["build_s"] = sum(seconds)
    start = time.perf_counter()
    report = db.optimize(target_recall=0.95)["image"]
    optimize_s = time.perf_counter() - start
    ef = db.info()["partitions"]["image"]["params"].get("efSearch", 16)  # faiss's default when none is set
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(data.DIM, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(base)
    out["faiss"] = {"build_s": time.perf_counter() - start, "threads": 1, "params": {"efSearch": ef}}
    index.hnsw.efSearch = ef
    faiss.omp_set_num_threads(1)
    measured = paired(
        _anybind_calls("optimized", db, offset) | {"faiss": lambda q: index.search(q[None], K)[1][0]}, files
    )
    out["optimized"] = _described(measured, "optimized", db) | {"optimize_s": optimize_s}
    out["optimized"]["own_recall"] = report.get("recall@10")
    out["faiss"] |= measured["faiss"]
    db.close()
    shutil.rmtree(path, ignore_errors=True)
    return out


# -- the parent ------------------------------------------------------------------------------------------------


def _tiny_clip(workdir: Path) -> str:
    """The search benchmark's random tiny CLIP with 512-d projections (the stores' space; its model never runs
    for vector inputs)."""
    from anybind.testing import build_tiny_clip

    clip = workdir / "tiny-clip-512"
    if not (clip / "config.json").exists():
        build_tiny_clip(clip, projection_dim=data.DIM)
    return str(clip)


def measure(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Every child in turn; the raw numbers."""
    files = data.prepare(workdir / "data", sizes.n, sizes.queries)
    search_files = data.prepare(workdir / "data", sizes.search_n, sizes.queries).to_dict()
    clip, root = _tiny_clip(workdir), workdir / "store"
    root.mkdir(parents=True, exist_ok=True)

    def child(label: str, function: str, **kwargs: Any) -> dict:
        log(f"store: {label} ...")
        result = run_in_child("store_bench", function, sizes.timeout_s, **kwargs)
        log(f"store: {label}: " + (f"FAILED: {result['error']}" if "error" in result else f"{result['wall_s']:.0f} s"))
        return result

    ingest, cold = {}, {}
    for system in SYSTEMS:
        n = min(sizes.n, sizes.chroma_max) if system == "chromadb" else sizes.n
        path = root / f"ingest-{system}"
        ingest[system] = child(
            f"ingest {system} {n:,}",
            "child_ingest",
            system=system,
            base=str(files.base),
            n=n,
            path=str(path),
            clip=clip,
        )
        if "error" in ingest[system]:
            continue
        for state in ("cold", "warm"):
            dropped = evict_page_cache(path) if state == "cold" else None
            result = child(
                f"{state} open {system}", "child_cold_open", system=system, path=str(path), queries=str(files.queries)
            )
            cold[f"{system} {state}"] = result | {"system": system, "state": state, "page_cache_dropped_mib": dropped}
        shutil.rmtree(path, ignore_errors=True)
    search = {
        "flat": child(
            "search Flat", "child_flat_search", files=search_files, root=str(root), clip=clip, commits=sizes.commits
        ),
        "hnsw": child("search HNSW32", "child_hnsw_search", files=search_files, root=str(root), clip=clip),
    }
    return {
        "sizes": asdict(sizes),
        "batch": BATCH,
        "ingest": ingest,
        "cold_open": cold,
        "search": search,
        "data": data.cosine_profile(files),
    }


def extrapolate_total(commit_s: list[float], n: int) -> float:
    """Seconds to add ``n`` vectors in batches of BATCH: the measured commits, plus for the batches not measured
    a least-squares line of commit latency against the number of vectors already stored."""
    measured = np.asarray(commit_s)
    rest = np.arange(len(measured) * BATCH, n, BATCH)
    if not len(rest):
        return float(measured.sum())
    slope, intercept = np.polyfit(np.arange(len(measured)) * BATCH, measured, 1)
    return float(measured.sum() + np.clip(intercept + slope * rest, 0, None).sum())


# -- the section -----------------------------------------------------------------------------------------------


def commit_stats(commit_s: list[float]) -> dict[str, float]:
    """Per-commit latency: median of the commits up to 10k vectors stored, median of the last 10%, p99, max."""
    ms = np.asarray(commit_s) * 1e3
    early = ms[: -(-10_000 // BATCH)]
    late = ms[int(len(ms) * 0.9) :]
    return {
        "median_first_10k_ms": float(np.median(early)),
        "median_last_10pct_ms": float(np.median(late)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "commits_total_s": float(ms.sum() / 1e3),
    }


def _ok(result: dict) -> bool:
    return bool(result) and "error" not in result


def _ingest_row(system: str, r: dict) -> list[Any]:
    if not _ok(r):
        return [system, f"failed: {r.get('error')}", *[None] * 11]
    s = r["stats"]
    raw = r["items"] * data.DIM * 4
    return [
        system,
        r["items"],
        s["median_first_10k_ms"],
        s["median_last_10pct_ms"],
        s["median_last_10pct_ms"] / s["median_first_10k_ms"],
        s["p99_ms"],
        s["max_ms"],
        s["commits_total_s"],
        r["items"] / s["commits_total_s"],
        r["disk_bytes"] / MIB,
        r["disk_bytes"] / raw,
        r["rss_open_mib"],
        r["peak_ingest_mib"] - r["rss_open_mib"],
    ]


INGEST_HEADERS = ["system", "vectors", "median commit ms, first 10k", "median commit ms, last 10%", "last / first"]
INGEST_HEADERS += ["p99 ms", "max ms", "total s (sum of commits)", "vectors/s", "disk MiB", "disk / raw vectors"]
INGEST_HEADERS += ["RSS after open MiB", "peak RSS - open MiB"]


def _cold_row(r: dict) -> list[Any]:
    head = [r["system"], "evicted" if r["state"] == "cold" else "warm"]
    if not _ok(r):
        return [*head, f"failed: {r.get('error')}", *[None] * 6]
    return [
        *head,
        r["interpreter_s"],
        r["import_s"],
        r["open_s"],
        r["first_query_s"],
        r["open_to_first_s"],
        r["second_query_s"] * 1e3,
        r["rss_mib"],
    ]


COLD_HEADERS = ["system", "page cache", "interpreter s", "import s", "open s", "first query s"]
COLD_HEADERS += ["open + first result s", "second query ms", "RSS MiB"]


def search_rows(search: dict) -> list[dict]:
    """One row per configuration: label, its result, and its overhead over the raw faiss index it is paired with."""
    flat, hnsw = search.get("flat", {}), search.get("hnsw", {})
    small = flat.get("small_commits", {})
    commits = f"{small['commits']:,} commits of {PER_COMMIT} onto a base of {small['base_items']:,}" if small else ""
    rows = [
        ("anybind Flat, bulk load (commits of 1,024)", flat, "bulk", "faiss"),
        (f"anybind Flat, {commits or 'small commits'}", flat, "small_commits", "faiss"),
        ('anybind Flat, one segment (`optimize(index="Flat")`)', flat, "one_segment", "faiss"),
        ("raw faiss IndexFlatIP", flat, "faiss", None),
        ("anybind HNSW32, bulk load (commits of 1,024)", hnsw, "bulk", None),
        ("anybind HNSW32, after `optimize()`", hnsw, "optimized", "faiss"),
        ("raw faiss IndexHNSWFlat M=32, 1 thread", hnsw, "faiss", None),
    ]
    out = []
    for label, group, key, peer in rows:
        result = group.get(key) or {"error": group.get("error", "not run")}
        against = group.get(peer) if peer else None
        overhead = result["p50_ms"] - against["p50_ms"] if _ok(result) and against and _ok(against) else None
        out.append({"label": label, "result": result, "overhead_ms": overhead})
    return out


def _search_row(row: dict) -> list[Any]:
    r = row["result"]
    if not _ok(r):
        return [row["label"], f"failed: {r.get('error')}", *[None] * 6]
    params = ", ".join(f"{k} {v}" for k, v in (r.get("params") or {}).items() if v is not None) or "-"
    return [
        row["label"],
        r.get("segments"),
        params,
        r["p50_ms"],
        r["p99_ms"],
        f"{r['recall']:.3f}",
        r.get("partition_p50_ms"),
        row["overhead_ms"],
    ]


SEARCH_HEADERS = ["configuration", "segments", "params", "p50 ms", "p99 ms", "recall@10", "partition p50 ms"]
SEARCH_HEADERS += ["overhead vs raw faiss ms"]


def _targets(numbers: dict) -> list[tuple[str, bool | None, str]]:
    sizes, ours = numbers["sizes"], numbers["ingest"].get("anybind", {})
    cold = numbers["cold_open"].get("anybind cold", {})
    n, full = sizes["n"], sizes["n"] >= FULL.n
    at = "" if full else f" (measured at {n:,}; the target is at {FULL.n:,}: run the full size)"
    targets = []
    lance, chroma = numbers["ingest"].get("lancedb", {}), numbers["ingest"].get("chromadb", {})
    if _ok(ours):
        st = commit_stats(ours["commit_s"])
        growth = st["median_last_10pct_ms"] / st["median_first_10k_ms"]
        why = f"{growth:.2f}x: {st['median_first_10k_ms']:.1f} ms -> {st['median_last_10pct_ms']:.1f} ms{at}"
        targets.append(("store median commit at 1M <= 1.5x the median at 10k", growth <= 1.5 if full else None, why))
    if _ok(ours) and _ok(lance):
        mine, theirs = (
            commit_stats(ours["commit_s"])["commits_total_s"],
            commit_stats(lance["commit_s"])["commits_total_s"],
        )
        why = (
            f"{mine / theirs:.2f}x: {mine:.1f} s of commits vs lancedb table.add {theirs:.1f} s (anybind fsyncs each "
            f"commit before acknowledging it; lancedb's local table.add calls no fsync){at}"
        )
        targets.append(("store 1M ingest <= 2x lancedb table.add", mine <= 2 * theirs if full else None, why))
    if _ok(ours) and _ok(chroma):
        mine = commit_stats(ours["commit_s"])["commits_total_s"]
        theirs = extrapolate_total(chroma["commit_s"], n)
        measured_n = len(chroma["commit_s"]) * BATCH
        est = "" if measured_n >= n else f" (chromadb measured to {measured_n:,}, extrapolated)"
        why = f"{mine:.1f} s vs chromadb about {theirs:.0f} s{est}{at}"
        targets.append(("store 1M ingest faster than chromadb", mine < theirs if full else None, why))
    if _ok(ours):
        ratio = ours["disk_bytes"] / (ours["items"] * data.DIM * 4)
        why = f"{ratio:.3f}x: {ours['disk_bytes'] / MIB:,.0f} MiB for {ours['items']:,} x 512 float32{at}"
        targets.append(("store disk <= 1.15x the raw vectors at 1M", ratio <= TARGET_DISK if full else None, why))
        grown = (ours["peak_ingest_mib"] - ours["rss_open_mib"]) * MIB / GB
        why = f"{grown:.2f} GB above the {ours['rss_open_mib']:,.0f} MiB after opening (space loaded){at}"
        targets.append(
            ("store ingest peak RSS - RSS after open <= 1.5 GB at 1M", grown <= TARGET_RSS_GB if full else None, why)
        )
    if _ok(cold):
        why = (
            f"{cold['open_to_first_s']:.2f} s open + first query with the store's files evicted from the page "
            f"cache (interpreter {cold['interpreter_s']:.2f} s and import {cold['import_s']:.2f} s apart){at}"
        )
        targets.append(
            (
                "store cold open + first vector query <= 2 s at 1M",
                cold["open_to_first_s"] <= TARGET_OPEN_S if full else None,
                why,
            )
        )
    rows = search_rows(numbers["search"])
    m, measured = sizes["search_n"], sizes["search_n"] == FULL.search_n
    flat = [row for row in rows[:3] if row["overhead_ms"] is not None]
    if flat:
        worst = max(flat, key=lambda row: row["overhead_ms"])
        why = "; ".join(f"{row['label']}: {row['overhead_ms']:+.3f} ms" for row in flat)
        why += f" (raw faiss p50 {numbers['search']['flat']['faiss']['p50_ms']:.3f} ms, {m:,} vectors)"
        targets.append(
            (
                "store Flat search overhead vs raw faiss <= 0.2 ms at 100k (bulk load, small commits, one segment)",
                worst["overhead_ms"] <= TARGET_OVERHEAD_MS if measured else None,
                why,
            )
        )
    hnsw = rows[5]
    if hnsw["overhead_ms"] is not None:
        r, peer = hnsw["result"], numbers["search"]["hnsw"]["faiss"]
        why = (
            f"{hnsw['overhead_ms']:+.3f} ms: anybind {r['p50_ms']:.3f} ms at recall {r['recall']:.3f} vs raw faiss "
            f"{peer['p50_ms']:.3f} ms at recall {peer['recall']:.3f}, efSearch {peer['params']['efSearch']}, "
            f"{m:,} vectors"
        )
        targets.append(
            (
                "store HNSW32 search overhead vs raw faiss <= 0.2 ms at 100k (same efSearch)",
                hnsw["overhead_ms"] <= TARGET_OVERHEAD_MS if measured else None,
                why,
            )
        )
    return targets


def _figure(numbers: dict, figure_dir: Path) -> Path:
    """Left: each system's commit latency against the vectors already stored. Right: search p50 per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4), width_ratios=(1.2, 1))
    for colour, (system, r) in zip(("C0", "C3", "C2"), numbers["ingest"].items(), strict=False):
        if _ok(r):
            stored = np.arange(len(r["commit_s"])) * BATCH
            left.plot(stored, np.asarray(r["commit_s"]) * 1e3, ".", markersize=2, color=colour, label=system)
    left.set(yscale="log", xlabel="vectors already stored", ylabel="ms per commit of 1,024 (log)")
    left.set_title("Ingest: one commit per batch of 1,024 x 512")
    left.legend(markerscale=5)
    left.grid(True, which="both", alpha=0.3)
    rows = [row for row in search_rows(numbers["search"]) if _ok(row["result"])]
    y = np.arange(len(rows))
    colours = ["C1" if row["label"].startswith("raw") else "C0" for row in rows]
    right.barh(y, [row["result"]["p50_ms"] for row in rows], color=colours)
    right.set_yticks(y, [row["label"].replace("`", "") for row in rows], fontsize=7)
    right.invert_yaxis()
    right.set_xlabel(f"p50 ms per query, k = 10, {numbers['sizes']['search_n']:,} vectors")
    right.set_title("Search after bulk load, small commits, optimize")
    return save_figure(fig, figure_dir / "store_ingest_search.png")


def _link(figure: Path) -> str:
    """The figure's markdown link: relative to docs/ for the report, else by its file name (beside store.md)."""
    try:
        return figure_link(figure)
    except ValueError:
        return f"![{figure.stem}]({figure.name})"


def render(numbers: dict, figure_dir: Path = FIG_DIR) -> Section:
    """The "Store" section: ingest, cold open and search tables, the figure and the targets."""
    sizes, ingest = numbers["sizes"], numbers["ingest"]
    for r in ingest.values():
        if _ok(r):
            r["stats"] = commit_stats(r["commit_s"])
    figure = _figure(numbers, figure_dir)
    targets = _targets(numbers)
    p = numbers["data"]
    parts = [
        f"Store engine v2 (issue 15), `{numbers['command']}` on {numbers['date']}. Vectors: `bench/data.py`'s "
        f"512-d unit vectors (cosine of random pairs {p['random_pair_cosine_mean']:.2f}, of a query's nearest "
        f"neighbour {p['nn1_cosine_mean']:.2f}). Each system runs in its own child process, one after the other.",
        f"### Ingest: {sizes['n']:,} vectors, one commit per batch of {BATCH:,}",
        'anybind `store.add_vectors("image", V)`; lancedb `table.add` (local table: `id` int64, `vector` '
        "fixed_size_list<float32>[512], no index); chromadb `collection.add(ids=..., embeddings=...)` "
        "(`PersistentClient`, HNSW inner product). Each call is timed alone (reading the batch from the .npy "
        "is not). 'first 10k' = the commits up to 10,240 vectors stored; 'last 10%' = the last tenth of the "
        "commits. Disk = bytes of every file under the store's directory; raw vectors = vectors x 512 x 4 bytes. "
        "RSS after open: the child once the store is open (anybind: its space loaded, torch and transformers "
        "with a tiny random CLIP); peak RSS - open: the high-water mark of the ingest (reset after opening via "
        "`/proc/self/clear_refs`) minus that.",
        md_table(INGEST_HEADERS, [_ingest_row(system, r) for system, r in ingest.items()]),
    ]
    ours = ingest.get("anybind", {})
    if _ok(ours):
        rest = ours["disk_bytes"] - ours["generation_bytes"] - ours["sqlite_bytes"]
        parts.append(
            f"anybind's {ours['disk_bytes'] / MIB:,.1f} MiB on disk: {ours['generation_bytes'] / MIB:,.1f} MiB of "
            f"segment and moments files named by the current generation ({ours['segments']} segments), "
            f"{ours['sqlite_bytes'] / MIB:,.1f} MiB of `items.sqlite` (with its WAL), and {rest / MIB:,.1f} MiB of "
            "other files: the manifest, and the files of the previous generation that the writer keeps for readers "
            "still on it until the next commit (large when the last commit merged segments)."
        )
    chroma = ingest.get("chromadb", {})
    if _ok(chroma) and chroma["items"] < sizes["n"]:
        chroma["extrapolated_total_s"] = extrapolate_total(chroma["commit_s"], sizes["n"])
        parts.append(
            f"chromadb ingested {chroma['items']:,} vectors (`--chroma-max`), not {sizes['n']:,}: its commits grow "
            f"slower as it grows ({chroma['stats']['median_first_10k_ms']:.0f} ms -> "
            f"{chroma['stats']['median_last_10pct_ms']:.0f} ms median). Extrapolated to {sizes['n']:,} by a "
            "straight-line fit of its measured commit latency against vectors stored, summed over the missing "
            f"commits: about {chroma['extrapolated_total_s'] / 60:,.0f} min in all (an estimate, not a measurement)."
        )
    parts += [
        _link(figure),
        "### Cold open",
        "A fresh process opens the store just built and answers one vector query (k = 10); 'evicted': the store's "
        "files were first dropped from the page cache (fsync + `posix_fadvise(DONTNEED)` on each, nothing else "
        "touched), 'warm': the same again right after. Interpreter = process creation to the measuring function "
        "(Python, numpy and the bench modules); import = the library's own import; open + first result is the "
        "figure of the target.",
        md_table(COLD_HEADERS, [_cold_row(r) for r in numbers["cold_open"].values()]),
        f"### Search after bulk load and after many small commits: {sizes['search_n']:,} vectors",
        f"One query at a time, {sizes['queries']:,} queries, k = 10, recall@10 against the exact top-10; anybind "
        "end to end (`store.search(vector=q)`: hits with ids), 'partition p50' its partition's own search "
        "(`Partition.search`, no hits built). Segments from `Store.info()`. HNSW32: anybind's `optimize()` tunes "
        "efSearch to recall 0.95 with stored vectors as queries; raw faiss is built on the same vectors and "
        "searched at that efSearch. Raw faiss runs on one thread (anybind runs faiss on one thread for a few "
        "queries; faiss Flat at batch 1 is faster so, see Physical limit). The configurations of each group are "
        "searched in one process, taking turns in blocks of 50 queries (a query searched just before by another "
        "configuration would find the index in the CPU caches), so that other work on the machine slows them alike.",
        md_table(SEARCH_HEADERS, [_search_row(row) for row in search_rows(numbers["search"])]),
    ]
    small = numbers["search"].get("flat", {}).get("small_commits")
    if small:
        parts.append(
            f"The {small['commits']:,} small commits ({PER_COMMIT} vectors each) took "
            f"{small['commits_total_s']:.1f} s: "
            f"median {small['commit_p50_ms']:.1f} ms, p99 {small['commit_p99_ms']:.1f} ms per commit."
        )
    hnsw = numbers["search"].get("hnsw", {})
    if hnsw.get("optimized"):
        tuned, raw = hnsw["optimized"], hnsw.get("faiss", {})
        parts.append(
            f"anybind HNSW32: `optimize()` chose {tuned['params']} from its own recall estimate "
            f"({tuned.get('own_recall')} with stored vectors as queries); on this benchmark's queries, which are not "
            f"in the store, recall@10 is {tuned['recall']:.3f}. Bulk load: {hnsw['bulk']['build_s']:.1f} s of "
            f"commits (sealing and merging HNSW segments as it goes), `optimize()` {tuned['optimize_s']:.1f} s; raw "
            f"faiss HNSW32 built in {raw.get('build_s', float('nan')):.1f} s."
        )
    for name, met, why in targets:
        verdict = {True: "met", False: "not met", None: "not measured"}[met]
        parts.append(f"**Target** — {name}: **{verdict}**. {why}.")
    children = [*ingest.values(), *numbers["cold_open"].values(), *numbers["search"].values()]
    loads = [r["load_after"] for r in children if r.get("load_after") is not None]
    if loads:
        parts.append(
            f"Load average (1 min) at the end of each child: {min(loads):.1f}-{max(loads):.1f} on "
            f"{os.cpu_count()} cores. Other work may share this machine; above about 2 it slows multi-threaded "
            "code most (anybind's Flat scan is a numpy/OpenBLAS sgemv on its default threads)."
        )
    for r in ingest.values():  # the per-commit latencies stay in results.json, rounded
        if _ok(r):
            r["commit_s"] = [round(x, 6) for x in r["commit_s"]]
    return Section("Store", "\n\n".join(parts), [figure], numbers, targets)


def _command(argv: list[str] | None) -> str:
    return " ".join(["python", "bench/store_bench.py", *(sys.argv[1:] if argv is None else argv)])


def run(quick: bool, workdir: Path, sizes: Sizes | None = None, figure_dir: Path = FIG_DIR) -> Section:
    """Measure and render the "Store" section (quick: the smoke sizes)."""
    sizes = sizes or (SMOKE if quick else FULL)
    numbers = measure(sizes, Path(workdir))
    numbers |= {"command": " ".join(["python", *sys.argv]), "date": utc_now()}
    numbers |= {"machine": machine_info(), "versions": versions()}
    return render(numbers, figure_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="20k vectors, 1,000 small commits (a few minutes)")
    parser.add_argument("--n", type=int, help=f"vectors to ingest (default {FULL.n:,}, smoke {SMOKE.n:,})")
    parser.add_argument("--chroma-max", type=int, help="chromadb ingests at most this many (default 200k)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "anybind-bench")
    parser.add_argument(
        "--out", type=Path, help="where store.md, results.json and the PNG go (default WORKDIR/store-report)"
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.n:
        search_n = min(sizes.search_n, args.n)
        sizes = replace(sizes, n=args.n, search_n=search_n, commits=min(sizes.commits, search_n // (2 * PER_COMMIT)))
    sizes = replace(sizes, chroma_max=min(args.chroma_max or sizes.chroma_max, sizes.n))
    out = args.out or args.workdir / "store-report"
    out.mkdir(parents=True, exist_ok=True)
    start, date = time.perf_counter(), utc_now()
    section = run(args.smoke, args.workdir, sizes, out)
    meta = {"command": _command(argv), "date": date, "duration_s": time.perf_counter() - start, "smoke": args.smoke}
    meta |= {"machine": section.results["machine"], "versions": section.results["versions"]}
    record = {
        "run": meta,
        "markdown": section.markdown,
        "figures": [str(f) for f in section.figures],
        "targets": section.targets,
        "results": section.results,
    }
    (out / "results.json").write_text(json.dumps({"run": meta, "sections": {"Store": record}}, indent=1, default=str))
    (out / "store.md").write_text(f"## {section.title}\n\n{section.markdown}\n")
    log(f"store: wrote {out / 'store.md'} and {out / 'results.json'} ({meta['duration_s'] / 60:.1f} min)")
    print(f"## {section.title}\n\n{section.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
