"""``wsi-mil train``: feature files + slide labels -> cross-validated MIL head (a model run folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console
from wsi_mil.config import build_config
from wsi_mil.errors import ConfigError
from wsi_mil.mil.config import DEFAULT_HEAD, TrainConfig
from wsi_mil.mil.heads import heads_help


@app.command()
def train(
    features_dir: Annotated[Path, typer.Argument(help="folder of feature files (JOB/features/{encoder_id})")],
    labels: Annotated[Path, typer.Option("--labels", "-l", help="labels CSV: slide_id,label[,case_id][,split][,site] "
                                                         "(survival: time,event; regression: target)")],
    out: Annotated[Optional[Path], typer.Option(
        "-o", "--out", help="run folder to write (e.g. models/chowder-1); required unless --check")] = None,
    task: Annotated[Optional[str], typer.Option(
        help="classification (labels: label), survival (time,event; Cox loss) or regression (target) "
             "[default classification]")] = None,
    head: Annotated[Optional[str], typer.Option(help=f"MIL head: {heads_help()} [default {DEFAULT_HEAD}]")] = None,
    folds: Annotated[Optional[int], typer.Option(help="cross-validation folds K (at least 2) [default 5]", min=2)] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file (whole study or its 'train' section)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda [default auto]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed [default 0]", min=0)] = None,
    tune: Annotated[Optional[str], typer.Option(
        help="on: choose the head's settings by nested cross-validation (Optuna); off: use them as given "
             "[default on]")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="override, e.g. --set head_options.r=10 --set tiles_per_bag=null")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
    quiet: Annotated[bool, typer.Option(help="print the summary only")] = False,
    progress: Annotated[bool, typer.Option(help="print each fold as it ends (--no-progress: the summary only)")] = True,
    check: Annotated[bool, typer.Option(
        "--check", help="validate the config, the labels (with the site confounder warning), their feature files "
                        "and the cross-validation plan; train nothing")] = False,
) -> None:
    """Cross-validate a MIL head (grouped by case_id), then train the final model on all training slides."""
    from wsi_mil.mil.stage import check_training, run_train  # torch: loaded when a command runs, not for --help

    cfg = build_config(TrainConfig, config, set_, section="train", section_optional=True,
                       cli=dict(task=task, head=head, folds=folds, device=device, seed=seed, tune=tune))
    if check:
        found = check_training(features_dir, labels, cfg)
        for w in found.warnings:
            console.print(f"warning: {w}", markup=False)
        console.print(f"ok: {found.n_train} training and {found.n_test} test slides, {found.encoder_id} "
                      f"({found.embed_dim}-d), {cfg.cv_name} cross-validation of {cfg.head}", markup=False)
        return
    if out is None:
        raise ConfigError("train: -o/--out is required (the run folder to write), unless --check")
    log = (lambda s: None) if quiet or not progress else (lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))
    summary = run_train(features_dir, labels, out, cfg, log=log, overwrite=overwrite)
    oof = summary.metrics["out_of_fold"]
    m, ci = oof["metrics"], oof["ci"] or {}
    parts = []
    keys = {"survival": ("c_index", "c_index_uno", "logrank_p_median"),
            "regression": ("mae", "pearson_r", "spearman_r")}.get(cfg.task, ("auc", "accuracy", "balanced_accuracy"))
    for k in keys:
        v = m.get(k)
        band = ci.get(k)
        parts.append(f"{k} {'n/a' if v is None else f'{v:.3f}'}"
                     + (f" [{band[0]:.3f}, {band[1]:.3f}]" if band else ""))
    console.print(f"[bold]train[/bold] {cfg.head}: out-of-fold ({oof['n_slides']} slides) " + ", ".join(parts), soft_wrap=True)
    per_site = summary.metrics.get("per_site")
    if per_site:
        for site, sm in per_site["out_of_fold"]["sites"].items():
            shown = ", ".join(f"{k} {'n/a' if sm.get(k) is None else f'{sm[k]:.3f}'}" for k in keys[:2])
            console.print(f"  site {site} ({sm['n_slides']} slides): {shown}", markup=False)
    if "test" in summary.metrics:
        t = summary.metrics["test"]["metrics"][keys[0]]
        console.print(f"test split ({summary.metrics['test']['n_slides']} slides): {keys[0]} "
                      f"{'n/a' if t is None else f'{t:.3f}'}")
    for w in summary.warnings:
        console.print(f"warning: {w}", markup=False)
    console.print(f"run: {summary.run_dir}")
