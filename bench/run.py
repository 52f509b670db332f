"""Run the benchmarks of issue 6 and write ``docs/benchmarks.md`` (plus PNGs and results.json under
``docs/benchmarks/``).

    python bench/run.py [--quick] [--only ingest,search,bandwidth,store,gpu] [--workdir DIR]

``--quick``: the reduced sizes (about 13 minutes on 2 cores); without it the full run (100k and 1M vectors, 1,000
queries: about 1.75 hours on 2 cores, the store section about 12 minutes of it). ``--only`` runs some sections and
keeps the others from the previous run's results.json. A section that could not run on this machine (GPU on a
machine without one) keeps the previous run's figures when there are any. Progress goes to stderr. Generated data,
stores and models live in ``--workdir`` (default: ``$TMPDIR/anybind-bench``; data files are reused between runs
when their parameters match).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
from common import Section, log, machine_info, utc_now, versions

# name on the command line -> (module, section title), in the order of the report
SECTIONS = {
    "ingest": ("ingest_bench", "Ingest"),
    "search": ("search_bench", "Search"),
    "bandwidth": ("bandwidth", "Physical limit"),
    "store": ("store_bench", "Store"),
    "gpu": ("gpu_bench", "GPU"),
}


def run_section(name: str, quick: bool, workdir: Path) -> Section:
    """One section; a missing module or a failure becomes a section that says so (the others still run)."""
    module_name, title = SECTIONS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        log(f"{name}: bench/{module_name}.py is missing, section skipped")
        return Section(title, f"Not run: `bench/{module_name}.py` does not exist yet.")
    start = time.perf_counter()
    log(f"{name}: start")
    try:
        section = module.run(quick=quick, workdir=workdir)  # each module keeps to its own subfolders
    except Exception as exc:
        traceback.print_exc()
        log(f"{name}: FAILED ({type(exc).__name__}: {exc})")
        return Section(title, f"Not run: the section failed with `{type(exc).__name__}: {exc}`.")
    took = time.perf_counter() - start
    section.results["section_s"] = took
    log(f"{name}: done in {took:.0f} s")
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (about 13 minutes on 2 cores)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "anybind-bench")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown or not wanted:
        parser.error(f"--only takes {', '.join(SECTIONS)}; got {args.only!r}")
    start, date = time.perf_counter(), utc_now()
    meta = {
        "command": " ".join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": date,
        "quick": args.quick,
        "machine": machine_info(),
        "versions": versions(),
        "workdir": str(args.workdir),
    }
    previous = report.previous_sections()
    sections, carried = [], {}
    for name, (_, title) in SECTIONS.items():
        if name in wanted:
            section = run_section(name, args.quick, args.workdir)
            if section.results.get("not_run") and title in previous and not _not_run(previous[title]):
                log(f"{name}: not run here ({section.results['not_run']}); keeping the previous run's figures")
                carried[title] = previous[title]
                section = report.section_from_record(title, previous[title])
            sections.append(section)
        elif title in previous:
            carried[title] = previous[title]
            sections.append(report.section_from_record(title, previous[title]))
    meta["duration_s"] = time.perf_counter() - start
    path = report.write(sections, meta, carried)
    log(f"wrote {path} ({meta['duration_s'] / 60:.1f} min)")
    return 0


def _not_run(record: dict) -> bool:
    return bool(record.get("results", {}).get("not_run"))


if __name__ == "__main__":
    sys.exit(main())
