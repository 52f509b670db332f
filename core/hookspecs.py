"""The hooks a plugin may implement. Project name and entry-point group: ``anybind``.

A plugin is a module (or object) listed under the ``anybind`` entry-point group of its distribution::

    [project.entry-points.anybind]
    sketch = "anybind_sketch"

and decorated with :data:`hookimpl`. Each registration hook receives a ``register`` callback that is
bound to the calling plugin: the host validates what it is given, owns names and aliases, and rejects a
name that another plugin already took (the error names both plugins). A hook that raises is reported on
stderr with the plugin's name, and everything that plugin registered in that hook is discarded.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "anybind"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def anybind_modalities(register: Any) -> None:
    """Register modalities.

    ``register(modality)`` takes one :class:`anybind.Modality`: its tag (``name``), ``decode`` (one input
    -> decoded value), optional ``sniff`` (first bytes of a file -> bool), ``extensions``, and ``embeds_as``
    (the encoder tower its decoded values go through, e.g. ``"image"`` for a modality rasterised to
    pictures; defaults to its own name). A time-based modality gives ``segment(item, plan)``; ``companions``
    maps another modality's name to a segmenter of a stream inside the same file (a video's sound track:
    ``{"audio": audio_track}``), whose segments ``add_files(audio_tracks=True)`` stores as that modality;
    ``signatures`` are byte prefixes (e.g. byte-order marks) that make this modality's sniffer answer first;
    ``textual=True`` means a ``str`` input is the content itself, not a path.
    """


@hookspec
def anybind_encoders(register: Any) -> None:
    """Register encoder factories by name.

    ``register(name, factory, *, aliases=(), description="")``: ``factory(ref, options)`` receives the
    part of a space spec after ``name:`` (a hub id or a local directory) and an
    :class:`anybind.EncoderOptions`, and returns an :class:`anybind.Encoder`. Import heavy libraries inside
    the factory, not at module import, so that listing plugins stays fast.
    """


@hookspec
def anybind_spaces(register: Any) -> None:
    """Register named space presets.

    ``register(name, space, *, aliases=(), description="")``: ``space`` is a spec string
    (``"clip:openai/clip-vit-base-patch32"``), a path to a TOML space file, or an
    :class:`anybind.SpaceConfig`. ``anybind.load_space(name)`` then resolves the preset.
    """


@hookspec
def anybind_commands(app: Any) -> None:
    """Add CLI commands: ``app`` is the root :class:`typer.Typer`; decorate functions with ``@app.command()``.

    Command names must not clash with built-in ones; a plugin whose hook raises is skipped with a warning.
    """


HOOK_NAMES = ("anybind_modalities", "anybind_encoders", "anybind_spaces", "anybind_commands")
