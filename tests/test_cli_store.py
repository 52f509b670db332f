"""``anybind index / search / info / remove / optimize`` end to end, in-process through ``main()``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image

import anybind
from anybind.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(tmp_path: Path, image_files: dict[str, Path]) -> Path:
    """Six good images, a caption, and the bad files of the acceptance criterion."""
    root = tmp_path / "media"
    root.mkdir()
    for seed in range(6):
        make_image(root / f"photo{seed}.png", 100 + seed)
    shutil.copy(image_files["jpeg"], root / "photo.jpg")
    (root / "caption.txt").write_text("a violin on a wooden table\n")
    shutil.copy(image_files["corrupt"], root / "broken.png")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("this is a text file named .jpg\n")
    return root


@pytest.fixture
def db(tmp_path: Path, folder: Path, tiny_clip_dir: Path, capsys) -> Path:
    path = tmp_path / "db"
    code, _, _ = run_cli(
        capsys, "index", folder, "--db", path, "-s", f"clip:{tiny_clip_dir}", "--device", "cpu", "--no-progress"
    )
    assert code == 1  # the bad files
    return path


GOOD = [f"photo{i}.png" for i in range(6)] + ["photo.jpg"]


def test_index_reports_each_bad_file_and_commits_the_rest(capsys, tmp_path, folder, tiny_clip_dir):
    path = tmp_path / "db"
    code, out, err = run_cli(
        capsys,
        "index",
        folder,
        "--db",
        path,
        "-s",
        f"clip:{tiny_clip_dir}",
        "--device",
        "cpu",
        "--no-progress",
        "--json",
    )
    assert code == 1
    report = json.loads(out)
    added = {Path(entry["item"]).name for entry in report["added"]}
    assert added == {*GOOD, "caption.txt"}
    errors = {Path(e["item"]).name: e["error"] for e in report["errors"]}
    assert set(errors) == {"broken.png", "empty.png", "notes.jpg"}
    assert "corrupt" in errors["broken.png"] or "not a readable image" in errors["broken.png"]
    assert errors["empty.png"] == "empty file (0 bytes)"
    assert errors["notes.jpg"].startswith("has the image extension .jpg but its content is not image data")
    for name in errors:
        assert f"failed: {folder / name}: " in err
    assert "indexed 8 files (8 items)" in err and "3 failed" in err
    info = anybind.Store.open(path).info()
    assert {name: p["count"] for name, p in info["partitions"].items()} == {"image": 7, "text": 1}


def test_every_indexed_image_is_its_own_top_1(capsys, db, folder):
    for name in GOOD:
        code, out, _ = run_cli(
            capsys,
            "search",
            "--db",
            db,
            "--image",
            folder / name,
            "--to",
            "image",
            "-k",
            "1",
            "--json",
            "--device",
            "cpu",
        )
        assert code == 0
        hits = json.loads(out)["hits"]
        assert [Path(h["uri"]).name for h in hits] == [name]
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_text_search_matches_brute_force(capsys, db, folder, clip_space):
    code, out, _ = run_cli(capsys, "search", "--db", db, "--text", "a dog", "--to", "image", "-k", "7", "--json")
    assert code == 0
    hits = json.loads(out)["hits"]
    paths = [folder / name for name in GOOD]
    scores = clip_space.embed("image", paths) @ clip_space.embed("text", ["a dog"])[0]
    order = np.argsort(-scores, kind="stable")
    assert [Path(h["uri"]).name for h in hits] == [GOOD[i] for i in order]
    np.testing.assert_allclose([h["score"] for h in hits], scores[order], atol=1e-5)


def test_text_files_are_text_items_with_their_content(capsys, db):
    code, out, _ = run_cli(
        capsys, "search", "--db", db, "--text", "a violin on a wooden table", "--to", "text", "--json"
    )
    hit = json.loads(out)["hits"][0]
    assert code == 0 and hit["modality"] == "text" and hit["text"] == "a violin on a wooden table\n"
    assert hit["score"] == pytest.approx(1.0, abs=1e-5)


def test_reindex_is_a_no_op_and_search_table_prints(capsys, db, folder):
    code, out, err = run_cli(capsys, "index", folder, "--db", db, "--no-progress", "--json")
    assert code == 1 and json.loads(out)["added"] == [] and len(json.loads(out)["unchanged"]) == 8
    assert "8 unchanged, 0 replaced, 3 failed" in err
    assert json.loads(out)["generation"] == anybind.Store.open(db).generation
    code, out, _ = run_cli(capsys, "search", "--db", db, "--text", "a dog", "-k", "3")
    assert code == 0 and "photo" in out and "modality" in out


def test_where_filters_and_meta(capsys, tmp_path, tiny_clip_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for seed in range(4):
        make_image(a / f"a{seed}.png", seed)
    for seed in range(9):
        make_image(b / f"b{seed}.png", 50 + seed)
    path = tmp_path / "db"
    common = ["--db", path, "--no-progress"]
    assert run_cli(capsys, "index", a, *common, "-s", f"clip:{tiny_clip_dir}", "--meta", "album=x")[0] == 0
    assert run_cli(capsys, "index", b, *common, "--meta", "album=y", "--meta", "year=2020")[0] == 0
    code, out, _ = run_cli(capsys, "search", "--db", path, "--text", "cat", "-k", "3", "--where", "album=x", "--json")
    hits = json.loads(out)["hits"]
    assert code == 0 and len(hits) == 3 and {h["metadata"]["album"] for h in hits} == {"x"}
    code, out, _ = run_cli(capsys, "search", "--db", path, "--text", "cat", "-k", "10", "--where", "album=x", "--json")
    assert len(json.loads(out)["hits"]) == 4  # all of album x, no more
    code, out, _ = run_cli(
        capsys,
        "search",
        "--db",
        path,
        "--text",
        "cat",
        "-k",
        "20",
        "--where",
        "year=2020",
        "--where",
        "album=y",
        "--json",
    )
    assert len(json.loads(out)["hits"]) == 9
    code, _, err = run_cli(capsys, "search", "--db", path, "--text", "cat", "--where", "album")
    assert code == 2 and "KEY=VALUE" in err


def test_info_remove_and_optimize(capsys, db):
    code, out, _ = run_cli(capsys, "info", "--db", db, "--json", "--check-recall")
    info = json.loads(out)
    assert code == 0 and info["items"] == 8 and info["partitions"]["image"]["index"] == "Flat"
    assert info["partitions"]["image"]["recall@10"] == 1.0 and info["bytes"] > 0
    assert info["space"]["fingerprint"].startswith("anybind1:")
    code, out, _ = run_cli(capsys, "info", "--db", db)
    assert code == 0 and "image" in out and "generation 1" in out
    code, out, err = run_cli(capsys, "remove", "--db", db, "1", "2", "999", "--json")
    assert code == 1 and json.loads(out) == {"removed": [1, 2], "missing": [999], "generation": 2}
    assert "not in the store: 999" in err
    assert anybind.Store.open(db).info()["items"] == 6
    code, out, _ = run_cli(capsys, "optimize", "--db", db)
    assert code == 0 and "kept Flat" in out
    code, out, _ = run_cli(capsys, "optimize", "--db", db, "--index", "HNSW8", "-m", "image", "--json")
    assert code == 0 and json.loads(out)["image"]["index"] == "HNSW8"
    assert anybind.Store.open(db).info()["partitions"]["image"]["index"] == "HNSW8"


def test_store_errors_are_one_line_exit_2(capsys, monkeypatch, tmp_path, db, tiny_clip_dir, tiny_siglip_dir, folder):
    with monkeypatch.context() as patch:  # without the mini plugin there is no default space
        patch.setenv("ANYBIND_BLOCK_PLUGINS", "mini")
        code, _, err = run_cli(capsys, "index", folder, "--db", tmp_path / "new", "--no-progress")
    assert code == 2 and "a new store needs a space, and the default space 'anybind-mini' is not available" in err
    assert not (tmp_path / "new").exists()
    code, _, err = run_cli(capsys, "index", folder, "--db", db, "-s", f"siglip:{tiny_siglip_dir}", "--no-progress")
    assert code == 2 and "cannot mix spaces" in err and err.count("anybind1:") == 2
    code, _, err = run_cli(capsys, "search", "--db", tmp_path / "nowhere", "--text", "x")
    assert code == 2 and "not an anybind store" in err
    code, _, err = run_cli(capsys, "search", "--db", db, "--text", "x", "--to", "smell")
    assert code == 2 and "unknown modality 'smell'" in err
    code, _, err = run_cli(capsys, "search", "--db", db)
    assert code == 2 and "give a query" in err
    code, _, err = run_cli(
        capsys, "index", folder, "--db", tmp_path / "other", "-s", f"clip:{tiny_clip_dir}", "--index", "Bogus12"
    )
    assert code == 2 and "'Bogus12' is not a valid faiss index_factory string" in err
    assert not (tmp_path / "other").exists()
