"""Shared pieces of the benchmarks: the ``Section`` contract, machine and version records, timing helpers, and a
child-process runner that reports each child's peak RSS.

Every benchmark module ``bench/<name>.py`` exposes ``run(quick: bool, workdir: Path) -> Section``; ``run.py``
assembles the sections into ``docs/benchmarks.md``.

Child processes: ``run_in_child("search_systems", "child_anybind", timeout, **kwargs)`` starts
``python bench/common.py --child ...``, which imports the module from ``bench/``, calls the function with the
keyword arguments (JSON) and writes its JSON result plus ``peak_rss_mib`` (the kernel's high-water mark of that
process, ``VmHWM``) to a file the parent reads. One system per child, so one system's
memory never counts towards another's.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DOCS = REPO / "docs"
FIG_DIR = DOCS / "benchmarks"  # PNGs and results.json; markdown links are relative to docs/
MIB = 1024 * 1024
_START = time.monotonic()


@dataclass
class Section:
    """One part of the report (the contract between benchmark modules and ``run.py``)."""

    title: str  # "Search", "Ingest", "Physical limit"
    markdown: str  # the section body: tables (GitHub markdown), the target verdicts, notes
    figures: list[Path] = field(default_factory=list)  # PNGs written under docs/benchmarks/
    results: dict = field(default_factory=dict)  # raw numbers (also dumped to docs/benchmarks/results.json)
    targets: list[tuple[str, bool | None, str]] = field(default_factory=list)  # (target, met? None = not measured, why)


def log(message: str) -> None:
    """Progress on stderr, stamped with the seconds since the benchmark started."""
    print(f"[bench {time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- machine and versions --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS and load average (others may share the machine: the load says how much)."""
    import psutil

    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "gpu": gpu_name(),
    }


def gpu_name() -> str | None:
    """The NVIDIA GPU(s) ``nvidia-smi -L`` lists, or None (no driver, no device)."""
    import shutil

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


VERSIONED = ("numpy", "faiss-cpu", "torch", "anybind", "chromadb", "lancedb", "qdrant-client", "pyarrow")
VERSIONED += ("matplotlib", "psutil")


def versions() -> dict[str, str]:
    """Python and the version of every package the benchmarks touch ("missing" when not installed)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            found[name] = "missing"
    found["blas"] = blas_name()
    return found


def blas_name() -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:
        return "unknown"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- timing --------------------------------------------------------------------------------------------


def latencies(call: Callable[[Any], Any], queries: Sequence[Any], warmup: int = 5) -> tuple[np.ndarray, list[Any]]:
    """Seconds per call and each call's result, one query at a time; the first ``warmup`` queries run once
    untimed before the timed pass."""
    for query in queries[:warmup]:
        call(query)
    seconds, outputs = np.empty(len(queries)), []
    for position, query in enumerate(queries):
        start = time.perf_counter()
        outputs.append(call(query))
        seconds[position] = time.perf_counter() - start
    return seconds, outputs


def summarize(seconds: np.ndarray) -> dict[str, float]:
    """p50/p99/mean latency in ms and QPS = 1 / mean latency (one query at a time)."""
    mean = float(np.mean(seconds))
    return {
        "p50_ms": float(np.percentile(seconds, 50) * 1e3),
        "p99_ms": float(np.percentile(seconds, 99) * 1e3),
        "mean_ms": mean * 1e3,
        "qps": 1.0 / mean if mean > 0 else float("inf"),
        "queries": len(seconds),
    }


def best_of(call: Callable[[], Any], repeat: int, min_seconds: float = 0.0) -> float:
    """Fastest wall time (s) of ``repeat`` calls (more if they took under ``min_seconds`` in total)."""
    best, spent, runs = float("inf"), 0.0, 0
    while runs < repeat or spent < min_seconds:
        start = time.perf_counter()
        call()
        took = time.perf_counter() - start
        best, spent, runs = min(best, took), spent + took, runs + 1
    return best


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (exact top-k) present in the same row of ``found``."""
    k = truth.shape[1]
    hits = sum(len({int(i) for i in f} & {int(i) for i in t}) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k) if len(truth) else 1.0


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    import psutil

    return psutil.Process().memory_info().rss / MIB


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB): ``VmHWM`` of /proc/self/status.

    Not ``getrusage().ru_maxrss``: Linux carries that over from the parent across fork + exec, so a child of a
    big parent would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# -- child processes -------------------------------------------------------------------------------------


def run_in_child(module: str, function: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
    """Run ``bench/<module>.py``'s ``function(**kwargs)`` in a fresh Python process; its dict result plus
    ``peak_rss_mib`` and ``wall_s``. A failure or a timeout returns ``{"error": ...}`` instead of raising."""
    with tempfile.TemporaryDirectory(prefix="anybind-bench-child-") as tmp:
        args_path, out_path = Path(tmp) / "args.json", Path(tmp) / "out.json"
        args_path.write_text(json.dumps(kwargs, default=str))
        command = [sys.executable, str(Path(__file__).resolve()), "--child", module, function, str(args_path)]
        start = time.perf_counter()
        child = subprocess.Popen([*command, str(out_path)], start_new_session=True)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return {"error": f"stopped after {timeout:.0f} s (time limit)", "wall_s": time.perf_counter() - start}
        wall = time.perf_counter() - start
        if not out_path.exists():
            return {"error": f"child exited with status {child.returncode} and no result", "wall_s": wall}
        result = json.loads(out_path.read_text())
        result["wall_s"] = wall
        return result


def _child_main(module: str, function: str, args_path: str, out_path: str) -> None:
    sys.path.insert(0, str(BENCH_DIR))
    kwargs = json.loads(Path(args_path).read_text())
    try:
        result = getattr(importlib.import_module(module), function)(**kwargs)
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    result["peak_rss_mib"] = peak_rss_mib()
    result["load_after"] = os.getloadavg()[0]
    Path(out_path).write_text(json.dumps(result, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# -- markdown --------------------------------------------------------------------------------------------


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are formatted with :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(cell) for cell in row) + " |")
    return "\n".join(lines)


def fmt(value: Any) -> str:
    """Numbers with 3 significant digits (no exponent below a million); None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if not np.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (110 dpi PNG, creating the folder) and close a matplotlib figure; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_link(path: Path) -> str:
    """Markdown image link to a figure, relative to ``docs/``."""
    return f"![{path.stem}]({path.resolve().relative_to(DOCS.resolve()).as_posix()})"


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--child":
    _child_main(*sys.argv[2:6])
