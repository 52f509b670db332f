"""The command line, in-process through ``main()`` and, for entry-point behaviour, as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import anybind
from anybind.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"anybind {anybind.__version__}"


def test_plugins_json_lists_modalities_with_their_distribution(capsys):
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    report = json.loads(out)
    modalities = {m["name"]: m for m in report["modalities"]}
    assert modalities["image"]["distribution"] == "anybind" and modalities["image"]["plugin"] == "image"
    assert modalities["text"]["distribution"] == "anybind"
    assert {e["name"] for e in report["encoders"]} >= {"clip", "siglip"}
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["clip"]["registered"] == {"encoders": ["clip", "siglip"]}
    assert plugins["image"]["version"] == anybind.__version__


def test_plugins_table(capsys):
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0 and "image" in out and "anybind" in out


def test_empty_allowlist_loads_nothing(capsys, monkeypatch):
    monkeypatch.setenv("ANYBIND_LOAD_PLUGINS", "")
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["modalities"] == [] and report["encoders"] == []
    assert all(p["status"] == "not-allowed" for p in report["plugins"])


def test_block_flag(capsys):
    code, out, _ = run_cli(capsys, "-p", "no:text", "plugins", "--json")
    assert code == 0
    assert [m["name"] for m in json.loads(out)["modalities"] if m["name"] in ("image", "text")] == ["image"]


def test_bad_plugin_flag_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "-p", "text", "plugins")
    assert code == 2 and "only no:NAME" in err


def test_embed_text_json_gives_a_unit_vector(capsys, tiny_clip_dir):
    code, out, err = run_cli(
        capsys, "embed", "--space", f"clip:{tiny_clip_dir}", "--modality", "text", "a dog", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["dim"] == 16 and report["errors"] == []
    (result,) = report["results"]
    assert result["item"] == "a dog" and result["modality"] == "text"
    assert abs(np.linalg.norm(result["vector"]) - 1) < 1e-4


def test_embed_images_reports_the_broken_one_and_keeps_the_rest(capsys, tiny_clip_dir, image_files, clip_space):
    good, broken, good2 = image_files["good"], image_files["corrupt"], image_files["good2"]
    code, out, err = run_cli(
        capsys,
        "embed",
        "--space",
        f"clip:{tiny_clip_dir}",
        "--modality",
        "image",
        str(good),
        str(broken),
        str(good2),
        "--json",
    )
    assert code == 1
    report = json.loads(out)
    assert [r["item"] for r in report["results"]] == [str(good), str(good2)]
    expected = clip_space.embed("image", [good, good2])
    np.testing.assert_allclose([r["vector"] for r in report["results"]], expected, atol=1e-6)
    assert report["errors"] == [
        {"index": 1, "item": str(broken), "error": "not a readable image (unknown format or corrupt header)"}
    ]
    assert [r["index"] for r in report["results"]] == [0, 2]
    assert f"{broken}: not a readable image" in err
    assert "Traceback" not in err


def test_embed_without_modality_sniffs_each_file(capsys, tiny_clip_dir, image_files, tmp_path, clip_space):
    note = tmp_path / "note.txt"
    note.write_text("a violin and a piano")
    code, out, err = run_cli(
        capsys,
        "embed",
        "-s",
        f"clip:{tiny_clip_dir}",
        str(image_files["impostor"]),
        str(note),
        str(image_files["jpeg"]),
        "not-a-file",
        "--json",
    )
    assert code == 1
    report = json.loads(out)
    assert [(r["item"], r["modality"]) for r in report["results"]] == [
        (str(note), "text"),
        (str(image_files["jpeg"]), "image"),
    ]
    assert [e["item"] for e in report["errors"]] == [str(image_files["impostor"]), "not-a-file"]
    assert "content is not image data" in report["errors"][0]["error"] and "--modality text" in err
    # a sniffed text file is embedded by its content, not by its name
    by_item = {r["item"]: np.array(r["vector"]) for r in report["results"]}
    np.testing.assert_allclose(by_item[str(note)], clip_space.embed("text", ["a violin and a piano"])[0], atol=1e-6)
    assert not np.allclose(by_item[str(note)], clip_space.embed("text", [str(note)])[0], atol=1e-3)


def test_sniffed_modality_without_a_route_fails_only_its_items(capsys, monkeypatch, tiny_clip_dir, image_files):
    class Blob:
        @anybind.hookimpl
        def anybind_modalities(self, register):
            register(anybind.Modality("blob", decode=bytes, sniff=lambda head: head.startswith(b"BLOB")))

    host = anybind.PluginHost(allow={"anybind"})
    host.load_entry_points()
    host.add_plugin(Blob(), "blob")
    monkeypatch.setattr(anybind.cli.PluginHost, "from_environment", classmethod(lambda cls, **kwargs: host))
    blob = image_files["good"].with_name("x.blob")
    blob.write_bytes(b"BLOB....")
    space = f"clip:{tiny_clip_dir}"
    code, out, _ = run_cli(capsys, "embed", "-s", space, str(blob), str(image_files["good"]), "--json")
    assert code == 1
    report = json.loads(out)
    assert [r["item"] for r in report["results"]] == [str(image_files["good"])]
    assert report["errors"][0]["index"] == 0 and "cannot embed modality 'blob'" in report["errors"][0]["error"]


def test_item_names_are_not_rich_markup(capsys, tiny_clip_dir):
    code, out, err = run_cli(capsys, "embed", "-s", f"clip:{tiny_clip_dir}", "-m", "text", "[/oops]", "[bold]x")
    assert code == 0, err
    assert "[/oops]" in out and "[bold]x" in out


def test_space_from_the_environment(capsys, monkeypatch, tiny_clip_dir):
    monkeypatch.setenv("ANYBIND_SPACE", f"clip:{tiny_clip_dir}")
    code, out, _ = run_cli(capsys, "embed", "-m", "text", "a dog", "--json")
    assert code == 0 and json.loads(out)["dim"] == 16


def test_embed_table_output(capsys, tiny_clip_dir):
    code, out, _ = run_cli(capsys, "embed", "-s", f"clip:{tiny_clip_dir}", "-m", "text", "a cat")
    assert code == 0 and "a cat" in out and "1.0000" in out


def test_errors_are_one_line_unless_debug(capsys, tmp_path):
    code, out, err = run_cli(capsys, "embed", "-s", f"clip:{tmp_path / 'missing'}", "-m", "text", "a dog")
    assert code == 2 and out == ""
    assert err.startswith("anybind: error: cannot load model config from hub id")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(anybind.ModelLoadError):
        main(["--debug", "embed", "-s", f"clip:{tmp_path / 'missing'}", "-m", "text", "a dog"])


def test_unknown_modality_and_space(capsys, tiny_clip_dir):
    code, _, err = run_cli(capsys, "embed", "-s", f"clip:{tiny_clip_dir}", "-m", "smell", "x")
    assert code == 2 and "unknown modality 'smell'; available: " in err
    code, _, err = run_cli(capsys, "embed", "-s", "clop:x", "-m", "text", "x")
    assert code == 2 and "unknown encoder 'clop'" in err


BROKEN_DIST = {
    "broken_plugin.py": "import no_such_module_anywhere\n",
    "broken_plugin-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n",
    "broken_plugin-1.0.dist-info/entry_points.txt": "[anybind]\nbroken = broken_plugin\n",
}


def subprocess_cli(*args: str, extra_path: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env}
    if extra_path is not None:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "anybind", *args], capture_output=True, text=True, env=environ, timeout=120
    )


def test_installed_broken_plugin_is_named_and_skipped(tmp_path):
    for relative, content in BROKEN_DIST.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    done = subprocess_cli("plugins", "--json", extra_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "plugin 'broken' (broken-plugin) failed to import" in done.stderr
    assert "no_such_module_anywhere" in done.stderr
    report = json.loads(done.stdout)
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["broken"]["status"] == "failed" and plugins["broken"]["distribution"] == "broken-plugin"
    assert {"image", "text"} <= {m["name"] for m in report["modalities"]}


def test_console_script_with_empty_allowlist():
    done = subprocess_cli("plugins", "--json", ANYBIND_LOAD_PLUGINS="")
    assert done.returncode == 0
    assert json.loads(done.stdout)["modalities"] == []
