"""The built-in image modality: inputs it accepts, what it returns, and the errors it names."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from anybind.errors import DecodeError
from anybind.plugins.image import decode, sniff


def test_paths_bytes_pil_and_arrays_decode_to_the_same_rgb(image_files):
    path = image_files["good"]
    from_path = decode(path)
    assert from_path.mode == "RGB" and from_path.size == (48, 40)
    assert np.array_equal(np.asarray(decode(str(path))), np.asarray(from_path))
    assert np.array_equal(np.asarray(decode(path.read_bytes())), np.asarray(from_path))
    array = np.asarray(from_path)
    assert np.array_equal(np.asarray(decode(array)), array)
    assert np.array_equal(np.asarray(decode(array.astype(np.float32) / 255)), array)
    assert np.array_equal(np.asarray(decode(Image.fromarray(array))), array)


def test_transparency_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    rgba[0, 0] = (255, 0, 0, 255)  # one opaque red pixel
    out = np.asarray(decode(rgba))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_grayscale_array_becomes_rgb():
    out = decode(np.full((5, 6), 7, dtype=np.uint8))
    assert out.mode == "RGB" and np.asarray(out)[0, 0].tolist() == [7, 7, 7]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("corrupt", "corrupt header"),
        ("empty", "empty file (0 bytes)"),
        ("truncated", "corrupt or truncated"),
        ("impostor", "not a readable image"),
    ],
)
def test_bad_files_raise_decode_errors_naming_the_file(image_files, key, reason):
    path = image_files[key]
    with pytest.raises(DecodeError) as info:
        decode(path)
    assert info.value.source == str(path)
    assert reason in info.value.reason


def test_missing_file_is_named():
    with pytest.raises(DecodeError, match=r"/no/such\.png: no such file"):
        decode("/no/such.png")


def test_huge_file_is_refused_before_reading(monkeypatch, image_files):
    monkeypatch.setattr("anybind.plugins.image.MAX_IMAGE_FILE_BYTES", 100)
    with pytest.raises(DecodeError, match=r"good\.png: file is \d+ bytes, over the 100-byte limit"):
        decode(image_files["good"])


def test_decompression_bomb_is_refused(monkeypatch, image_files):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 48x40 picture is now "huge"
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode(image_files["good"])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 2), dtype=np.uint8), "not an image"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "not an image"),
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN"),
        (np.full((4, 4, 3), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (np.zeros((4, 4, 3), dtype=np.int64), "dtype int64"),
    ],
)
def test_bad_arrays(array, message):
    with pytest.raises(DecodeError, match=message):
        decode(array)


def test_wrong_type_names_the_type():
    with pytest.raises(DecodeError, match="<int>: images are paths, bytes"):
        decode(42)


def test_sniff_by_content():
    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, format="PNG")
    webp = io.BytesIO()
    Image.new("RGB", (2, 2)).save(webp, format="WEBP")
    assert sniff(png.getvalue()[:64])
    assert sniff(webp.getvalue()[:64])
    assert not sniff(b"hello world")
    assert not sniff(b"")
