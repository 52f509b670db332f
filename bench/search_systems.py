"""The systems of the search benchmark, one child-process function each: anybind (Flat, IVF, HNSW), raw faiss,
chromadb, lancedb and qdrant-client local mode. ``search_bench.py`` runs them and builds the tables.

Same vectors for every system (``data.py``: 512-d, clustered like CLIP image embeddings), each system in its own
child process (peak RSS is that process's high-water mark), queries one at a time, recall@10 against the exact
top-10. ANN systems are measured at increasing settings of their search-time knob, each setting a full timed pass
over the measured queries, until recall@10 reaches 0.95; the table reports that first setting and the plot the
whole curve (as ann-benchmarks reports the recall/latency frontier on its test queries):

- anybind: first the setting its own ``store.optimize(target_recall=0.95)`` chose (it tunes with stored vectors as
  queries), then up the same ``efSearch`` / ``nprobe`` ladder as raw faiss (set on the loaded partition);
- raw faiss: ``efSearch`` / ``nprobe``; chromadb: ``ef_search``; lancedb: ``nprobes`` (IVF_FLAT) or ``nprobes``
  x ``refine_factor`` (IVF_PQ); qdrant local mode is a brute-force scan (exact, nothing to tune).

End to end means what a user's call returns: anybind ``Hit``s with uri and metadata, chromadb metadatas and
distances, lancedb ``id``/``uri`` columns, qdrant payloads. Raw faiss returns ids only.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import data
import numpy as np
from common import directory_bytes, latencies, recall_at_k, rss_mib, summarize

TARGET = 0.95
K = 10
ADD_CHUNK = 50_000
QDRANT_QUERIES = {True: 50, False: 100}  # qdrant local mode scans every vector in numpy per query: fewer
QDRANT_MAX_S = 600  # skip a size where qdrant's estimated build + queries exceed this
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024, 2048)
NPROBE = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
CHROMA_EF = (100, 200, 400, 800, 1600)  # 100 is chromadb's default ef_search
TRAIN_SAMPLE = 262_144  # as anybind: IVF training sample for raw faiss


# -- shared by the children ------------------------------------------------------------------------------


def _queries(files: dict, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    q, truth = np.load(files["queries"]), np.load(files["truth"])
    return (q[:limit], truth[:limit]) if limit else (q, truth)


def _measure(search: Callable[[np.ndarray], Sequence[int]], files: dict, limit: int | None = None) -> dict:
    """p50/p99/QPS and recall@10 over the measured queries, one at a time."""
    q, truth = _queries(files, limit)
    seconds, rows = latencies(search, q)
    return summarize(seconds) | {"recall": recall_at_k(rows, truth)}


def _sweep(search: Callable[[np.ndarray], Sequence[int]], files: dict, setter: Callable[[Any], Any], values) -> dict:
    """Measure at each setting in turn until recall@10 reaches TARGET; that setting's figures (else the most
    accurate one's), left set, plus the curve ``[[setting, p50_ms, recall], ...]``."""
    curve: list[tuple[Any, dict]] = []
    start = time.perf_counter()
    for value in values:
        setter(value)
        curve.append((value, _measure(search, files)))
        if curve[-1][1]["recall"] >= TARGET:
            break
    value, chosen = curve[-1] if curve[-1][1]["recall"] >= TARGET else max(curve, key=lambda c: c[1]["recall"])
    if value != curve[-1][0]:
        setter(value)
    points = [[v, m["p50_ms"], round(m["recall"], 4)] for v, m in curve]
    return chosen | {"setting": value, "curve": points, "sweep_s": time.perf_counter() - start}


def _base(files: dict) -> np.ndarray:
    return np.concatenate([block for _, block in data.iter_rows(Path(files["base"]), ADD_CHUNK)])


def _started() -> dict:
    return {"rss_import_mib": rss_mib(), "load_before": os.getloadavg()[0]}


# -- children: one system each ---------------------------------------------------------------------------


def build_anybind_store(files: dict, path: Path, index: str, clip: str, stats: dict | None = None) -> Any:
    """A new anybind store at ``path`` holding the base vectors (added in 50k chunks, each with uri + metadata),
    in a space built from a random tiny CLIP with 512-d projections (its model never runs for vector queries).
    ``stats["rss_open_mib"]`` gets the RSS once the store is open (its space loads torch and transformers)."""
    import anybind
    from anybind.testing import build_tiny_clip

    if not Path(clip, "config.json").exists():
        build_tiny_clip(clip, projection_dim=data.DIM)
    db = anybind.Store.open(path, space=f"clip:{clip}", index=index)
    if stats is not None:
        stats["rss_open_mib"] = rss_mib()
    for first, block in data.iter_rows(Path(files["base"]), ADD_CHUNK):
        rows = range(first, first + len(block))
        db.add_vectors("image", block, uris=[f"vec://{r}" for r in rows], metadata=[{"row": r} for r in rows])
    return db


def child_anybind(files: dict, store: str, index: str, clip: str, flat_store: str | None = None) -> dict:
    """anybind end to end: ``add_vectors`` in 50k chunks (uri + metadata), ``store.search(vector=q, k=10)``.

    ``index="IVF"`` copies the Flat store ``flat_store`` and runs ``store.optimize()`` (Flat -> IVF, nprobe tuned).
    """
    import anybind

    out = _started()
    path = Path(store)
    shutil.rmtree(path, ignore_errors=True)
    if flat_store is not None:  # the copy is not timed: optimize() below is what a user runs on their Flat store
        shutil.copytree(flat_store, path)
    start = time.perf_counter()
    if flat_store is None:
        db = build_anybind_store(files, path, index, clip, out)
    else:
        db = anybind.Store.open(path, space=f"clip:{clip}")
        out["rss_open_mib"] = rss_mib()
    report = db.optimize(target_recall=TARGET)["image"] if index == "IVF" else None  # Flat -> IVF, tuned
    out["build_s"] = time.perf_counter() - start
    if index == "HNSW32":
        report = db.optimize(target_recall=TARGET)["image"]  # tunes efSearch only

    def search(q: np.ndarray) -> list[int]:
        return [hit.metadata["row"] for hit in db.search(vector=q, k=K)]

    info = db.info()["partitions"]["image"]
    out |= {"index": info["index"], "disk_bytes": directory_bytes(path)}
    part = db.partition("image")
    if report is None:
        out |= _measure(search, files)
    else:  # from optimize()'s choice up the ladder (set on the loaded partition, not written to the manifest)
        seg = next(s for s in part.segments if s.ann is not None)  # optimize() leaves one indexed segment
        key, structure = seg.ann
        chosen = seg.params[key]
        ladder = EF_SEARCH if key == "efSearch" else [v for v in NPROBE if v <= structure.nlist]
        out |= _sweep(search, files, lambda v: part.set_params({key: v}), [v for v in ladder if v >= chosen])
        out["optimize"] = {"params": report["params"], "own_recall": report.get("recall@10")}
    out["params"] = next((dict(s.params) for s in part.segments if s.ann is not None), {})
    q, _ = _queries(files)
    out["index_only_p50_ms"] = summarize(latencies(lambda v: part.search(v[None], K), q)[0])["p50_ms"]
    return out


def child_faiss(files: dict, kind: str, workdir: str, nlist: int) -> dict:
    """Raw faiss, inner product, batch-1 ``index.search``: IndexFlatIP, IndexHNSWFlat(512, 32), IVF{nlist},Flat."""
    import faiss

    out = _started()
    start = time.perf_counter()
    if kind == "Flat":
        index = faiss.IndexFlatIP(data.DIM)
    elif kind == "HNSW32":
        index = faiss.IndexHNSWFlat(data.DIM, 32, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.index_factory(data.DIM, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        base = _base(files)
        sample = base
        if len(base) > TRAIN_SAMPLE:
            sample = base[np.sort(np.random.default_rng(0).choice(len(base), TRAIN_SAMPLE, replace=False))]
        index.train(sample)
        del base, sample
    for _, block in data.iter_rows(Path(files["base"]), ADD_CHUNK):
        index.add(block)
    out["build_s"] = time.perf_counter() - start

    def search(q: np.ndarray) -> list[int]:
        return [int(i) for i in index.search(q[None], K)[1][0] if i >= 0]

    if kind == "HNSW32":
        out |= _sweep(search, files, lambda ef: setattr(index.hnsw, "efSearch", ef), EF_SEARCH)
        out["params"] = {"efSearch": out["setting"]}
    elif kind != "Flat":
        out |= _sweep(search, files, lambda p: setattr(index, "nprobe", p), [v for v in NPROBE if v <= nlist])
        out["params"] = {"nprobe": out["setting"]}
    else:
        out |= _measure(search, files)
    path = Path(workdir) / f"faiss-{kind}.index"
    faiss.write_index(index, str(path))
    out["disk_bytes"] = path.stat().st_size
    path.unlink()
    out["index"] = {"Flat": "IndexFlatIP", "HNSW32": "IndexHNSWFlat M=32"}.get(kind, f"IVF{nlist},Flat")
    out["threads"] = faiss.omp_get_max_threads()
    return out


def child_chroma(files: dict, path: str) -> dict:
    """chromadb PersistentClient, HNSW with inner product, ``query(n_results=10, include=[metadatas, distances])``."""
    import chromadb
    from chromadb.config import Settings

    out = _started()
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
    collection = client.create_collection("bench", configuration={"hnsw": {"space": "ip"}})
    batch = client.get_max_batch_size()
    for first, block in data.iter_rows(Path(files["base"]), ADD_CHUNK):
        for at in range(0, len(block), batch):
            rows = range(first + at, first + min(at + batch, len(block)))
            collection.add(
                ids=[str(r) for r in rows],
                embeddings=block[at : at + batch],
                metadatas=[{"uri": f"vec://{r}", "row": r} for r in rows],
            )
    out["build_s"] = time.perf_counter() - start

    live = {"collection": collection}

    def search(q: np.ndarray) -> list[int]:
        found = live["collection"].query(query_embeddings=[q], n_results=K, include=["metadatas", "distances"])
        return [meta["row"] for meta in found["metadatas"][0]]

    def set_ef(ef: int) -> None:
        """``modify`` stores the new ef_search, but a loaded collection keeps its old one: reopen the client."""
        from chromadb.api.client import SharedSystemClient

        live["collection"].modify(configuration={"hnsw": {"ef_search": ef}})
        SharedSystemClient.clear_system_cache()
        reopened = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
        live["collection"] = reopened.get_collection("bench")

    out |= _sweep(search, files, set_ef, CHROMA_EF)
    hnsw = live["collection"].configuration["hnsw"]
    out["params"] = {"ef_search": hnsw["ef_search"], "M": hnsw["max_neighbors"], "ef_constr": hnsw["ef_construction"]}
    out["index"] = "HNSW (persistent)"
    out["disk_bytes"] = directory_bytes(Path(path))
    shutil.rmtree(path, ignore_errors=True)
    return out


def child_lance(files: dict, path: str, index_type: str) -> dict:
    """lancedb table (id, uri, vector), ``IVF_FLAT`` or ``IVF_PQ`` index with dot product, ``search().limit(10)``."""
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfFlat, IvfPq

    out = _started()
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    db = lancedb.connect(path)
    table = None
    for first, block in data.iter_rows(Path(files["base"]), ADD_CHUNK):
        rows = np.arange(first, first + len(block))
        batch = pa.table(
            {
                "id": pa.array(rows),
                "uri": [f"vec://{r}" for r in rows],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), data.DIM),
            }
        )
        if table is None:
            table = db.create_table("bench", batch)
        else:
            table.add(batch)
    config = IvfFlat(distance_type="dot") if index_type == "IVF_FLAT" else IvfPq(distance_type="dot")
    table.create_index("vector", config=config)  # with config=, the first argument is the column
    out["build_s"] = time.perf_counter() - start
    setting = {"nprobes": 1, "refine": None}

    def search(q: np.ndarray) -> list[int]:
        query = table.search(q).distance_type("dot").select(["id", "uri", "_distance"]).limit(K)
        query = query.nprobes(setting["nprobes"])
        if setting["refine"]:
            query = query.refine_factor(setting["refine"])
        return [row["id"] for row in query.to_list()]

    grid = [(p, None) for p in NPROBE[:10]]
    if index_type == "IVF_PQ":
        grid = [(p, r) for r in (None, 10, 20, 50, 100) for p in (16, 32, 64)]
    out |= _sweep(search, files, lambda value: setting.update(nprobes=value[0], refine=value[1]), grid)
    out["params"] = {"nprobes": setting["nprobes"]} | (
        {"refine_factor": setting["refine"]} if setting["refine"] else {}
    )
    out["index"] = index_type
    out["disk_bytes"] = directory_bytes(Path(path))
    shutil.rmtree(path, ignore_errors=True)
    return out


def child_qdrant(files: dict, path: str | None, queries: int) -> dict:
    """qdrant-client local mode (``QdrantClient(path=...)`` or ``":memory:"``), dot product, ``query_points``."""
    from qdrant_client import QdrantClient, models

    out = _started()
    if path:
        shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    client = QdrantClient(path=path) if path else QdrantClient(":memory:")
    params = models.VectorParams(size=data.DIM, distance=models.Distance.DOT)
    client.create_collection("bench", vectors_config=params)
    for first, block in data.iter_rows(Path(files["base"]), 5_000):
        rows = list(range(first, first + len(block)))
        payloads = [{"uri": f"vec://{r}", "row": r} for r in rows]
        client.upsert("bench", points=models.Batch(ids=rows, vectors=block.tolist(), payloads=payloads))
    out["build_s"] = time.perf_counter() - start

    def search(q: np.ndarray) -> list[int]:
        found = client.query_points("bench", query=q.tolist(), limit=K, with_payload=True)
        return [point.payload["row"] for point in found.points]

    out |= {"index": "local mode (brute force)" + (", on disk" if path else ", :memory:"), "params": {}}
    out |= _measure(search, files, limit=queries)
    out["disk_bytes"] = directory_bytes(Path(path)) if path else None
    client.close()
    if path:
        shutil.rmtree(path, ignore_errors=True)
    return out
