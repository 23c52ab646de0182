"""``wsi-mil run STUDY.yaml``: every stage of a study, resumable, with a final summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console, exit_with
from wsi_mil.errors import WsiMilError
from wsi_mil.study import load_study, study_to_yaml


def _log(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _mpp_overrides(mpp: float | None, mpp_table: Path | None, mpp_force: bool) -> list[str]:
    """``--mpp``, ``--mpp-table``, ``--mpp-force`` as ``--set tiling.*`` overrides (values JSON-quoted YAML)."""
    out = [f"tiling.mpp={json.dumps(mpp)}"] if mpp is not None else []
    if mpp_table is not None:
        out.append(f"tiling.mpp_table={json.dumps(str(mpp_table.expanduser().resolve()))}")
    return out + (["tiling.mpp_force=true"] if mpp_force else [])


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="study YAML (see configs/ and the README)")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="override a key, e.g. --set tiling.target_mpp=0.25 --set train.head=weldon")] = None,
    scheduler: Annotated[Optional[str], typer.Option(
        help="existing Dask scheduler tcp://HOST:PORT for tile, heatmap (and extract unless --extract-scheduler)")] = None,
    extract_scheduler: Annotated[Optional[str], typer.Option(
        help="Dask scheduler whose workers have GPUs, for extraction (default: --scheduler, else this process)")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="local worker processes for tile and heatmap (default: one per core; 0: no Dask)", min=0)] = None,
    stop_after: Annotated[Optional[str], typer.Option(
        help="stop after this stage: tile, pretrain, extract, train, predict or heatmap")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="validate the config, the inputs (slides, labels, weights) and the outputs (job folder, "
                        "existing tiling), print the study, run nothing")] = False,
    progress: Annotated[bool, typer.Option(help="show progress of each stage")] = True,
    mpp: Annotated[Optional[float], typer.Option(
        help="tiling.mpp: level-0 µm per pixel of slides without usable mpp metadata (of all with --mpp-force)")] = None,
    mpp_table: Annotated[Optional[Path], typer.Option(
        help="tiling.mpp_table: CSV slide_id,mpp of per-slide level-0 µm per pixel")] = None,
    mpp_force: Annotated[bool, typer.Option(
        "--mpp-force", help="tiling.mpp_force: --mpp / --mpp-table replace usable slide metadata too")] = False,
) -> None:
    """Run a whole study from slides to heatmaps: tile, pretrain (SimCLR studies), extract, train, predict, heatmap.

    Every stage skips what is already done and valid: run the same command again after an
    interruption, or after adding slides, and only the missing work is done.
    """
    from wsi_mil.pipeline import format_summary, preflight, run_study, stopped_report

    set_ = list(set_ or []) + _mpp_overrides(mpp, mpp_table, mpp_force)
    cfg = load_study(config, set_)
    if check:
        slides = [p.expanduser().resolve() for p in cfg.slides]
        found, warnings = preflight(cfg, slides, cfg.labels.expanduser().resolve())
        console.print(study_to_yaml(cfg), markup=False, highlight=False)
        for w in warnings:
            _log(f"warning: {w}")
        _log(f"ok: {config} is a valid study; {len(found)} slides found")
        return
    try:
        report = run_study(cfg, scheduler=scheduler, workers=workers, extract_scheduler=extract_scheduler,
                           progress=progress, log=_log, stop_after=stop_after)
    except WsiMilError as exc:  # the summary (earlier failures and their reasons) first, then the error line
        stopped = stopped_report(exc)
        if stopped is not None:
            _log(format_summary(stopped))
        raise
    _log(format_summary(report))
    exit_with(report.exit_code)
