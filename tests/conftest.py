"""Shared fixtures: tiny CLIP/SigLIP checkpoints built from configs, generated media, a clean plugin host.

Nothing here touches the network: HF_HUB_OFFLINE is forced for the whole run.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("ANYBIND_LOAD_PLUGINS", None)
os.environ.pop("ANYBIND_BLOCK_PLUGINS", None)
# rich lays tables out for an 80-column terminal when it cannot ask one, folding long temporary paths (and the
# words next to them) across lines by the length of pytest's directory names; tests read whole lines
os.environ["COLUMNS"] = "400"

import numpy as np
import pytest
from PIL import Image

import anybind
from anybind.testing import build_tiny_clip, build_tiny_siglip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny CLIP checkpoint (16-d) saved with save_pretrained."""
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny SigLIP checkpoint (32-d) saved with save_pretrained."""
    return build_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")


def builtin_host() -> anybind.PluginHost:
    """A host with only this distribution's plugins, found through the real entry points."""
    fresh = anybind.PluginHost(allow={"anybind"})
    fresh.load_entry_points()
    return fresh


@pytest.fixture(scope="session")
def builtin_plugins() -> anybind.PluginHost:
    """The built-in plugins only (shared; do not add plugins to it)."""
    return builtin_host()


@pytest.fixture(autouse=True)
def _hermetic_default_host(builtin_plugins: anybind.PluginHost):
    """Tests see the built-in plugins, whatever else is installed in the environment."""
    anybind.set_host(builtin_plugins)
    yield
    anybind.set_host(None)


@pytest.fixture(scope="session")
def clip_space(tiny_clip_dir: Path, builtin_plugins: anybind.PluginHost) -> anybind.Space:
    """The tiny CLIP loaded as a space on the CPU (shared; do not mutate)."""
    return anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu", host=builtin_plugins)


@pytest.fixture
def host() -> anybind.PluginHost:
    """A fresh host with only the built-in plugins; tests may add plugins to it."""
    return builtin_host()


def make_image(path: Path, seed: int, size: tuple[int, int] = (48, 40), fmt: str = "PNG") -> Path:
    """Write a random RGB picture (different per seed) and return its path."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture
def image_files(tmp_path: Path) -> dict[str, Path]:
    """Good and bad image files: two good PNGs, a JPEG, and corrupt / empty / truncated / impostor files."""
    good = make_image(tmp_path / "good.png", 1)
    good2 = make_image(tmp_path / "good2.png", 2)
    jpeg = make_image(tmp_path / "photo.jpg", 3, fmt="JPEG")
    corrupt = tmp_path / "broken.png"
    data = good.read_bytes()
    corrupt.write_bytes(data[:16] + b"\x00" * 64 + data[80:])  # PNG magic, header chunk smashed
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    impostor = tmp_path / "notes.jpg"
    impostor.write_text("this is a text file named .jpg\n")
    return {
        "good": good,
        "good2": good2,
        "jpeg": jpeg,
        "corrupt": corrupt,
        "empty": empty,
        "truncated": truncated,
        "impostor": impostor,
    }
