"""``wsi-mil heatmap``: a MIL run's tile scores -> overlays, QuPath layers and a cohort page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console, exit_with, print_batch_summary
from wsi_mil.config import build_config
from wsi_mil.heatmaps.config import HeatmapConfig


@app.command()
def heatmap(
    run: Annotated[Path, typer.Argument(help="model run folder written by 'wsi-mil train' (models/RUN)")],
    job: Annotated[Path, typer.Argument(help="job folder with patches/ and features/")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output folder: OUT/{slide_id}/ and OUT/index.html")],
    slides: Annotated[Optional[list[str]], typer.Option("--slides", help="slide ids to draw (repeat or comma-separate); default: all")] = None,
    class_name: Annotated[Optional[str], typer.Option("--class", help="class whose scores are shown "
                                                      "[default: class 1 of a binary run, else the predicted class]")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="labels CSV (slide_id,label) to show beside predictions")] = None,
    pixels_per_tile: Annotated[Optional[int], typer.Option(help="overlay.ome.tif pixels per tile [default 4]", min=1)] = None,
    vmin: Annotated[Optional[float], typer.Option(help="score at the bottom of the colour scale [default: slide min]")] = None,
    vmax: Annotated[Optional[float], typer.Option(help="score at the top of the colour scale [default: slide max]")] = None,
    cmap: Annotated[Optional[str], typer.Option(help="matplotlib colour map [default coolwarm]")] = None,
    embed_images: Annotated[Optional[bool], typer.Option("--embed-images/--link-images",
                                                         help="inline overlays in index.html")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file (whole study or its 'heatmap' section)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override, e.g. --set overlay_width=1600")] = None,
    workers: Annotated[Optional[int], typer.Option(help="local worker processes [default: one per core; 0: no Dask]",
                                                   min=0)] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="address of an existing Dask scheduler, tcp://HOST:PORT")] = None,
    overwrite: Annotated[bool, typer.Option(help="redraw slides whose heatmaps already exist")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Draw per-slide heatmaps (PNG, QuPath GeoJSON, pyramidal OME-TIFF, top tiles, CSV) and index.html."""
    from wsi_mil.heatmaps.stage import run_heatmap

    cfg = build_config(
        HeatmapConfig, config, set_, section="heatmap", section_optional=True,
        cli=dict(class_name=class_name, pixels_per_tile=pixels_per_tile, vmin=vmin, vmax=vmax, cmap=cmap,
                 embed_images=embed_images),
    )
    ids = [s for value in (slides or []) for s in value.split(",") if s.strip()] or None
    report = run_heatmap(run, job, out, cfg, slides=ids, labels_csv=labels, workers=workers,
                          scheduler=scheduler, overwrite=overwrite, progress=progress)
    code = print_batch_summary("heatmap", report.statuses, report.record_path)
    console.print(f"cohort page: {report.index_path}")
    exit_with(code)
