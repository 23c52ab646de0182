"""Command line: ``wsi-mil SUBCOMMAND``. Thin wrappers over the stage functions (``run_tile``, ``run_extract``, ...).

Each subcommand lives in its own module here and registers itself on the shared Typer app.
User errors (:class:`~wsi_mil.errors.WsiMilError`) print one line and exit with status 2; so
does an ``OSError`` no stage turned into one (the path and the cause, never a traceback).
"""

from __future__ import annotations

import importlib
import sys

from wsi_mil.cli._app import app
from wsi_mil.errors import WsiMilError
from wsi_mil.outputs import os_error_line

#: subcommand modules, in the order they appear in ``wsi-mil --help``
COMMAND_MODULES: tuple[str, ...] = ("run", "demo", "synth", "tile", "pretrain", "extract", "train", "predict", "heatmap")
COMMAND_MODULES += ("view",)  # wsi-mil view: the slide viewer
COMMAND_MODULES += ("encoders",)  # wsi-mil encoders: the ready-made encoders

for _name in COMMAND_MODULES:
    importlib.import_module(f"wsi_mil.cli.{_name}")
importlib.import_module("wsi_mil.cli.import_features")  # wsi-mil import-features (a module name has no hyphen)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """ClickException classes: click's own and, in newer typer releases, typer's bundled copy."""
    import click

    found: list[type[BaseException]] = [click.exceptions.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        found.append(TyperClickException)
    except ImportError:
        pass
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsi-mil`` console script; returns the exit status."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except WsiMilError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write (or read) the system refused, not caught by the stage
        print(f"error: {os_error_line(exc, doing='running the command')}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # typer.Exit / click exits carry their own code
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("interrupted: completed outputs are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:  # usage errors from click, or from the click that typer bundles
        if isinstance(exc, _usage_errors()):
            exc.show()  # type: ignore[attr-defined]
            return int(getattr(exc, "exit_code", 2))
        if type(exc).__name__ == "Abort":
            return 130
        raise
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
