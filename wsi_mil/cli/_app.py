"""The Typer application shared by every subcommand module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="wsi-mil",
    help="Whole-slide MIL: tile, pretrain (SimCLR), extract, train (WELDON/CHOWDER), predict, heatmap.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
