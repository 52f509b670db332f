"""``python -m anybind``."""

from anybind.cli import run

run()
