"""``wsi-mil import-features``: TRIDENT / CLAM / STAMP feature files -> our feature-file contract."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console, exit_with, print_batch_summary


@app.command("import-features")
def import_features(
    src: Annotated[Path, typer.Argument(help="folder of TRIDENT, CLAM or STAMP .h5 files (or one file)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="JOB/features/ENCODER_ID: where the converted files go")],
    fmt: Annotated[str, typer.Option("--format", help="auto, trident, clam or stamp")] = "auto",
    encoder_id: Annotated[Optional[str], typer.Option(
        "--encoder-id", help="encoder id recorded in the files (default: the -o folder's name, which it must equal)")] = None,
    mpp: Annotated[Optional[float], typer.Option(
        help="level-0 µm per pixel of the slides (STAMP's coordinates are in µm)")] = None,
    mpp_table: Annotated[Optional[Path], typer.Option(help="CSV slide_id,mpp: per-slide level-0 µm per pixel (STAMP)")] = None,
    overwrite: Annotated[bool, typer.Option(help="redo files whose converted copy is already valid")] = False,
) -> None:
    """Convert peers' per-slide feature files so that train/predict read them (provenance recorded)."""
    from wsi_mil.extract.importer import import_features as run_import
    from wsi_mil.tiling.mpp import read_mpp_table

    table = read_mpp_table(mpp_table) if mpp_table is not None else None
    report = run_import(src, out, fmt=fmt, encoder_id=encoder_id, mpp=mpp, mpp_of=table, overwrite=overwrite)
    console.print(f"encoder id: {report.encoder_id}; features: {report.out_dir}")
    exit_with(print_batch_summary("import-features", report.statuses, report.record_path or "-"))
