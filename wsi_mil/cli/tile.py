"""``wsi-mil tile``: slides -> zarr patch stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console, exit_with, print_batch_summary
from wsi_mil.config import build_config
from wsi_mil.tiling.config import TilingConfig


@app.command()
def tile(
    inputs: Annotated[list[Path], typer.Argument(help="slide files and/or folders (searched recursively)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="job folder; stores go to JOB/patches")],
    target_mpp: Annotated[Optional[float], typer.Option(help="µm per pixel of the tiles [default 0.5]")] = None,
    tile_size: Annotated[Optional[int], typer.Option(help="tile side in pixels [default 224]")] = None,
    stride: Annotated[Optional[int], typer.Option(help="grid step in pixels at target mpp [default: tile size]")] = None,
    min_tissue: Annotated[Optional[float], typer.Option(help="minimum tissue fraction of a tile [default 0.25]")] = None,
    mpp: Annotated[Optional[float], typer.Option(
        help="level-0 µm per pixel of slides whose metadata has no usable mpp (of every slide with --mpp-force)")] = None,
    mpp_table: Annotated[Optional[Path], typer.Option(
        help="CSV slide_id,mpp: per-slide level-0 µm per pixel, used like --mpp and before it")] = None,
    mpp_force: Annotated[bool, typer.Option(
        "--mpp-force", help="use --mpp / --mpp-table even where the slide metadata has a usable mpp")] = False,
    codec: Annotated[Optional[str], typer.Option(help="tile codec: jpeg (default) or zstd (lossless)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file (whole study or its 'tiling' section)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override, e.g. --set tissue.mask_mpp=4")] = None,
    workers: Annotated[Optional[int], typer.Option(help="local worker processes [default: one per core; 0: no Dask]",
                                                   min=0)] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="address of an existing Dask scheduler, tcp://HOST:PORT")] = None,
    overwrite: Annotated[bool, typer.Option(help="redo slides whose store already exists")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Detect tissue and cut slides into tiles at an exact physical scale, one store per slide."""
    from wsi_mil.tiling.stage import run_tile

    cfg = build_config(
        TilingConfig, config, set_, section="tiling", section_optional=True,
        cli=dict(target_mpp=target_mpp, tile_size=tile_size, stride=stride,
                 min_tissue_fraction=min_tissue, mpp=mpp, codec=codec, mpp_table=mpp_table,
                 mpp_force=True if mpp_force else None),
    )
    report = run_tile(inputs, out, cfg, scheduler=scheduler, workers=workers, overwrite=overwrite,
                         progress=progress)
    for line in report.notes():  # warnings (0 tiles, mpp disagreements) and entries that are not slides
        console.print(line, markup=False, soft_wrap=True)
    exit_with(print_batch_summary("tile", report.statuses, report.record_path))
