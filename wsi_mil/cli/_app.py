"""The Typer application shared by every subcommand module (``-h``/``--help`` everywhere, ``--version``)."""

from __future__ import annotations

from typing import Annotated

import typer

from wsi_mil import __version__

app = typer.Typer(
    name="wsi-mil",
    help="Whole-slide MIL: tile, pretrain (SimCLR), extract, train (WELDON/CHOWDER), predict, heatmap.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wsi-mil {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Whole-slide MIL: tile, pretrain (SimCLR), extract, train (WELDON/CHOWDER), predict, heatmap."""
