"""``anybind demo``: the bundled sample indexed with anybind-mini and queried in every direction, in-process.

The demo runs three times in this module (once with ``--json --db``, again on the same store, and once in a
temporary store); its model load dominates each run. ``test_demo_finds_the_expected_concepts`` needs the trained
weights: with the placeholder (random) weights it fails, everything else passes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from anybind.cli import demo_cmd, main

K = 3


def run_demo(*args: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["demo", "--no-progress", "--device", "cpu", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def sample() -> demo_cmd.Sample:
    return demo_cmd.read_sample(demo_cmd.sample_dir())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    db = tmp_path_factory.mktemp("demo") / "db"
    code, out, err = run_demo("--json", "--db", db, "-k", K)
    assert code == 0, err
    return db, json.loads(out)


def test_the_sample_is_installed_and_described(sample: demo_cmd.Sample) -> None:
    modalities = {f.modality for f in sample.files}
    assert modalities == {"image", "audio", "video", "text"}
    assert (sample.root / "LICENSES.md").is_file()
    concepts = {concept for f in sample.files for concept, _, _ in f.spans}
    assert {q.expected for q in demo_cmd.QUERIES} <= concepts
    video = next(f for f in sample.files if f.name == "videos/violin-then-trumpet.mp4")
    assert video.concepts(0.0, 2.0) == ["violin"] and video.concepts(4.0, 6.0) == ["trumpet"]
    assert video.concepts() == ["violin", "trumpet"]


def test_the_demo_indexes_the_whole_sample(first_run: tuple[Path, dict[str, Any]], sample: demo_cmd.Sample) -> None:
    db, data = first_run
    assert data["db"] == str(db) and data["space"]["preset"] == "anybind-mini"
    index = data["index"]
    assert index["errors"] == []
    assert index["files"] == index["added"] == len(sample.files) and index["unchanged"] == 0
    assert set(index["partitions"]) == {"image", "audio", "video", "text"}
    assert index["items"] == sum(index["partitions"].values()) >= len(sample.files)
    assert all(seconds >= 0 for seconds in data["seconds"].values())


def test_every_query_returns_k_hits_best_first(first_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = first_run
    queries = data["queries"]
    assert [(q["direction"], q["target"], q["expected"]) for q in queries] == [
        (q.direction, q.target, q.expected) for q in demo_cmd.QUERIES
    ]
    for query in queries:
        hits = query["hits"]
        assert len(hits) == K, query["direction"]
        scores = [hit["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True), query["direction"]
        assert len({hit["uri"] for hit in hits}) == K  # audio and video roll up: each file once
        for hit in hits:
            assert hit["modality"] == query["target"] and os.path.isfile(hit["uri"]) and hit["concepts"]
            if hit["modality"] in ("audio", "video"):
                assert 0 <= hit["start"] < hit["end"]
            else:
                assert hit["start"] is None and hit["end"] is None
            if hit["modality"] == "text":  # captions come back with their file name and their text
                assert hit["name"].startswith("captions/") and hit["name"].endswith(".txt") and hit["text"].strip()
        rank = query["expected_rank"]
        assert rank is None or hits[rank - 1]["match"]


def test_demo_finds_the_expected_concepts(first_run: tuple[Path, dict[str, Any]]) -> None:
    """Needs the trained anybind-mini weights (fails with the placeholder random ones)."""
    _, data = first_run

    def label(hit: dict[str, Any]) -> str:
        return hit["name"] if hit["start"] is None else f"{hit['name']} {hit['start']:.1f}-{hit['end']:.1f}s"

    missed = [
        f"{q['direction']} {q['query']!r}: expected {q['expected']}, got {', '.join(map(label, q['hits']))}"
        for q in data["queries"]
        if q["expected_rank"] is None
    ]
    assert not missed, "\n".join(missed)


def test_a_second_run_on_the_same_db_adds_nothing(first_run: tuple[Path, dict[str, Any]]) -> None:
    db, first = first_run
    generation = json.loads((db / "manifest.json").read_text())["generation"]
    code, out, err = run_demo("--json", "--db", db, "-k", K)
    assert code == 0, err
    data = json.loads(out)
    assert data["index"]["added"] == 0 and data["index"]["unchanged"] == first["index"]["files"]
    assert data["index"]["items"] == first["index"]["items"]
    assert json.loads((db / "manifest.json").read_text())["generation"] == generation
    assert [[h["uri"] for h in q["hits"]] for q in data["queries"]] == [
        [h["uri"] for h in q["hits"]] for q in first["queries"]
    ]


def test_without_db_the_store_is_temporary_and_the_table_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code, out, err = run_demo()
    assert code == 0, err
    assert list(scratch.iterdir()) == []
    for query in demo_cmd.QUERIES:
        assert query.direction in out
    assert "violin-then-trumpet.mp4" in out and "temporary store (removed)" in out
    assert "index" in out and "search" in out


def test_a_missing_sample_is_exit_2_without_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_cmd, "sample_dir", lambda: tmp_path / "gone")
    code, out, err = run_demo("--json")
    assert code == 2 and out == ""
    assert "sample corpus is missing" in err and str(tmp_path / "gone") in err and "Traceback" not in err


def test_a_broken_sample_description_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: demo_cmd.Sample
) -> None:
    broken = tmp_path / "sample"
    shutil.copytree(sample.root, broken)
    monkeypatch.setattr(demo_cmd, "sample_dir", lambda: broken)
    (broken / "images" / "bird.png").unlink()
    code, _, err = run_demo()
    assert code == 2 and "images/bird.png" in err and "Traceback" not in err
    (broken / "sample.json").write_text("{not json")
    code, _, err = run_demo()
    assert code == 2 and "sample.json" in err and "Traceback" not in err


def test_a_space_that_fails_to_load_is_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYBIND_LOAD_PLUGINS", "image,text,audio,video")  # mini blocked
    code, out, err = run_demo("--json")
    assert code == 2 and out == ""
    assert "anybind-mini" in err and "failed to load" in err and "Traceback" not in err
