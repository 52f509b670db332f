"""Durable file writes (temp name, fsync, rename, fsync the directory) and the checksums of store files."""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

from anybind.errors import StoreError

TMP_SUFFIX = ".tmp"
BLOCK = 16 << 20  # bytes read per checksum step (zlib releases the GIL on large buffers)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``directory`` durable. Raises ``OSError`` when the fsync fails (EIO)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (22, 95):  # EINVAL / EOPNOTSUPP: this filesystem cannot fsync directories
            return
        raise
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def is_temp(name: str) -> bool:
    """Whether ``name`` is a temp file of :func:`write_atomic` (left behind only by a crash)."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def write_atomic(path: Path, data: bytes | memoryview, *, sync_dir: bool = True) -> str:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content, never a mix.

    Returns the CRC-32 of ``data`` as 8 hex digits. ``sync_dir=False`` leaves the directory fsync to the caller
    (who writes several files and syncs once).
    """
    _, crc = write_new(path, [data])
    if sync_dir:
        fsync_dir(path.parent)
    return crc


def write_new(path: Path, chunks: Iterable[bytes | memoryview]) -> tuple[int, str]:
    """Write ``path`` from ``chunks``: temp name, fsync, rename over any old file (no directory fsync).

    Returns (bytes, CRC-32). A crash leaves the old file or the new one, and at most a temp file beside it.
    """
    tmp = _tmp_name(path)
    crc, size = 0, 0
    try:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                crc = zlib.crc32(chunk, crc)
                size += memoryview(chunk).nbytes
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return size, f"{crc & 0xFFFFFFFF:08x}"


def file_crc32(path: Path) -> tuple[int, str]:
    """(bytes, CRC-32 as 8 hex digits) of a file, read in blocks."""
    crc, size = 0, 0
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        while n := handle.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
            size += n
    return size, f"{crc & 0xFFFFFFFF:08x}"


def verify_file(path: Path, size: int, crc: str) -> None:
    """Raise :class:`StoreError` naming ``path`` when it is missing, of another size or fails its checksum."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise StoreError(f"{path}: missing (the manifest names it); {RECOVER_HINT}") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if actual != size:
        raise StoreError(
            f"{path}: is {actual} bytes, the manifest records {size} (truncated or replaced); {RECOVER_HINT}"
        )
    try:
        _, found = file_crc32(path)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if found != crc:
        raise StoreError(f"{path}: checksum {found} does not match the manifest's {crc} (damaged); {RECOVER_HINT}")


RECOVER_HINT = (
    "the store is damaged: run `anybind check --db DIR` for the full list, then restore the directory from a backup "
    "or re-index into a new store"
)


def directory_bytes(directory: Path) -> int:
    """Bytes used by the regular files under ``directory``."""
    total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
