"""Tests for :mod:`anybind.store.walk`: which files ``anybind index`` takes, and how bad paths are reported."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from anybind.errors import ItemError
from anybind.store.walk import WalkResult, walk_files


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _split(results: list[WalkResult]) -> tuple[list[Path], list[ItemError]]:
    files = [r for r in results if isinstance(r, Path)]
    errors = [r for r in results if isinstance(r, ItemError)]
    assert len(files) + len(errors) == len(results)
    return files, errors


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{b.txt, a.txt, .hidden, .git/config, sub/c.txt, sub/deep/d.txt, z.txt}"""
    root = tmp_path / "root"
    for rel in ("b.txt", "a.txt", ".hidden", ".git/config", "sub/c.txt", "sub/deep/d.txt", "z.txt"):
        _touch(root / rel)
    return root


def test_missing_argument(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    results = list(walk_files([missing]))
    assert len(results) == 1
    err = results[0]
    assert isinstance(err, ItemError)
    assert err.source == missing
    assert err.reason == "no such file or directory"
    assert str(err) == f"{missing}: no such file or directory"


def test_file_argument_and_hidden_file_argument(tree: Path) -> None:
    results = list(walk_files([tree / "a.txt", str(tree / ".hidden")]))
    assert results == [_real(tree / "a.txt"), _real(tree / ".hidden")]
    assert all(isinstance(r, Path) and r.is_absolute() for r in results)


def test_directory_non_recursive_takes_top_level_sorted_skips_hidden(tree: Path) -> None:
    results = list(walk_files([tree]))
    assert results == [_real(tree / n) for n in ("a.txt", "b.txt", "z.txt")]


def test_directory_recursive_order(tree: Path) -> None:
    results = list(walk_files([tree], recursive=True))
    expected = ["a.txt", "b.txt", "z.txt", "sub/c.txt", "sub/deep/d.txt"]
    assert results == [_real(tree / n) for n in expected]


def test_relative_argument_yields_absolute_paths(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    assert list(walk_files(["sub"], recursive=True)) == [_real(tree / "sub/c.txt"), _real(tree / "sub/deep/d.txt")]


def test_symlink_to_file_inside_root_is_followed_once(tree: Path) -> None:
    (tree / "link.txt").symlink_to(tree / "sub" / "c.txt")
    results = list(walk_files([tree], recursive=True))
    expected = ["a.txt", "b.txt", "sub/c.txt", "z.txt", "sub/deep/d.txt"]
    assert results == [_real(tree / n) for n in expected]


def test_symlink_to_file_outside_root_is_reported(tree: Path, tmp_path: Path) -> None:
    outside = _touch(tmp_path / "outside" / "secret.txt")
    (tree / "leak.txt").symlink_to(outside)
    files, errors = _split(list(walk_files([tree])))
    assert files == [_real(tree / n) for n in ("a.txt", "b.txt", "z.txt")]
    assert [e.source for e in errors] == [str(tree / "leak.txt")]
    assert errors[0].reason == f"symlink leaves the indexed root {_real(tree)} (points to {_real(outside)})"
    assert _real(outside) not in files


def test_symlinked_dir_outside_root_is_reported_not_followed(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _touch(outside / "secret.txt")
    (tree / "ext").symlink_to(outside, target_is_directory=True)
    files, errors = _split(list(walk_files([tree], recursive=True)))
    assert _real(outside / "secret.txt") not in files
    assert [e.source for e in errors] == [str(tree / "ext")]
    assert "symlink leaves the indexed root" in errors[0].reason
    assert str(_real(outside)) in errors[0].reason


def test_symlinked_dir_ignored_without_recursive(tree: Path, tmp_path: Path) -> None:
    (tree / "ext").symlink_to(tmp_path, target_is_directory=True)
    assert list(walk_files([tree])) == [_real(tree / n) for n in ("a.txt", "b.txt", "z.txt")]


def test_symlink_loop_terminates_and_is_reported(tree: Path) -> None:
    (tree / "sub" / "up").symlink_to(tree, target_is_directory=True)
    (tree / "sub" / "deep" / "self").symlink_to(tree / "sub" / "deep", target_is_directory=True)
    files, errors = _split(list(walk_files([tree], recursive=True)))
    expected = ["a.txt", "b.txt", "z.txt", "sub/c.txt", "sub/deep/d.txt"]
    assert files == [_real(tree / n) for n in expected]
    assert [e.source for e in errors] == [str(tree / "sub" / "up"), str(tree / "sub" / "deep" / "self")]
    assert errors[0].reason == f"directory loop: already visited {_real(tree)}"
    assert errors[1].reason == f"directory loop: already visited {_real(tree / 'sub' / 'deep')}"


def test_symlinked_dir_inside_root_followed_when_not_yet_visited(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / ".stash" / "kept.txt")  # hidden, so only reachable through the link
    (root / "alias").symlink_to(root / ".stash", target_is_directory=True)
    assert list(walk_files([root], recursive=True)) == [_real(root / ".stash" / "kept.txt")]


def test_broken_symlink_in_dir_and_as_argument(tree: Path, tmp_path: Path) -> None:
    target = tmp_path / "gone.txt"
    (tree / "broken").symlink_to(target)
    files, errors = _split(list(walk_files([tree, tree / "broken"])))
    assert files == [_real(tree / n) for n in ("a.txt", "b.txt", "z.txt")]
    assert [e.source for e in errors] == [str(tree / "broken")] * 2
    assert all(e.reason == f"broken symlink (points to {target})" for e in errors)


def test_fifo_is_reported_and_never_opened(tree: Path) -> None:
    fifo = tree / "pipe"
    os.mkfifo(fifo)
    (tree / "pipe_link").symlink_to(fifo)
    results: list[WalkResult] = []
    # Opening the FIFO would block forever: walk in a daemon thread so a regression fails instead of hanging.
    worker = threading.Thread(target=lambda: results.extend(walk_files([tree, fifo])), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "walk_files blocked on a FIFO"
    files, errors = _split(results)
    assert files == [_real(tree / n) for n in ("a.txt", "b.txt", "z.txt")]
    assert [e.source for e in errors] == [str(tree / "pipe"), str(tree / "pipe_link"), str(fifo)]
    assert all(e.reason == "not a regular file (fifo)" for e in errors)


def test_exclude_dir_is_skipped_silently(tree: Path) -> None:
    _touch(tree / "db" / "store.sqlite")
    _touch(tree / "db" / "nested" / "blob.bin")
    results = list(walk_files([tree], recursive=True, exclude=[tree / "db"]))
    expected = ["a.txt", "b.txt", "z.txt", "sub/c.txt", "sub/deep/d.txt"]
    assert results == [_real(tree / n) for n in expected]
    assert list(walk_files([tree / "db"], recursive=True, exclude=[str(tree / "db")])) == []
    assert list(walk_files([tree / "db" / "store.sqlite"], exclude=[tree / "db"])) == []


def test_duplicates_across_arguments_yielded_once(tree: Path) -> None:
    results = list(walk_files([tree / "a.txt", tree, tree / "sub", tree / "sub" / ".." / "a.txt"], recursive=True))
    expected = ["a.txt", "b.txt", "z.txt", "sub/c.txt", "sub/deep/d.txt"]
    assert results == [_real(tree / n) for n in expected]
    assert len(set(results)) == len(results)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list any directory")
def test_unlistable_directory_is_reported_and_walk_goes_on(tree: Path) -> None:
    locked = tree / "sub" / "deep"
    locked.chmod(0)
    try:
        files, errors = _split(list(walk_files([tree], recursive=True)))
    finally:
        locked.chmod(0o755)
    assert files == [_real(tree / n) for n in ("a.txt", "b.txt", "z.txt", "sub/c.txt")]
    assert [e.source for e in errors] == [str(locked)]
    assert errors[0].reason == "cannot list directory: permission denied"
