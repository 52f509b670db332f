from pathlib import Path

import pytest

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
    assert not sniff(b"\xff\xfe\x00a")
