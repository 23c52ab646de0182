"""``wsi-mil demo -o DIR``: synthetic cohort -> the whole pipeline -> measured AUC and localisation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console, exit_with
from wsi_mil.demo import DemoOptions
from wsi_mil.errors import WsiMilError

_D = DemoOptions()


def _log(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="demo folder: OUT/cohort (slides), OUT/job (outputs)")],
    slides: Annotated[int, typer.Option(help="synthetic slides (half positive)", min=4)] = _D.slides,
    size: Annotated[int, typer.Option(help="slide width and height in pixels at 0.5 um/px", min=512)] = _D.size,
    pretrain_epochs: Annotated[int, typer.Option(help="SimCLR epochs over the tiles", min=1)] = _D.pretrain_epochs,
    arch: Annotated[str, typer.Option(help="timm architecture of the encoder trained with SimCLR")] = _D.arch,
    folds: Annotated[int, typer.Option(help="cross-validation folds", min=2)] = _D.folds,
    seed: Annotated[int, typer.Option(help="seed of the cohort and of training", min=0)] = _D.seed,
    workers: Annotated[Optional[int], typer.Option(help="worker processes for tile/heatmap (default: one per core; "
                                                   "0: no Dask)", min=0)] = None,
    torch_threads: Annotated[int, typer.Option(help="torch threads for SimCLR, extraction and training", min=1)] = _D.torch_threads,
    progress: Annotated[bool, typer.Option(help="show progress of each stage")] = True,
) -> None:
    """Run the whole pipeline on a synthetic cohort with planted lesions (2 CPU cores: a few minutes).

    Prints the cross-validated slide AUC and how well the heatmaps find the planted lesions.
    Running it again reuses what is done.
    """
    from wsi_mil.demo import run_demo
    from wsi_mil.pipeline import format_summary, stopped_report

    opts = DemoOptions(slides=slides, size=size, pretrain_epochs=pretrain_epochs, arch=arch, folds=folds,
                       seed=seed, workers=workers, torch_threads=torch_threads)
    try:
        result = run_demo(out, opts, progress=progress, log=_log)
    except WsiMilError as exc:  # the summary (earlier failures and their reasons) first, then the error line
        stopped = stopped_report(exc)
        if stopped is not None:
            _log(format_summary(stopped))
        raise
    _log(format_summary(result.report))
    _log("")
    _log("demo results (measured on this run):")
    for line in result.lines():
        _log(f"  {line}")
    if result.report.index_html is not None:
        _log(f"open {result.report.index_html} in a browser to see the heatmaps")
    exit_with(result.report.exit_code)
