import codecs
from pathlib import Path

import pytest

from anybind import detect
from anybind.errors import DecodeError
from anybind.plugins.text import MAX_TEXT_FILE_BYTES, decode, sniff


def test_strings_are_the_text_not_paths(tmp_path):
    (tmp_path / "a dog").write_text("file content")
    assert decode("a dog") == "a dog"  # a str is always text, even if a file has that name


def test_paths_and_bytes_are_read(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Violin\nA bowed string instrument.", encoding="utf-8")
    assert decode(doc) == "# Violin\nA bowed string instrument."
    assert decode("\ufeffcafé".encode()) == "café"  # BOM dropped


@pytest.mark.parametrize("item", ["", "   \n"])
def test_empty_text_is_an_error(item):
    with pytest.raises(DecodeError, match="empty text"):
        decode(item)


def test_invalid_utf8_file_is_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DecodeError) as info:
        decode(bad)
    assert info.value.source == str(bad) and "not UTF-8" in info.value.reason


def test_huge_text_file_is_refused(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as handle:
        handle.truncate(MAX_TEXT_FILE_BYTES + 1)
    with pytest.raises(DecodeError, match="over the"):
        decode(Path(big))


def test_wrong_type():
    with pytest.raises(DecodeError, match="text items are str"):
        decode(3.5)


def test_sniff():
    assert sniff(b"plain words")
    assert sniff(("x" * 10 + "é").encode()[:-1])  # multi-byte char cut at the end of the head
    assert not sniff(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert not sniff(b"\xff\xfe\x00\xd8a\x00")  # a UTF-16 mark, then a lone surrogate: not text
    assert not sniff(b"\xff\xfe\x01\x00\x02\x00")  # UTF-16 control characters: not text
    assert not sniff(b"a\x00b\x00")  # UTF-16 without a mark is not sniffed as text


TEXT = "Hello wörld, a caption about a dog 🐕\n"
MARKED = ["utf-16", "utf-16-be", "utf-32", "utf-32-be", "utf-8-sig"]


def _marked(text: str, encoding: str) -> bytes:
    """``text`` in ``encoding`` with its byte-order mark (Python writes one only for utf-16/utf-32/utf-8-sig)."""
    marks = {"utf-16-be": codecs.BOM_UTF16_BE, "utf-32-be": codecs.BOM_UTF32_BE}
    return marks.get(encoding, b"") + text.encode(encoding)


@pytest.mark.parametrize("encoding", MARKED)
def test_text_with_a_byte_order_mark_is_sniffed_and_decoded(tmp_path, encoding):
    data = _marked(TEXT * 200, encoding)
    assert sniff(data[:4096]) and all(sniff(data[:n]) for n in range(4, 64))  # characters cut at the end too
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    assert decode(path) == TEXT * 200 and decode(data) == TEXT * 200  # the mark is dropped


@pytest.mark.parametrize("encoding", MARKED)
@pytest.mark.parametrize("size", [1, 5, 200])
def test_utf16_text_files_are_detected_as_text_not_audio(host, tmp_path, encoding, size):
    # UTF-16-LE's mark FF FE reads as an MPEG audio frame header: short files used to be sniffed as MP3s
    modalities = [entry.value for entry in host.modalities.entries()]
    for name in ("notes.txt", "README"):
        path = tmp_path / name
        path.write_bytes(_marked(TEXT * size, encoding))
        assert detect(path, modalities).name == "text", (name, encoding, size)


def test_utf16_text_named_like_audio_is_still_an_error(host, tmp_path):
    modalities = [entry.value for entry in host.modalities.entries()]
    path = tmp_path / "notes.mp3"
    path.write_bytes(TEXT.encode("utf-16"))
    with pytest.raises(DecodeError, match=r"has the audio extension \.mp3 but its content is not audio data; it looks"):
        detect(path, modalities)


def test_invalid_utf16_is_named(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(codecs.BOM_UTF16_LE + "ok".encode("utf-16-le") + b"\x00\xdc")  # a lone low surrogate
    with pytest.raises(DecodeError) as info:
        decode(bad)
    assert info.value.source == str(bad) and info.value.reason == "not UTF-16 text (invalid byte at offset 6)"


def test_the_modality_is_textual_and_signed(host):
    modality = host.modalities.get("text")
    assert modality.textual and modality.fallback and codecs.BOM_UTF16_LE in modality.signatures
