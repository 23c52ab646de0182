"""``wsi-mil predict``: a model run + feature files -> slide probabilities and per-tile scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console, device_name


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="model run folder written by 'wsi-mil train'")],
    features_dir: Annotated[Path, typer.Argument(help="folder of feature files from the run's encoder")],
    out: Annotated[Path, typer.Option("-o", "--out", help="slide predictions CSV; tile scores go to OUT.tiles/")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda", callback=device_name)] = "auto",
    quiet: Annotated[bool, typer.Option(help="print the summary only")] = False,
    progress: Annotated[bool, typer.Option(help="print each slide as it is predicted (--no-progress: the summary only)")] = True,
) -> None:
    """Predict every slide with the run's final model; write OUT.csv and OUT.tiles/{slide_id}.csv."""
    from wsi_mil.mil.stage import run_predict

    log = (lambda s: None) if quiet or not progress else (lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))
    summary = run_predict(run, features_dir, out, device=device, log=log)
    console.print(f"[bold]predict[/bold]: {summary.n_slides} slides -> {summary.out_csv}; tiles: {summary.tiles_dir}")
    for w in summary.warnings:
        console.print(f"warning: {w}", markup=False)
    for st in summary.failed:
        console.print(f"failed: {st.slide_id}: {st.reason}", markup=False, soft_wrap=True)
    if summary.report is not None and summary.failed:
        console.print(f"{len(summary.failed)} slide(s) failed; see {summary.report.record_path}", markup=False)
