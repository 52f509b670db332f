"""Meta-tests (after datasette): every hook is documented, in the code and the README, and has a test."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from anybind import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [name for name, value in vars(hookspecs).items() if name.startswith("anybind_") and callable(value)]


def test_hook_list_is_complete():
    assert sorted(HOOKS) == sorted(hookspecs.HOOK_NAMES)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring_describing_its_argument(hook):
    function = getattr(hookspecs, hook)
    doc = inspect.getdoc(function) or ""
    (argument,) = inspect.signature(function).parameters
    assert len(doc) > 80, f"{hook} needs a real docstring"
    assert argument in doc, f"{hook}'s docstring must say what {argument!r} is"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_the_readme(hook):
    assert f"`{hook}(" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    here = Path(__file__).name
    users = [p.name for p in (ROOT / "tests").glob("test_*.py") if p.name != here and f"def {hook}(" in p.read_text()]
    assert users, f"no test implements {hook}"
