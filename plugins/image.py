"""The ``image`` modality: files (sniffed by magic bytes), bytes, PIL images and arrays -> RGB PIL images."""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from anybind import Modality, hookimpl
from anybind.errors import DecodeError
from anybind.modality import read_file

# Magic numbers of the formats Pillow decodes that people search: PNG, JPEG, GIF, BMP, TIFF, WebP.
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")
WHITE = (255, 255, 255)
MAX_IMAGE_FILE_BYTES = 512 * 1024 * 1024  # pixel count is limited separately (decompression bombs)


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes are an image format this modality decodes."""
    return head.startswith(MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, EXIF orientation applied, transparency composited over white (as a page would show it)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(data: str | os.PathLike[str] | bytes, label: str) -> Image.Image:
    """Open and fully decode an image file or bytes; :class:`DecodeError` naming ``label`` on any failure."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise DecodeError(label, "empty input (0 bytes)")
        source = io.BytesIO(bytes(data))
    else:
        source = io.BytesIO(read_file(data, max_bytes=MAX_IMAGE_FILE_BYTES))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(label, f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError(label, "not a readable image (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(label, f"corrupt or truncated image data: {exc}") from None


def from_array(array: np.ndarray, label: str) -> Image.Image:
    """``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` uint8, or float in [0, 1] -> RGB image."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)) or 0 in array.shape:
        raise DecodeError(label, f"array of shape {array.shape} is not an image (want HxW, HxWx3 or HxWx4)")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DecodeError(label, "array holds NaN or infinite values")
        if array.min() < 0 or array.max() > 1:
            raise DecodeError(label, "float image arrays must lie in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DecodeError(label, f"array dtype {array.dtype} is not an image dtype (want uint8 or float)")
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def decode(item: Any) -> Image.Image:
    """A path, bytes, PIL image or array -> RGB :class:`PIL.Image.Image`."""
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        return from_array(item, f"<array {item.shape}>")
    if isinstance(item, (str, os.PathLike)):
        return open_image(item, os.fspath(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return open_image(item, f"<{len(item)} bytes>")
    raise DecodeError(f"<{type(item).__name__}>", "images are paths, bytes, PIL images or numpy arrays")


@hookimpl
def anybind_modalities(register: Any) -> None:
    register(
        Modality(
            name="image",
            decode=decode,
            sniff=sniff,
            extensions=EXTENSIONS,
            description="Photos and pictures (PNG, JPEG, GIF, BMP, TIFF, WebP); paths, bytes, PIL images, arrays",
        )
    )
