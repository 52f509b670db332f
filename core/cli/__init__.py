"""The ``anybind`` command line (typer). ``main()`` is the console script and ``python -m anybind``.

Errors are one line on stderr (``anybind: error: ...``), with the traceback only under ``--debug``.
Machine-readable output (``--json``) goes to stdout; warnings and progress go to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from anybind.errors import AnybindError
from anybind.plugin_host import PluginHost, set_host

from . import bind_cmd, demo_cmd, embed_cmd, index_cmd, plugins_cmd, search_cmd, store_cmds
from .common import root_callback

EXIT_ERROR = 2  # also click's status for usage errors
EXIT_INTERNAL = 3


def build_app() -> typer.Typer:
    """The root app with the built-in commands (plugin commands are added by :func:`main`)."""
    app = typer.Typer(
        name="anybind",
        help="Any-modality retrieval in one image-anchored embedding space.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(root_callback)
    plugins_cmd.register(app)
    embed_cmd.register(app)
    index_cmd.register(app)
    search_cmd.register(app)
    store_cmds.register(app)
    bind_cmd.register(app)
    demo_cmd.register(app)
    return app


def blocked_plugins(argv: Sequence[str]) -> list[str]:
    """Plugin names blocked with ``-p no:NAME`` / ``--plugin no:NAME`` (read before the app is built)."""
    blocked = []
    for index, arg in enumerate(argv):
        value = None
        if arg in ("-p", "--plugin") and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--plugin="):
            value = arg.split("=", 1)[1]
        if value and value.startswith("no:"):
            blocked.append(value[3:])
    return blocked


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 some items failed, 2 error, 3 internal error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    host = PluginHost.from_environment(block=blocked_plugins(args))
    set_host(host)
    app = build_app()
    host.add_commands(app)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="anybind", standalone_mode=False)
    except typer.Abort:
        print("anybind: aborted", file=sys.stderr)
        return 1
    except typer.TyperException as exc:  # usage errors (typer >= 0.29 vendors click under this base)
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print(f"anybind: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_ERROR))
    except AnybindError as exc:
        if debug:
            raise
        print(f"anybind: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            raise
        print(
            f"anybind: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:
        set_host(None)
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
