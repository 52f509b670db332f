"""GPU benchmark (part 4 of issue 6), for a machine with a CUDA GPU; on one without, the section says so.

``python bench/run.py --only gpu`` runs it into the report; ``python bench/gpu_bench.py --smoke --device cpu``
runs every part at toy sizes on the CPU in about a minute (checks the code, the figures mean nothing).

1. **Encode**: randomly initialised CLIP ViT-B/32 and ViT-L/14 (real architectures, so real FLOPs), fp16,
   ``get_image_features`` on random pixel tensors already on the GPU, at several batch sizes: images/s and the
   TFLOP/s that makes.
2. **Ingest on the GPU** (ViT-B/32, the generated photos of the ingest section): the one-at-a-time tutorial
   loop, ``anybind`` ``add_files`` (decode threads = the machine's cores) and the raw forward on pre-processed
   tensors in host memory (copy to the GPU and back included), each in its own child process
   (``ingest_bench``'s children with ``device="cuda"``).
3. **Scans of 1M x 512** (``bench/data.py``'s vectors and exact top-10): the HBM bandwidth measured with torch
   (read: ``sum``; copy), an exact scan in torch (``X @ q`` + ``topk``), the store's own torch backend
   (``anybind.store.torch_scan.TorchScanner``: float16 on the device, certified exact in float32),
   faiss-gpu ``IndexFlatIP`` (one query, then a batch sweep)
   and ``IVF4096,Flat`` trained and searched on the GPU (nprobe swept to recall@10 0.95).
   faiss's GPU parts need a faiss with GPU support (``pip install -e .[gpu]``); without one they are listed as
   not run and the torch figures remain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import data
import ingest_bench
import numpy as np
import search_systems
from common import (
    FIG_DIR,
    Section,
    figure_link,
    log,
    md_table,
    run_in_child,
    save_figure,
    utc_now,
)

TARGET_IMAGES_S, TARGET_OVERHEAD, TARGET_HBM, TARGET_RATIO = 2500.0, 0.30, 0.70, 10.0
L14_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
)
L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
MODELS = {  # name -> (vision config, text config, projection dim)
    "ViT-B/32": (ingest_bench.VISION, ingest_bench.TEXT, ingest_bench.PROJECTION),
    "ViT-L/14": (L14_VISION, L14_TEXT, 768),
}


class Sizes:
    """How big each part runs: ``full`` on a GPU, ``quick`` (``--quick``), ``smoke`` (CPU code check)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.batches = {"full": (1, 32, 128, 256, 512), "quick": (1, 64, 256), "smoke": (1, 4)}[mode]
        self.encode_seconds = {"full": 3.0, "quick": 1.5, "smoke": 0.2}[mode]
        self.images = {"full": 4000, "quick": 1000, "smoke": 12}[mode]
        self.ingest_batch = {"full": 256, "quick": 256, "smoke": 4}[mode]
        self.vectors = {"full": 1_000_000, "quick": 1_000_000, "smoke": 20_000}[mode]
        self.queries = {"full": 1000, "quick": 300, "smoke": 40}[mode]
        self.scan_batches = {"full": (1, 4, 16, 64, 256, 1024), "quick": (1, 16, 256), "smoke": (1, 8)}[mode]
        self.nlist = {"full": 4096, "quick": 4096, "smoke": 64}[mode]
        self.hbm_bytes = {"full": 4 << 30, "quick": 4 << 30, "smoke": 64 << 20}[mode]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(call: Any, device: str, min_seconds: float, warmup: int = 3) -> float:
    """Mean seconds per ``call()`` over repeats filling at least ``min_seconds``, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    _sync(device)
    runs, start = 0, time.perf_counter()
    while True:
        call()
        runs += 1
        _sync(device)
        took = time.perf_counter() - start
        if took >= min_seconds and runs >= 3:
            return took / runs


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
    return "CPU"


# -- children (each in its own process) ------------------------------------------------------------------


def child_encode(model: str, device: str, batches: list[int], seconds: float) -> dict[str, Any]:
    """fp16 (on a GPU) ``get_image_features`` on random pixels resident on the device: images/s per batch."""
    import torch
    from transformers import CLIPModel

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    clip = CLIPModel.from_pretrained(model, dtype=dtype).to(device).eval()
    size = clip.config.vision_config.image_size
    rates = {}
    generator = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode():
        for batch in batches:
            pixels = torch.randn(batch, 3, size, size, generator=generator).to(device, dtype)
            per_call = _timed(lambda pixels=pixels: clip.get_image_features(pixel_values=pixels), device, seconds)
            rates[str(batch)] = batch / per_call
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"images_s": rates, "gpu_peak_mib": peak, "device_name": _device_name(device), "dtype": str(dtype)}


def child_scans(files: dict, device: str, batches: list[int], nlist: int, hbm_bytes: int) -> dict[str, Any]:
    """HBM bandwidth, then exact and IVF scans of the base set: torch and (when it has GPU support) faiss."""
    import torch

    from anybind.store.gpu import gpu_count

    out: dict[str, Any] = {"device_name": _device_name(device)}
    out["memory"] = _memory_bandwidth(device, hbm_bytes)
    base = np.concatenate([block for _, block in data.iter_rows(Path(files["base"]))])
    pool = np.load(files["queries"])
    chunks = {b: np.ascontiguousarray(np.resize(pool, (b, data.DIM))) for b in batches}  # as bandwidth.py
    x = torch.from_numpy(base).to(device)

    def torch_search(v: np.ndarray) -> Any:
        return torch.topk(x @ torch.from_numpy(v).to(device), data.K).indices.cpu().numpy()  # .cpu() waits

    scans = [_one_query("torch X @ q + topk (fp32)", torch_search, files, base.nbytes)]
    sweep = [
        _batch_row("torch X @ Q.T + topk", lambda Q: torch.topk(Q @ x.T, data.K, dim=1), q, base.nbytes, device)
        for q in (torch.from_numpy(chunks[b]).to(device) for b in batches)
    ]
    scans += _store_scanner(base, chunks, batches, files, sweep, device)
    out["faiss_gpu"] = gpu_count()
    if out["faiss_gpu"]:
        import faiss

        res = faiss.StandardGpuResources()
        flat = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatIP(data.DIM))
        flat.add(base)
        search = lambda v: flat.search(v[None], data.K)[1][0]  # noqa: E731
        scans.append(_one_query("faiss-gpu IndexFlatIP.search, batch 1", search, files, base.nbytes))
        sweep += [
            _batch_row("faiss-gpu IndexFlatIP", lambda Q: flat.search(Q, data.K), chunks[b], base.nbytes, device)
            for b in batches
        ]
        del flat
        out["ivf"] = _faiss_ivf(res, base, files, nlist)
    else:
        out["ivf"] = {"skipped": "faiss has no GPU support here (pip install -e .[gpu] installs faiss-gpu-cu12)"}
    out |= {"scans": scans, "sweep": sweep, "n": len(base), "vector_bytes": base.nbytes}
    return out


def _store_scanner(
    base: np.ndarray, chunks: dict, batches: list[int], files: dict, sweep: list, device: str
) -> list[dict[str, Any]]:
    """The store's own torch backend (``TorchScanner``: float16 candidates on the device, re-scored and certified
    exact in float32 on the CPU) over the base set as one segment: one query at a time, and the batch sweep."""
    from anybind.store.torch_scan import TorchScanner

    scanner = TorchScanner(device=device, dtype="float16")
    ids = np.arange(len(base), dtype=np.int64)
    segment = [("bench/base", base, ids, None)]
    search = lambda v: scanner.top_k(segment, v[None], data.K)[1][0]  # noqa: E731
    rows = [_one_query("anybind TorchScanner (fp16 + exact re-score)", search, files, base.nbytes)]
    sweep += [
        _batch_row("anybind TorchScanner", lambda Q: scanner.top_k(segment, Q, data.K), chunks[b], base.nbytes, device)
        for b in batches
    ]
    scanner.drop(["bench/base"])
    return rows


def _memory_bandwidth(device: str, nbytes: int) -> dict[str, float]:
    """Read (``sum``) and copy bandwidth of the device's memory on a float32 array of ``nbytes``, in GB/s."""
    import torch

    source = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    read = _timed(lambda: source.sum(), device, 0.5)
    copy = _timed(lambda: target.copy_(source), device, 0.5)
    size = source.numel() * 4
    return {"bytes": size, "read_gb_s": size / read / 1e9, "copy_gb_s": 2 * size / copy / 1e9}


def _one_query(name: str, search: Any, files: dict, nbytes: int) -> dict[str, Any]:
    """The search benchmark's measurement (p50/p99/QPS, recall@10; queries one at a time) plus effective GB/s."""
    stats = search_systems._measure(search, files)
    return stats | {"path": name, "gb_s": nbytes / (stats["p50_ms"] / 1e3) / 1e9}


def _batch_row(name: str, call: Any, queries: Any, nbytes: int, device: str) -> dict[str, Any]:
    """One batch size of a sweep: time per call, queries/s, effective GB/s (vector bytes per query / time)."""
    seconds = _timed(lambda: call(queries), device, 0.3)
    batch = len(queries)
    return {
        "method": name,
        "batch": batch,
        "ms_per_call": seconds * 1e3,
        "qps": batch / seconds,
        "gb_s": batch * nbytes / seconds / 1e9,
    }


def _faiss_ivf(res: Any, base: np.ndarray, files: dict, nlist: int) -> dict[str, Any]:
    """IVF{nlist},Flat on the GPU: train (on up to 64 vectors per list), add, then the search benchmark's sweep of
    nprobe up to recall@10 0.95 (faiss-gpu allows nprobe <= 2048)."""
    import faiss

    start = time.perf_counter()
    cpu = faiss.index_factory(data.DIM, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index = faiss.index_cpu_to_gpu(res, 0, cpu)
    sample = min(len(base), 64 * nlist)
    index.train(base[np.sort(np.random.default_rng(0).choice(len(base), sample, replace=False))])
    index.add(base)
    build = time.perf_counter() - start
    values = [p for p in search_systems.NPROBE if p <= min(nlist, 2048)]
    out = search_systems._sweep(
        lambda v: index.search(v[None], data.K)[1][0], files, lambda p: setattr(index, "nprobe", p), values
    )
    return out | {"index": f"IVF{nlist},Flat", "nprobe": out["setting"], "build_s": build}


# -- the parent ----------------------------------------------------------------------------------------------


def measure(sizes: Sizes, workdir: Path, device: str) -> dict[str, Any]:
    """Build the models and inputs here, then run each part in its own child process."""
    limit = 1800
    numbers: dict[str, Any] = {"gpu": device.startswith("cuda"), "device": device, "mode": sizes.mode}
    root = workdir / "gpu"
    models = {}
    for name, (vision, text, projection) in MODELS.items():
        if sizes.mode == "smoke" and name != "ViT-B/32":
            continue
        log(f"gpu: building the random {name}")
        slug = name.lower().replace("/", "")
        models[name] = ingest_bench.build_clip(root / f"clip-{slug}-random", vision, text, projection)
    numbers["encode"] = {}
    for name, model in models.items():
        log(f"gpu: encode throughput of {name}")
        result = run_in_child(
            "gpu_bench",
            "child_encode",
            limit,
            model=str(model),
            device=device,
            batches=list(sizes.batches),
            seconds=sizes.encode_seconds,
        )
        vision, _, projection = MODELS[name]
        numbers["encode"][name] = result | {"gflop_per_image": ingest_bench.vision_gflop(vision, projection)}
    numbers["ingest"] = _ingest(sizes, root, models["ViT-B/32"], device, limit)
    log(f"gpu: scans of {sizes.vectors:,} vectors")
    files = data.prepare(workdir / "data", sizes.vectors, sizes.queries)
    numbers["scans"] = run_in_child(
        "gpu_bench",
        "child_scans",
        limit,
        files=files.to_dict(),
        device=device,
        batches=list(sizes.scan_batches),
        nlist=sizes.nlist,
        hbm_bytes=sizes.hbm_bytes,
    )
    return numbers


def _ingest(sizes: Sizes, root: Path, model: Path, device: str, limit: float) -> dict[str, Any]:
    images = root / f"images-{sizes.images}"
    log(f"gpu: generating {sizes.images} photos")
    ingest_bench.generate_images(images, sizes.images)
    try:
        import chromadb  # noqa: F401
    except ImportError:
        chroma = None
    else:
        chroma = str(root / "chroma")
    workers = os.cpu_count() or 1
    clip = {"model": str(model), "images": str(images), "device": device}
    plan = [
        ("raw", "child_raw", {**clip, "batch_size": sizes.ingest_batch}),
        ("one_at_a_time", "child_one_at_a_time", {**clip, "db": chroma}),
        (
            "anybind",
            "child_anybind",
            {**clip, "db": str(root / "anybind"), "batch_size": sizes.ingest_batch, "workers": workers},
        ),
    ]
    runs: dict[str, Any] = {"with_chromadb": chroma is not None, "workers": workers, "batch": sizes.ingest_batch}
    for name, function, kwargs in plan:
        if kwargs.get("db"):
            shutil.rmtree(kwargs["db"], ignore_errors=True)
        log(f"gpu: ingest {name}")
        result = run_in_child("ingest_bench", function, limit, **kwargs)
        result.pop("check", None)
        runs[name] = result
    return runs


def _rate(result: dict[str, Any]) -> float | None:
    return result["items"] / result["seconds"] if "error" not in result and result.get("seconds") else None


def render(numbers: dict[str, Any], figure_dir: Path = FIG_DIR) -> Section:
    """Tables, the figure (written to ``figure_dir``) and the four verdicts of the GPU targets."""
    scans = numbers["scans"]
    device = scans.get("device_name") or numbers["encode"].get("ViT-B/32", {}).get("device_name", "?")
    dtypes = sorted({r.get("dtype", "?").removeprefix("torch.") for r in numbers["encode"].values()})
    lines = [f"Device: **{device}** (`{numbers['device']}`); mode {numbers['mode']}.", ""]
    lines += [f"### Encode ({', '.join(dtypes)}, random pixels already on the device)", ""]
    rows = []
    for name, result in numbers["encode"].items():
        if "error" in result:
            rows.append([name, f"failed: {result['error']}", None, None])
            continue
        for batch, rate in result["images_s"].items():
            rows.append([name, int(batch), rate, rate * result["gflop_per_image"] / 1e3])
    lines += [md_table(["model", "batch", "images/s", "TFLOP/s"], rows), ""]
    ingest = numbers["ingest"]
    one, ours, raw = (_rate(ingest.get(k, {})) for k in ("one_at_a_time", "anybind", "raw"))
    store = "chromadb `add` per image" if ingest["with_chromadb"] else "no store (chromadb not installed: a floor)"
    lines += [
        "### Ingest on the GPU (ViT-B/32)",
        "",
        md_table(
            ["system", "images", "timed s", "images/s", "CPU cores busy"],
            [
                [
                    label,
                    r.get("items"),
                    r.get("seconds"),
                    _rate(r),
                    r["cpu_seconds"] / r["seconds"] if _rate(r) else None,
                ]
                for label, r in (
                    (f"(a) one at a time + {store}", ingest["one_at_a_time"]),
                    (
                        f"(b) anybind `add_files`, batch {ingest['batch']}, {ingest['workers']} decode threads",
                        ingest["anybind"],
                    ),
                    (f"raw forward on pre-processed tensors, batch {ingest['batch']}", ingest["raw"]),
                )
            ],
        ),
        "",
        "### Scans",
        "",
    ]
    memory = scans.get("memory", {})
    if "error" in scans:
        lines.append(f"Failed: {scans['error']}")
    else:
        lines += [
            f"Memory bandwidth measured on the device with torch ({memory['bytes'] / 2**30:.3g} GiB float32): read "
            f"(`sum`) **{memory['read_gb_s']:,.0f} GB/s**, copy (bytes read + written) {memory['copy_gb_s']:,.0f} "
            f"GB/s. One query at a time over {scans['n']:,} x {data.DIM} ({scans['vector_bytes'] / 1e9:.2f} GB):",
            "",
            md_table(
                ["path", "p50 ms", "p99 ms", "effective GB/s", "% of read bandwidth", "recall@10"],
                [
                    [
                        s["path"],
                        s["p50_ms"],
                        s["p99_ms"],
                        s["gb_s"],
                        100 * s["gb_s"] / memory["read_gb_s"],
                        f"{s['recall']:.3f}",
                    ]
                    for s in scans["scans"]
                ],
            ),
            "",
            md_table(
                ["method", "batch", "ms per call", "queries/s", "effective GB/s"],
                [[r["method"], r["batch"], r["ms_per_call"], r["qps"], r["gb_s"]] for r in scans["sweep"]],
            ),
            "",
        ]
        ivf = scans["ivf"]
        if "skipped" in ivf:
            lines.append(f"faiss-gpu IVF: not run: {ivf['skipped']}.")
        else:
            curve = "; ".join(f"{p}: {ms:.2f} ms, {r:.3f}" for p, ms, r in ivf["curve"])
            lines.append(
                f"faiss-gpu {ivf['index']}: build (train + add) {ivf['build_s']:.1f} s; nprobe {ivf['nprobe']}: p50 "
                f"{ivf['p50_ms']:.2f} ms, recall@10 {ivf['recall']:.3f}, {ivf['qps']:,.0f} QPS one query at a time "
                f"(nprobe: p50, recall: {curve})."
            )
    targets = _targets(numbers, one, ours, raw)
    lines.append("")
    for name, met, why in targets:
        verdict = {True: "met", False: "**not met**", None: "not measured"}[met]
        lines.append(f"- Target: {name} — {verdict}: {why}.")
    lines.append(f"- Measured {utc_now()}; each part in its own child process (`bench/gpu_bench.py`).")
    figures = [_figure(numbers, figure_dir)] if numbers["encode"] and "sweep" in scans else []
    if figures:
        inside = figure_dir.resolve().is_relative_to(FIG_DIR.resolve())
        lines.append(figure_link(figures[0]) if inside else f"![gpu]({figures[0]})")
    return Section("GPU", "\n".join(lines), figures, numbers, targets)


def _targets(numbers: dict[str, Any], one: float | None, ours: float | None, raw: float | None) -> list:
    out = []
    name = "GPU ViT-B/32 encode >= 2,500 images/s (anybind add_files, end to end)"
    if ours is None:
        out.append((name, None, "the anybind run failed"))
    else:
        best_raw = max(numbers["encode"].get("ViT-B/32", {}).get("images_s", {0: 0}).values())
        out.append(
            (name, ours >= TARGET_IMAGES_S, f"{ours:,.0f} images/s (the forward alone, best batch: {best_raw:,.0f})")
        )
    name = "pipeline overhead <= 30% (ViT-B/32, GPU)"
    if ours is None or raw is None:
        out.append((name, None, "a run failed"))
    else:
        overhead = 1 - ours / raw
        out.append((name, overhead <= TARGET_OVERHEAD, f"{overhead:.0%}: {ours:,.0f} vs the raw forward's {raw:,.0f}"))
    name = "anybind ingest >= 10x the one-at-a-time pattern (ViT-B/32, GPU)"
    if ours is None or one is None:
        out.append((name, None, "a run failed"))
    else:
        floor = "" if numbers["ingest"]["with_chromadb"] else " (tutorial loop without chromadb: a floor)"
        out.append((name, ours / one >= TARGET_RATIO, f"{ours / one:.1f}x{floor}"))
    name = "GPU flat scan >= 70% of HBM bandwidth (faiss-gpu Flat, one query)"
    scans = numbers["scans"]
    faiss_rows = [s for s in scans.get("scans", []) if s["path"].startswith("faiss-gpu")]
    if not faiss_rows:
        out.append((name, None, scans.get("error") or "faiss has no GPU support on this machine"))
    else:
        share = faiss_rows[0]["gb_s"] / scans["memory"]["read_gb_s"]
        out.append(
            (name, share >= TARGET_HBM, f"{faiss_rows[0]['gb_s']:,.0f} GB/s = {share:.0%} of the read bandwidth")
        )
    return out


def _figure(numbers: dict[str, Any], figure_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (enc, scan) = plt.subplots(1, 2, figsize=(12, 4))
    for name, result in numbers["encode"].items():
        if "images_s" in result:
            batches = [int(b) for b in result["images_s"]]
            enc.plot(batches, list(result["images_s"].values()), marker="o", label=name)
    enc.axhline(TARGET_IMAGES_S, color="k", linestyle=":", linewidth=1, label="target 2,500")
    enc.set(xscale="log", yscale="log", xlabel="batch", ylabel="images/s (fp16 forward)")
    enc.legend()
    methods = sorted({r["method"] for r in numbers["scans"]["sweep"]})
    for method in methods:
        rows = [r for r in numbers["scans"]["sweep"] if r["method"] == method]
        scan.plot([r["batch"] for r in rows], [r["gb_s"] for r in rows], marker="o", label=method)
    scan.axhline(numbers["scans"]["memory"]["read_gb_s"], color="k", linestyle=":", linewidth=1, label="read bandwidth")
    scan.set(xscale="log", yscale="log", xlabel="queries per call", ylabel="effective GB/s")
    scan.legend(fontsize=8)
    fig.suptitle(f"GPU: {numbers['scans'].get('device_name', '')}")
    return save_figure(fig, figure_dir / "gpu.png")


def run(quick: bool, workdir: Path) -> Section:
    """The "GPU" section; where torch sees no CUDA GPU, a section that says it was not run (and why)."""
    import torch

    if not torch.cuda.is_available():
        why = "torch sees no CUDA GPU on this machine"
        text = (
            f"Not run: {why}. The GPU part of issue 6 (CLIP ViT-B/32 and ViT-L/14 fp16 image-encode throughput, "
            "anybind ingest on the GPU, faiss-gpu Flat and IVF on 1M x 512 against HBM bandwidth) runs with "
            "`python bench/run.py --only gpu` on a machine with one; its targets are listed as not measured below."
        )
        return Section("GPU", text, results={"gpu": False, "not_run": why})
    return render(measure(Sizes("quick" if quick else "full"), Path(workdir), "cuda"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes: checks that every part runs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/anybind-bench"))
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    # the report's figure folder only for a real run; a smoke run's figure stays in the workdir
    figure_dir = args.workdir / "gpu" if mode == "smoke" else FIG_DIR
    section = render(measure(Sizes(mode), args.workdir, args.device), figure_dir)
    print(f"## {section.title}\n\n{section.markdown}")
    print(json.dumps(section.results, indent=1, default=str)[:3000], file=sys.stderr)
