"""Turn command-line paths into the files to index, reporting every bad path as an :class:`ItemError`.

The walk never opens anything (a FIFO would block forever): it only uses ``lstat``/``stat``/``scandir``.
Order is deterministic: arguments in the order given; inside a directory, entries sorted by name, the
directory's files (and errors) first, then its subdirectories, depth first (like a sorted ``os.walk``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeAlias

from anybind.errors import ItemError

WalkResult: TypeAlias = Path | ItemError
"""One item of :func:`walk_files`: the real path of a file to index, or the error for a bad path."""

_KINDS = ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISBLK, "block device"))
_KINDS += ((stat.S_ISCHR, "character device"),)


def _within(path: str, root: str) -> bool:
    """Whether real path ``path`` is ``root`` or lies under it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _stat(path: str) -> os.stat_result | ItemError:
    """``stat`` ``path`` (following links), or the error that names why it cannot be."""
    try:
        return os.stat(path)
    except OSError as err:
        if os.path.islink(path) and (isinstance(err, FileNotFoundError) or err.errno == errno.ELOOP):
            return ItemError(path, f"broken symlink (points to {os.readlink(path)})")
        if isinstance(err, FileNotFoundError):
            return ItemError(path, "no such file or directory")
        return ItemError(path, (err.strerror or str(err)).lower())


def _special(path: str, st: os.stat_result) -> ItemError:
    """The error for something that is neither a regular file nor a directory."""
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "unknown type")
    return ItemError(path, f"not a regular file ({kind})")


def walk_files(
    paths: Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[WalkResult]:
    """Yield the real path of every file to index under ``paths``, or an :class:`ItemError` per bad path.

    A file argument is taken even if hidden; inside directories, hidden entries are skipped silently.
    Without ``recursive`` only a directory's top-level files are taken. Symlinks leaving a directory
    argument's real root, directory loops, broken symlinks, special files and unlistable directories are
    reported and not followed. Directories in ``exclude`` (and everything under them) are skipped silently.
    Each real file is yielded at most once across all arguments.
    """
    excluded = [os.path.realpath(p) for p in exclude]
    seen: set[str] = set()

    def is_excluded(real: str) -> bool:
        return any(_within(real, ex) for ex in excluded)

    def take(real: str) -> Iterator[WalkResult]:
        if real not in seen and not is_excluded(real):
            seen.add(real)
            yield Path(real)

    for arg in paths:
        shown = os.fspath(arg)
        st = _stat(shown)
        if isinstance(st, ItemError):
            yield st
        elif stat.S_ISREG(st.st_mode):
            yield from take(os.path.realpath(shown))
        elif stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(shown, os.path.realpath(shown), recursive, is_excluded, take)
        else:
            yield _special(shown, st)


def _walk_dir(
    shown: str,
    root: str,
    recursive: bool,
    is_excluded: Callable[[str], bool],
    take: Callable[[str], Iterator[WalkResult]],
) -> Iterator[WalkResult]:
    """Walk one directory argument whose real path is ``root`` (see :func:`walk_files`)."""
    if is_excluded(root):
        return
    visited = {root}
    stack = [shown]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                names = sorted(entry.name for entry in it)
        except PermissionError:
            yield ItemError(current, "cannot list directory: permission denied")
            continue
        except OSError as err:
            yield ItemError(current, f"cannot list directory: {(err.strerror or str(err)).lower()}")
            continue
        subdirs: list[str] = []
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(current, name)
            st = _stat(path)
            if isinstance(st, ItemError):
                yield st
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir and not recursive:
                continue
            real = os.path.realpath(path)
            if not _within(real, root):
                yield ItemError(path, f"symlink leaves the indexed root {root} (points to {real})")
            elif stat.S_ISREG(st.st_mode):
                yield from take(real)
            elif not is_dir:
                yield _special(path, st)
            elif is_excluded(real):
                continue
            elif real in visited:
                if os.path.islink(path):
                    yield ItemError(path, f"directory loop: already visited {real}")
            else:
                visited.add(real)
                subdirs.append(path)
        stack.extend(reversed(subdirs))
