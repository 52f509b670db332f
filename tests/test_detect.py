"""Modality detection: content sniffing first, extension second."""

import pytest

from anybind import detect
from anybind.errors import DecodeError


def mods(host):
    return [host.modalities.get(name) for name in host.modalities]


def test_content_wins_over_extension(host, image_files, tmp_path):
    assert detect(image_files["good"], mods(host)).name == "image"
    png_named_txt = tmp_path / "picture.txt"
    png_named_txt.write_bytes(image_files["good"].read_bytes())
    assert detect(png_named_txt, mods(host)).name == "image"


def test_text_named_like_an_image_is_an_error_not_text(host, image_files):
    message = r"notes\.jpg: has the image extension \.jpg but its content is not image data; it looks like text"
    with pytest.raises(DecodeError, match=message):
        detect(image_files["impostor"], mods(host))


def test_text_without_a_claimed_extension_is_text(host, tmp_path):
    for name in ("notes.txt", "README", "caption.md"):
        (tmp_path / name).write_text("a caption about a dog\n")
        assert detect(tmp_path / name, mods(host)).name == "text"


def test_corrupt_image_is_still_an_image(host, image_files):
    # recognised by its magic bytes; decoding then reports the corruption
    assert detect(image_files["corrupt"], mods(host)).name == "image"


def test_unrecognised_and_empty_files(host, tmp_path, image_files):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02\xff" * 10)
    expected = r"blob\.bin: content not recognised as any modality \(audio, image, video, text\)"
    with pytest.raises(DecodeError, match=expected):
        detect(binary, mods(host))
    with pytest.raises(DecodeError, match=r"empty\.png: empty file"):
        detect(image_files["empty"], mods(host))
    with pytest.raises(DecodeError, match="no such file"):
        detect(tmp_path / "missing.png", mods(host))
    with pytest.raises(DecodeError, match="is a directory"):
        detect(tmp_path, mods(host))
