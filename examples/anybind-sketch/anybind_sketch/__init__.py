"""anybind plugin: the ``sketch`` modality, SVG line drawings rasterised by resvg and embedded as images.

A sketch is decoded to a ``RENDER_SIZE`` x ``RENDER_SIZE`` RGB picture: the drawing is fitted inside the
square keeping its aspect ratio, centred, and composited on white; the space's image tower embeds it.

Safety: the SVG is checked with expat before resvg sees it. Only ``#fragment`` links and ``data:`` URIs of
PNG/JPEG/GIF/WebP images (at most ``MAX_EMBEDDED_PIXELS``) may be referenced: any other ``href`` (a local
file, a ``file:`` or web URL, a nested SVG) is refused, as are external and parameter XML entities, so a
drawing cannot make the renderer read local files. resvg never uses the network. Input is capped at
``MAX_SVG_BYTES``.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from typing import Any
from urllib.parse import unquote_to_bytes
from xml.parsers import expat

import resvg_py
from PIL import Image

from anybind import Modality, hookimpl
from anybind.errors import DecodeError
from anybind.modality import read_file

MAX_SVG_BYTES = 5 * 1024 * 1024
MAX_EMBEDDED_PIXELS = 4096 * 4096
RENDER_SIZE = 224
EXTENSIONS = (".svg",)
WHITE = (255, 255, 255, 255)
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SVG_ROOT = re.compile(r"<(?:[A-Za-z_][\w.-]*:)?svg[\s/>]")
PROLOG_ENDS = {"<?": re.compile(r"\?>"), "<!--": re.compile(r"-->"), "<!DOCTYPE": re.compile(r"[\[>]")}
SUBSET_END = re.compile(r"\]\s*>")
RASTER_DATA_URI = re.compile(r"data:image/(?:png|jpeg|jpg|gif|webp)[;,]")


def _text(data: bytes, errors: str = "strict") -> str:
    """SVG bytes -> str: UTF-16 when a UTF-16 byte-order mark says so, else UTF-8 (BOM optional)."""
    return data.decode("utf-16" if data.startswith(UTF16_BOMS) else "utf-8-sig", errors)


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes are SVG: a prolog (whitespace, ``<?xml ...?>``, comments, a DOCTYPE), then
    an ``<svg`` root element. A linear scan: hostile heads cannot make it backtrack."""
    text, pos = _text(head, "replace"), 0
    while True:
        pos = len(text) - len(text[pos:].lstrip())
        opener = next((key for key in PROLOG_ENDS if text.startswith(key, pos)), None)
        if opener is None:
            return SVG_ROOT.match(text, pos) is not None
        end = PROLOG_ENDS[opener].search(text, pos + len(opener))
        if end is not None and end.group() == "[":  # a DOCTYPE's internal subset runs to "]>"
            end = SUBSET_END.search(text, end.end())
        if end is None:
            return False
        pos = end.end()


def _check_embedded_image(uri: str, label: str) -> None:
    """Refuse a ``data:`` image that cannot be read or is too large to decode safely."""
    header, _, payload = uri.partition(",")
    try:
        raw = base64.b64decode(payload) if header.endswith(";base64") else unquote_to_bytes(payload)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
        raise DecodeError(label, f"embedded data: image is unreadable ({exc})") from None
    if width * height > MAX_EMBEDDED_PIXELS:
        raise DecodeError(label, f"embedded data: image of {width}x{height} pixels is over the pixel limit")


def check_svg(text: str, label: str) -> None:
    """Parse with expat; :class:`DecodeError` for malformed XML, a non-SVG root or a forbidden reference."""
    parser = expat.ParserCreate(encoding="utf-8", namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    elements = 0

    def start(name: str, attributes: dict[str, str]) -> None:
        nonlocal elements
        elements += 1
        tag = name.rpartition(" ")[2]
        if elements == 1 and tag != "svg":
            raise DecodeError(label, f"not SVG: the root element is <{tag}>, not <svg>")
        for key, value in attributes.items():
            if key.rpartition(" ")[2] != "href" or tag == "a" or value.startswith("#"):
                continue  # <a href> is a hyperlink, which a renderer never follows
            if not RASTER_DATA_URI.match(value):
                raise DecodeError(
                    label,
                    f"external reference refused: <{tag} href={value[:80]!r}> (only #fragment links and "
                    f"data:image/png|jpeg|gif|webp URIs are allowed)",
                )
            _check_embedded_image(value, label)

    def entity(name: str, is_parameter: bool, value: str | None, *_: Any) -> None:
        if is_parameter or value is None:
            raise DecodeError(label, f"external or parameter XML entity {name!r} refused")

    def skipped(name: str, is_parameter: bool) -> None:
        raise DecodeError(label, f"undeclared XML entity {name!r} refused")

    parser.StartElementHandler = start
    parser.EntityDeclHandler = entity
    parser.SkippedEntityHandler = skipped
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise DecodeError(label, f"malformed XML (truncated or not well-formed): {exc}") from None


def render(data: bytes, label: str) -> Image.Image:
    """Checked SVG bytes -> ``RENDER_SIZE`` square RGB image, the drawing centred on white."""
    if len(data) > MAX_SVG_BYTES:
        raise DecodeError(label, f"SVG is {len(data)} bytes, over the {MAX_SVG_BYTES}-byte limit")
    if not sniff(data[:4096]):
        raise DecodeError(label, f"not SVG: the content does not start with an <svg> element ({data[:20]!r})")
    try:
        text = _text(data)
    except UnicodeDecodeError as exc:
        raise DecodeError(label, f"not SVG text: invalid UTF-8/UTF-16 at byte {exc.start}") from None
    check_svg(text, label)
    try:
        png = resvg_py.svg_to_bytes(svg_string=text, width=RENDER_SIZE, height=RENDER_SIZE)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # ValueError for bad SVG; a Rust panic arrives as pyo3's PanicException
        raise DecodeError(label, f"cannot render SVG: {exc}") from None
    with Image.open(io.BytesIO(png)) as raster:
        if max(raster.size) > RENDER_SIZE:  # resvg fits the drawing inside the requested box
            raise DecodeError(label, f"rendered {raster.size} pixels, over the {RENDER_SIZE}-pixel limit")
        drawing = raster.convert("RGBA")
    canvas = Image.new("RGBA", (RENDER_SIZE, RENDER_SIZE), WHITE)
    canvas.alpha_composite(drawing, ((RENDER_SIZE - drawing.width) // 2, (RENDER_SIZE - drawing.height) // 2))
    return canvas.convert("RGB")


def _read(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, or :class:`DecodeError` naming it (missing, a directory, empty, over the cap)."""
    return read_file(path, max_bytes=MAX_SVG_BYTES)


def decode(item: Any) -> Image.Image:
    """A path, SVG bytes, or a str of SVG markup (starting with ``<``) -> RGB :class:`PIL.Image.Image`."""
    if isinstance(item, str) and item.lstrip("\ufeff \t\r\n").startswith("<"):
        return render(item.encode("utf-8"), f"<SVG markup, {len(item)} chars>")
    if isinstance(item, (str, os.PathLike)):
        return render(_read(item), os.fspath(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        label = f"<{len(item)} bytes>"
        if len(item) == 0:
            raise DecodeError(label, "empty input (0 bytes)")
        return render(bytes(item), label)
    raise DecodeError(f"<{type(item).__name__}>", "sketches are SVG file paths, SVG bytes or SVG markup strings")


@hookimpl
def anybind_modalities(register: Any) -> None:
    register(
        Modality(
            name="sketch",
            decode=decode,
            sniff=sniff,
            extensions=EXTENSIONS,
            embeds_as="image",
            description=f"SVG line drawings rasterised (resvg) to {RENDER_SIZE} px RGB on white; paths, bytes, markup",
        )
    )
