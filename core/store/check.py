"""``anybind check``: verify a whole store and say what is wrong and how to recover.

Checks, in order: the manifest (format, checksum, schema); the metadata database (``PRAGMA integrity_check``,
that it holds the manifest's generation); every file the manifest names (size, CRC-32, array shape, sorted ids
inside the recorded range, tombstones inside the segment, index size); per partition, that the live ids of its
segments are exactly the metadata's visible rows and the counts agree; that every stored vector is finite and
of unit length; and files no generation names (left by a crash; the next writer deletes them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anybind.errors import StoreError

from .files import is_temp
from .manifest import ITEMS_DB, MANIFEST, SEGMENTS, read_manifest
from .metadata import MetaDB
from .partition import PartitionView

HINT = (
    "restore the store directory from a backup, or re-index the files into a new --db; a store with damaged files "
    "is refused by search and index until then"
)


def check(root: Path) -> dict[str, Any]:
    """``{"ok": bool, "problems": [...], "partitions": {name: {"count", "segments"}}, "stray": [...], "hint"}``."""
    problems: list[str] = []
    report: dict[str, Any] = {"path": str(root), "ok": False, "problems": problems, "partitions": {}, "stray": []}
    try:
        manifest = read_manifest(root)
    except StoreError as exc:
        problems.append(str(exc))
        report["hint"] = HINT
        return report
    report["generation"] = manifest.generation
    db = None
    try:
        db = MetaDB(root, readonly=True)
        problems.extend(f"{root / ITEMS_DB}: {line}" for line in db.integrity())
        db.check_generation(manifest.generation)
    except StoreError as exc:
        problems.append(str(exc))
    seen: dict[int, str] = {}
    for name, record in sorted(manifest.partitions.items()):
        try:
            part = PartitionView(root / SEGMENTS, name, record, manifest.space.dim)
        except StoreError as exc:
            problems.append(str(exc))
            continue
        report["partitions"][name] = {"count": record.count, "segments": len(record.segments)}
        ids = part.live_ids()
        if len(np.unique(ids)) != len(ids):
            problems.append(f"{part.folder}: an id is live in two segments")
        for item_id in ids[np.isin(ids, np.fromiter(seen, np.int64, len(seen)))].tolist():
            problems.append(f"{part.folder}: id {item_id} is also in partition {seen[item_id]!r}")
        seen.update(dict.fromkeys(ids.tolist(), name))
        for seg in part.segments:
            for start in range(0, seg.record.rows, 65_536):
                block = np.asarray(seg.vectors[start : start + 65_536])
                norms = np.linalg.norm(block, axis=1)
                bad = ~np.isfinite(norms) | (np.abs(norms - 1) > 1e-3)
                if seg.live is not None:
                    bad &= seg.live[start : start + 65_536]
                if bad.any():
                    row = start + int(np.argmax(bad))
                    problems.append(
                        f"{seg.folder / seg.record.vectors.name}: row {row} (id {int(seg.ids[row])}) is not a finite "
                        "unit vector"
                    )
                    break
        if db is not None:
            try:
                rows = np.sort(db.ids(name, manifest.generation))
            except StoreError as exc:
                problems.append(str(exc))
                continue
            if not np.array_equal(rows, ids):
                extra = np.setdiff1d(ids, rows)[:5].tolist()
                lost = np.setdiff1d(rows, ids)[:5].tolist()
                problems.append(
                    f"{root / ITEMS_DB}: partition {name!r} has {len(rows)} metadata rows and {len(ids)} stored "
                    f"vectors (vectors without rows: {extra}; rows without vectors: {lost})"
                )
    if db is not None:
        db.close()
    named = manifest.file_names()
    for entry in sorted((root / SEGMENTS).glob("*/*")):
        if f"{entry.parent.name}/{entry.name}" not in named:
            report["stray"].append(str(entry))
    report["stray"] += [str(p) for p in sorted(root.iterdir()) if is_temp(p.name) and p.name != MANIFEST]
    report["ok"] = not problems
    if problems:
        report["hint"] = HINT
    return report
