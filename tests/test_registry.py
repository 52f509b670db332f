import pytest

from anybind.errors import DuplicateNameError, RegistrationError, UnknownNameError
from anybind.registry import Registry


def test_add_get_alias_and_listing():
    reg: Registry[int] = Registry("encoder")
    reg.add("clip", 1, plugin="p1", aliases=["openclip"], description="d")
    reg.add("siglip", 2, plugin="p2")
    assert reg.get("clip") == 1
    assert reg.get("openclip") == 1
    assert reg.entry("openclip").name == "clip"
    assert list(reg) == ["clip", "siglip"]
    assert len(reg) == 2
    assert reg.by_plugin("p1") == ["clip"]
    assert "openclip" in reg and "nope" not in reg


def test_duplicate_names_both_plugins():
    reg: Registry[int] = Registry("modality")
    reg.add("image", 1, plugin="builtin-image")
    with pytest.raises(DuplicateNameError) as info:
        reg.add("image", 2, plugin="other-image")
    message = str(info.value)
    assert "builtin-image" in message and "other-image" in message and "'image'" in message
    assert reg.get("image") == 1


def test_alias_clash_is_a_duplicate():
    reg: Registry[int] = Registry("encoder")
    reg.add("clip", 1, plugin="a", aliases=["c"])
    with pytest.raises(DuplicateNameError, match="'c' registered twice"):
        reg.add("other", 2, plugin="b", aliases=["c"])
    assert "other" not in reg


def test_unknown_name_lists_what_exists():
    reg: Registry[int] = Registry("modality", hint="install the plugin")
    reg.add("text", 1, plugin="t")
    reg.add("image", 2, plugin="i")
    with pytest.raises(UnknownNameError) as info:
        reg.get("audio")
    assert str(info.value) == "unknown modality 'audio'; available: image, text. install the plugin"
    assert isinstance(info.value, LookupError)


@pytest.mark.parametrize("bad", ["", "Image", "1x", "a b", None, 3])
def test_invalid_names_are_refused_naming_the_plugin(bad):
    reg: Registry[int] = Registry("modality")
    with pytest.raises(RegistrationError, match="plugin 'p'"):
        reg.add(bad, 1, plugin="p")


def test_remove_frees_name_and_aliases():
    reg: Registry[int] = Registry("space")
    reg.add("mini", 1, plugin="p", aliases=["m"])
    reg.remove("mini")
    assert "mini" not in reg and "m" not in reg
    reg.add("m", 2, plugin="q")
    assert reg.get("m") == 2
