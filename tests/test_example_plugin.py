"""The example third-party plugin ``anybind-sketch`` (examples/anybind-sketch), installed with
``pip install -e examples/anybind-sketch``: found through the real entry points, embedded through the image tower,
and refusing bad or unsafe SVG with named errors.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import anybind
from anybind.errors import DecodeError

if not os.environ.get("CI"):  # the README's install command installs the example; CI must never skip it
    pytest.importorskip("anybind_sketch", reason="pip install -e ./examples/anybind-sketch")
from anybind_sketch import MAX_SVG_BYTES, RENDER_SIZE, decode, sniff

SVG_NS = 'xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
CIRCLE = (
    f'<svg {SVG_NS} width="100" height="100">'
    '<circle cx="50" cy="50" r="35" stroke="black" stroke-width="6" fill="none"/></svg>'
)
ZIGZAG = (
    f'<svg {SVG_NS} viewBox="0 0 120 60"><polyline points="5,55 25,5 45,55 65,5 85,55 105,5" '
    'stroke="black" stroke-width="5" fill="none"/></svg>'
)


def svg_with(body: str, prolog: str = "") -> str:
    return f'{prolog}<svg {SVG_NS} width="50" height="50">{body}</svg>'


def red_png(size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (255, 0, 0) if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def red_pixels(image: Image.Image) -> int:
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return int(((pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)).sum())


@pytest.fixture(scope="module")
def sketch_host() -> anybind.PluginHost:
    """A fresh host from the real entry points, third-party plugins included."""
    return anybind.PluginHost.from_environment()


@pytest.fixture(scope="module")
def space(tiny_clip_dir: Path, sketch_host: anybind.PluginHost) -> anybind.Space:
    return anybind.load_space(f"clip:{tiny_clip_dir}", device="cpu", host=sketch_host)


@pytest.fixture
def drawings(tmp_path: Path) -> tuple[Path, Path]:
    circle, zigzag = tmp_path / "circle.svg", tmp_path / "zigzag.svg"
    circle.write_text(CIRCLE)
    zigzag.write_text(ZIGZAG)
    return circle, zigzag


# -- discovery ----------------------------------------------------------------------------------------------------


def test_sketch_is_discovered_through_entry_points(sketch_host: anybind.PluginHost) -> None:
    assert "sketch" in sketch_host.modalities
    assert sketch_host.modalities.entry("sketch").plugin == "sketch"
    assert sketch_host.modalities.get("sketch").tower == "image"
    info = sketch_host.plugins["sketch"]
    assert (info.distribution, info.status, info.builtin) == ("anybind-sketch", "loaded", False)


def test_cli_lists_sketch_with_its_distribution(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ANYBIND_LOAD_PLUGINS", "ANYBIND_BLOCK_PLUGINS")}
    proc = subprocess.run(
        [sys.executable, "-m", "anybind", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    sketch = [m for m in json.loads(proc.stdout)["modalities"] if m["name"] == "sketch"]
    assert len(sketch) == 1
    assert sketch[0]["distribution"] == "anybind-sketch"
    assert sketch[0]["embeds_as"] == "image"
    assert ".svg" in sketch[0]["extensions"]


# -- decoding and embedding ---------------------------------------------------------------------------------------


def test_decode_renders_a_square_rgb_picture_on_white(drawings: tuple[Path, Path]) -> None:
    image = decode(drawings[0])
    assert image.mode == "RGB" and image.size == (RENDER_SIZE, RENDER_SIZE)
    pixels = np.asarray(image)
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # transparent background composited on white
    assert (pixels.sum(axis=2) < 100).sum() > 500  # the circle's black stroke is drawn
    # The same drawing given as bytes or as markup decodes to the same picture.
    assert np.array_equal(pixels, np.asarray(decode(CIRCLE.encode())))
    assert np.array_equal(pixels, np.asarray(decode(CIRCLE)))


def test_decode_keeps_the_aspect_ratio_and_centres_the_drawing() -> None:
    pixels = np.asarray(decode(f'<svg {SVG_NS} width="200" height="50"><rect width="200" height="50"/></svg>'))
    band = RENDER_SIZE // 4  # 200x50 fitted into 224x224 is 224x56, centred vertically
    top = (RENDER_SIZE - band) // 2
    assert (pixels[top + 2 : top + band - 2] < 50).all()
    assert (pixels[: top - 2] == 255).all() and (pixels[top + band + 2 :] == 255).all()


def test_sketches_embed_through_the_image_tower(space: anybind.Space, drawings: tuple[Path, Path]) -> None:
    assert "sketch" in space.modalities
    vectors = space.embed("sketch", list(drawings))
    assert vectors.shape == (2, space.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)
    # A sketch is exactly its raster embedded as an image.
    as_image = space.embed("image", [decode(drawings[0])])
    np.testing.assert_allclose(as_image, space.embed("sketch", [drawings[0]]), atol=1e-5)


def test_bad_sketches_are_named_and_skipped(space: anybind.Space, drawings: tuple[Path, Path], tmp_path: Path) -> None:
    empty, not_svg, truncated = tmp_path / "empty.svg", tmp_path / "notsvg.svg", tmp_path / "truncated.svg"
    empty.write_bytes(b"")
    not_svg.write_text("hello")
    truncated.write_text(ZIGZAG[: len(ZIGZAG) // 2])
    result = space.try_embed("sketch", [drawings[0], empty, not_svg, truncated])
    assert result.indices == [0]
    assert result.vectors.shape == (1, space.dim)
    assert [error.source for error in result.errors] == [str(empty), str(not_svg), str(truncated)]
    assert "empty" in result.errors[0].reason
    assert "not SVG" in result.errors[1].reason
    assert "malformed" in result.errors[2].reason


def test_inputs_over_the_size_limit_are_refused() -> None:
    huge = svg_with(f"<!-- {'x' * MAX_SVG_BYTES} -->").encode()
    with pytest.raises(DecodeError, match="limit") as caught:
        decode(huge)
    assert caught.value.source == f"<{len(huge)} bytes>"


# -- detection ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        CIRCLE.encode(),
        b"\xef\xbb\xbf" + CIRCLE.encode(),
        CIRCLE.encode("utf-16"),
        b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- drawn by hand -->\n' + CIRCLE.encode(),
        b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "svg11.dtd" [<!ENTITY a "b">]>\n' + CIRCLE.encode(),
    ],
)
def test_sniff_accepts_svg(head: bytes) -> None:
    assert sniff(head)


@pytest.mark.parametrize("head", [b"hello", b"<html><svg/></html>", b"<svgx/>", b" " * 4096, red_png()])
def test_sniff_rejects_other_content(head: bytes) -> None:
    assert not sniff(head)


def test_detect_finds_sketches_by_content_not_name(sketch_host: anybind.PluginHost, tmp_path: Path) -> None:
    modalities = [sketch_host.modalities.get(name) for name in sketch_host.modalities]
    disguised = tmp_path / "drawing.txt"
    disguised.write_text('<?xml version="1.0"?>\n' + CIRCLE)
    assert anybind.detect(disguised, modalities).name == "sketch"
    impostor = tmp_path / "notes.svg"
    impostor.write_text("just some notes\n")
    with pytest.raises(anybind.DecodeError, match=r"notes\.svg: has the sketch extension \.svg but its content is not"):
        anybind.detect(impostor, modalities)


# -- safety: no local files, no network ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '<image href="secret.png" width="50" height="50"/>',
        '<image xlink:href="{secret}" width="50" height="50"/>',
        '<image href="file://{secret}" width="50" height="50"/>',
        '<image href="file:///etc/passwd" width="50" height="50"/>',
        '<image href="https://example.com/x.png" width="50" height="50"/>',
        '<filter id="f"><feImage href="{secret}"/></filter><rect width="50" height="50" filter="url(#f)"/>',
        '<image href="data:image/svg+xml;base64,{nested}" width="50" height="50"/>',
    ],
)
def test_external_references_are_refused(space: anybind.Space, tmp_path: Path, body: str) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(red_png((50, 50)))
    nested = base64.b64encode(svg_with(f'<image href="{secret}" width="50" height="50"/>').encode()).decode()
    drawing = tmp_path / "leaky.svg"
    drawing.write_text(svg_with(body.format(secret=secret, nested=nested)))
    with pytest.raises(DecodeError, match="external reference refused") as caught:
        decode(drawing)
    assert caught.value.source == str(drawing)
    result = space.try_embed("sketch", [drawing])
    assert result.indices == [] and "refused" in result.errors[0].reason


def test_external_entities_are_refused(tmp_path: Path) -> None:
    drawing = tmp_path / "xxe.svg"
    drawing.write_text(svg_with("<text>&x;</text>", '<!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'))
    with pytest.raises(DecodeError, match="entity 'x' refused"):
        decode(drawing)


def test_embedded_data_images_render_within_limits() -> None:
    small = base64.b64encode(red_png()).decode()
    image = decode(svg_with(f'<image href="data:image/png;base64,{small}" width="50" height="50"/>'))
    assert red_pixels(image) == RENDER_SIZE * RENDER_SIZE
    bomb = base64.b64encode(red_png((5000, 5000), mode="1")).decode()
    with pytest.raises(DecodeError, match="pixel limit"):
        decode(svg_with(f'<image href="data:image/png;base64,{bomb}" width="50" height="50"/>'))
