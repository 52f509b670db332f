"""Physical limit: how close an exact (flat) scan gets to the machine's memory bandwidth.

1. Memory bandwidth, measured here: a numpy sum over a 1 GiB float32 array (one thread, and one slice per core
   in threads: numpy releases the GIL in reductions), best of N; and a copy (read + write bytes).
2. Flat scan, one query at a time, at 100k x 512 (and 1M in the full run): effective bandwidth = bytes of the
   vectors scanned / median time per query, for anybind's exact path (``Partition.search`` of a Flat partition:
   the raw scan, and ``store.search(vector=...)`` end to end), raw faiss ``IndexFlatIP.search`` (default
   OpenMP threads, and one thread) and numpy ``X @ q`` (BLAS sgemv).
3. Batch sweep (1 ... 256 queries per call) of faiss Flat and numpy ``X @ Q.T``: queries/s and effective GB/s
   (queries x bytes scanned / time). While a scan is memory-bound, a call costs about the same whatever the
   batch, so effective GB/s grows with the batch; once it is compute-bound the time grows with the batch and
   queries/s flattens. Where it turns is given by the roofline of the measured numbers: a batch of b queries
   does 2 b flops per 4-byte float read (b / 2 flop/byte), so it becomes compute-bound past
   ``b* = 2 x peak GFLOP/s / read GB/s`` (peak: the method's best GFLOP/s in the sweep).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import data
import faiss
import numpy as np
import search_bench
import search_systems
from common import FIG_DIR, Section, best_of, figure_link, log, md_table, save_figure

GIB = 2**30
ARRAY_BYTES = GIB
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TARGET = 0.70
SIZES = {True: (100_000,), False: (100_000, 1_000_000)}
SCAN_QUERIES = {True: 50, False: 300}


# -- memory bandwidth --------------------------------------------------------------------------------------


def memory_bandwidth(repeat: int = 5) -> dict[str, float]:
    """GB/s (1e9 bytes/s): read by numpy sum on one thread and on every core, and copy (read + write)."""
    a = np.ones(ARRAY_BYTES // 4, np.float32)
    b = np.empty_like(a)
    threads = os.cpu_count() or 1
    slices = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as pool:

        def parallel_sum() -> None:
            list(pool.map(np.sum, slices))

        out = {
            "read_1_thread": a.nbytes / best_of(a.sum, repeat) / 1e9,
            f"read_{threads}_threads": a.nbytes / best_of(parallel_sum, repeat) / 1e9,
            "copy": 2 * a.nbytes / best_of(lambda: np.copyto(b, a), repeat) / 1e9,
        }
    out["read"] = max(v for k, v in out.items() if k.startswith("read_"))
    return out


# -- flat scans ----------------------------------------------------------------------------------------------


def _median_seconds(call, queries: np.ndarray, warmup: int = 3) -> float:
    for q in queries[:warmup]:
        call(q)
    seconds = []
    for q in queries:
        start = time.perf_counter()
        call(q)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def _anybind_store(workdir: Path, files: data.DataFiles) -> Any:
    """The search section's Flat store of this size when it is complete, else a new one (same recipe)."""
    import anybind

    path = workdir / "search" / str(files.n) / "anybind-Flat"
    if (path / "manifest.json").exists():
        store = anybind.Store.open(path)
        if len(store) == files.n:
            return store
        store.close()
    log(f"bandwidth {files.n:,}: building an anybind Flat store")
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return search_systems.build_anybind_store(files.to_dict(), path, "Flat", str(workdir / "tiny-clip-512"))


def flat_scans(workdir: Path, files: data.DataFiles, queries: int) -> list[dict[str, Any]]:
    """Median time per single-query exact scan and its effective bandwidth, for each scan path."""
    store = _anybind_store(workdir, files)
    part = store.partition("image")
    x = np.load(files.base)
    q = np.load(files.queries)[:queries]
    index = faiss.IndexFlatIP(data.DIM)
    index.add(x)
    threads = faiss.omp_get_max_threads()

    def faiss_one_thread(v: np.ndarray) -> Any:
        faiss.omp_set_num_threads(1)
        try:
            return index.search(v[None], 10)
        finally:
            faiss.omp_set_num_threads(threads)

    paths = [
        ("anybind Partition.search (Flat, raw scan)", lambda v: part.search(v[None], 10)),
        ("anybind store.search(vector=...) end to end", lambda v: store.search(vector=v, k=10)),
        (f"faiss IndexFlatIP.search, batch 1, {threads} threads", lambda v: index.search(v[None], 10)),
        ("faiss IndexFlatIP.search, batch 1, 1 thread", faiss_one_thread),
        ("numpy X @ q (BLAS sgemv)", lambda v: x @ v),
    ]
    out = []
    for name, call in paths:
        seconds = _median_seconds(call, q)
        out.append({"path": name, "n": files.n, "median_ms": seconds * 1e3, "gb_s": x.nbytes / seconds / 1e9})
        log(f"bandwidth {files.n:,}: {name}: {seconds * 1e3:.2f} ms, {x.nbytes / seconds / 1e9:.1f} GB/s")
    store.close()
    return out


def batch_sweep(files: data.DataFiles) -> list[dict[str, Any]]:
    """faiss Flat and numpy ``X @ Q.T`` at each batch size: time per call, queries/s, effective GB/s, GFLOP/s."""
    x = np.load(files.base)
    pool = np.load(files.queries)
    index = faiss.IndexFlatIP(data.DIM)
    index.add(x)
    out = []
    for name, call in (("faiss IndexFlatIP", lambda b: index.search(b, 10)), ("numpy X @ Q.T", lambda b: x @ b.T)):
        for batch in BATCHES:
            queries = np.ascontiguousarray(np.resize(pool, (batch, data.DIM)))
            seconds = best_of(lambda call=call, queries=queries: call(queries), repeat=3, min_seconds=0.2)
            out.append(
                {
                    "method": name,
                    "n": files.n,
                    "batch": batch,
                    "ms_per_call": seconds * 1e3,
                    "qps": batch / seconds,
                    "gb_s": batch * x.nbytes / seconds / 1e9,
                    "gflop_s": 2 * batch * x.size / seconds / 1e9,
                }
            )
        log(f"bandwidth {files.n:,}: batch sweep of {name} done")
    return out


def ridge_batch(rows: list[dict[str, Any]], read_gb_s: float) -> dict[str, Any]:
    """Roofline of one method's sweep: its peak GFLOP/s, the batch where compute time equals memory time, and the
    first batch whose effective bandwidth exceeds 1.5x the memory's (it reuses vectors from cache there)."""
    peak = max(r["gflop_s"] for r in rows)
    reuse = next((r["batch"] for r in rows if r["gb_s"] > 1.5 * read_gb_s), None)
    return {"peak_gflop_s": peak, "ridge_batch": 2 * peak / read_gb_s, "reuse_batch": reuse}


# -- the section ---------------------------------------------------------------------------------------------


def run(quick: bool, workdir: Path) -> Section:
    """The "Physical limit" section: memory bandwidth, flat-scan bandwidth per path, the batch sweep."""
    log("bandwidth: memory read/copy")
    memory = memory_bandwidth()
    scans, sweeps = [], {}
    for n in SIZES[quick]:
        files = data.prepare(workdir / "data", n, search_bench.QUERIES[quick])
        scans += flat_scans(workdir, files, SCAN_QUERIES[quick])
        if n == SIZES[quick][-1]:
            sweeps[n] = batch_sweep(files)
    turns = {
        f"{method} ({n:,})": ridge_batch([r for r in rows if r["method"] == method], memory["read"])
        for n, rows in sweeps.items()
        for method in dict.fromkeys(r["method"] for r in rows)
    }
    figure = _plot(sweeps, memory["read"], turns)
    verdict = _verdict(scans, memory)
    markdown = _markdown(memory, scans, sweeps, turns, figure, verdict)
    results = {"memory_gb_s": memory, "flat_scans": scans, "batch_sweep": sweeps, "roofline": turns}
    return Section("Physical limit", markdown, [figure], results, [verdict])


def _verdict(scans: list[dict], memory: dict) -> tuple[str, bool | None, str]:
    name = "flat scan >= 70% of measured memory bandwidth (anybind's exact path, one query)"
    largest = max(s["n"] for s in scans)
    ours = next(s for s in scans if s["n"] == largest and s["path"].startswith("anybind Partition"))
    share = ours["gb_s"] / memory["read"]
    why = (
        f"{ours['gb_s']:.1f} GB/s at {largest:,} x 512 = {share:.0%} of the {memory['read']:.1f} GB/s read "
        "bandwidth measured here"
    )
    return name, share >= TARGET, why


def _markdown(memory: dict, scans: list, sweeps: dict, turns: dict, figure: Path, verdict: tuple) -> str:
    parts = [
        "Memory bandwidth measured on this machine (GB/s = 1e9 bytes/s; 1 GiB float32 array, best of 5):",
        md_table(["test", "GB/s"], [(k.replace("_", " "), v) for k, v in memory.items() if k != "read"]),
        f"Reference read bandwidth: **{memory['read']:.1f} GB/s** (the best read figure). Copy counts the bytes "
        "read plus the bytes written.",
        "Exact scan of one query (median over the measured queries; effective GB/s = vector bytes / time):",
        md_table(
            ["path", "vectors", "median ms", "effective GB/s", "% of read bandwidth"],
            [(s["path"], s["n"], s["median_ms"], s["gb_s"], 100 * s["gb_s"] / memory["read"]) for s in scans],
        ),
    ]
    for n, rows in sweeps.items():
        parts.append(f"Batch sweep at {n:,} x 512 (best of 3 calls):")
        parts.append(
            md_table(
                ["method", "batch", "ms per call", "queries/s", "effective GB/s", "GFLOP/s"],
                [(r["method"], r["batch"], r["ms_per_call"], r["qps"], r["gb_s"], r["gflop_s"]) for r in rows],
            )
        )
    parts.append(figure_link(figure))
    parts.append(
        "Where the scan turns compute-bound. Roofline of the measured figures: a batch of b queries does b/2 flop "
        "per byte of vectors read, so a scan that reads the vectors once per call is memory-bound below "
        "b* = 2 x peak GFLOP/s / read GB/s and compute-bound above (queries/s then levels off at peak / (2 n d); "
        "dashed lines in the right panel). Measured: "
        + "; ".join(
            f"{k}: peak {v['peak_gflop_s']:.0f} GFLOP/s, b* = {v['ridge_batch']:.1f}, first batch above 1.5x the "
            f"memory bandwidth (vectors reused from cache) {v['reuse_batch'] or 'none up to 256'}"
            for k, v in turns.items()
        )
        + ". A method whose effective GB/s stays at the memory bandwidth as the batch grows reads the vectors "
        "once per query, not once per call."
    )
    name, met, why = verdict
    parts.append(f"**Target** — {name}: **{'met' if met else 'not met'}**. {why}.")
    return "\n\n".join(parts)


def _plot(sweeps: dict[int, list[dict]], read_gb_s: float, roofs: dict[str, dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, rows in sweeps.items():
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            batches = [r["batch"] for r in mine]
            left.plot(batches, [r["gb_s"] for r in mine], marker="o", label=f"{method}, {n:,}")
            line = right.plot(batches, [r["qps"] for r in mine], marker="o", label=f"{method}, {n:,}")[0]
            roof = roofs[f"{method} ({n:,})"]["peak_gflop_s"] * 1e9
            bound = [min(read_gb_s * 1e9 / (4 * n * data.DIM) * b, roof / (2 * n * data.DIM)) for b in batches]
            right.plot(batches, bound, linestyle="--", color=line.get_color(), alpha=0.6)
    left.axhline(read_gb_s, color="k", linestyle="--", label=f"measured memory read {read_gb_s:.1f} GB/s")
    for ax, label in ((left, "effective GB/s (queries x bytes / time)"), (right, "queries/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("queries per call")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    left.set_title("Flat scan: effective bandwidth by batch")
    right.set_title("Flat scan: throughput by batch")
    return save_figure(fig, FIG_DIR / "flat_scan_batch_sweep.png")
