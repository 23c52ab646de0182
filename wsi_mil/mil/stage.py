"""Stage functions behind ``wsi-mil train`` and ``wsi-mil predict``.

``run_train``: labels + feature files -> K-fold cross-validation (grouped by case, stratified)
with out-of-fold predictions and metrics, then the final model on all training slides (every
slide not in ``split=test``, for the median of the folds' best epochs), evaluated on the test
split when there is one. With ``tune: on`` the CV is nested: each outer fold's settings come
from a search over its training slides only (:mod:`wsi_mil.mil.tuning`), and the final model's
from a search over all training slides. ``run_predict``: a run + feature files -> slide probabilities and
per-tile scores. Survival and regression tasks (``task``) run the same way with one output (a risk
score or a value), folds stratified on the event (survival) or the target's quartile, their own
metrics (:mod:`wsi_mil.mil.targets`) and a figure in the run folder (:mod:`wsi_mil.mil.plots`).

Several sites (:mod:`wsi_mil.mil.sites`): with a ``site`` column the metrics are also reported per
site (``per_site``); ``cv: leave_one_site_out`` makes one outer fold per site (inner tuning folds and
early-stopping parts are drawn from the other sites' slides); ``domain_adversarial`` trains every
fit with a site classifier through gradient reversal (:mod:`wsi_mil.mil.domain`).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from wsi_mil.atomic import atomic_path, write_text_atomic
from wsi_mil.config import config_to_dict
from wsi_mil.errors import ConfigError, StoreError
from wsi_mil.mil import tuning
from wsi_mil.mil.bags import Bag, BagSet, check_same_encoder, feature_encoder, load_bags, resolve_device
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.domain import check_head_representation
from wsi_mil.mil.heads.base import MILHead
from wsi_mil.mil.heads.ensemble import FoldEnsemble
from wsi_mil.mil.labels import LabelTable, match_feature_files, read_labels
from wsi_mil.mil.metrics import bootstrap_ci, classification_metrics, summarize
from wsi_mil.mil.modelrun import FOLD_ENSEMBLE, ModelRun, load_model_run, rows_to_csv, save_model_run
from wsi_mil.mil.sites import check_cv_plan, check_domains, check_loso, per_site_metrics, site_folds
from wsi_mil.mil.splits import assign_folds, check_fold_counts, validation_split
from wsi_mil.mil.targets import (
    SURVIVAL,
    TargetTable,
    check_task_folds,
    match_target_files,
    read_targets,
    task_evaluation,
    task_metrics,
)
from wsi_mil.mil.training import Log, build_head, fit, predict_probs, quiet, settle_bag_defaults
from wsi_mil.outputs import MODEL_RUN, DiskFullError, check_replaceable, check_writable, is_disk_full
from wsi_mil.runrecord import DONE, FAILED, RunRecord, SlideStatus, StageReport, guard_slide
from wsi_mil.stores.common import slide_id_of
from wsi_mil.stores.features import list_feature_files, read_feature_file


@dataclass
class TrainSummary:
    """What ``run_train`` did: run folder, metrics (as in metrics.json) and warnings reported."""

    run_dir: Path
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _device(cfg: TrainConfig) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but no CUDA GPU is available; use --device cpu")
    return device


def _prob_columns(class_names: list[str]) -> list[str]:
    return [f"prob_{c}" for c in class_names]


@dataclass
class TrainingData:
    """Matched labels and bags: ``targets``/``groups``/``is_test`` are (n,) arrays in table order;
    ``y`` the task's targets (classification: ``targets``; see :func:`wsi_mil.mil.targets.task_arrays`),
    ``strata`` (n,) int the classes folds are stratified on."""

    table: LabelTable | TargetTable
    bags: list[Bag]
    encoder_id: str
    embed_dim: int
    warnings: list[str]
    #: (n,) domain index per slide of domain-adversarial training, and the domain names (None: off)
    domains: npt.NDArray[np.int64] | None = None
    domain_names: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.table.task if isinstance(self.table, TargetTable) else "classification"

    @property
    def targets(self) -> npt.NDArray[np.int64]:
        if isinstance(self.table, TargetTable):
            return self.strata
        return np.array(self.table.targets, dtype=np.int64)

    @property
    def y(self) -> npt.NDArray[Any]:
        return self.table.y if isinstance(self.table, TargetTable) else self.targets

    @property
    def strata(self) -> npt.NDArray[np.int64]:
        return self.table.strata if isinstance(self.table, TargetTable) else self.targets

    @property
    def groups(self) -> npt.NDArray[np.str_]:
        return np.array([r.case_id for r in self.table.rows])

    @property
    def is_test(self) -> npt.NDArray[np.bool_]:
        return np.array([r.split == "test" for r in self.table.rows], dtype=bool)

    @property
    def sites(self) -> npt.NDArray[np.str_] | None:
        """(n,) the site of each slide, or None when the labels have no ``site`` column."""
        return np.array([r.site for r in self.table.rows]) if self.table.has_site else None


def _matched_labels(
    features_dir: str | Path, labels_csv: str | Path, cfg: TrainConfig,
) -> tuple[LabelTable | TargetTable, list[str], list[Path], str, int]:
    """The labels matched to the feature files (one encoder for all, checked on the files' attributes):
    (table, warnings, feature paths in table order, encoder id, embed dim)."""
    files = {slide_id_of(p): p for p in list_feature_files(features_dir)}
    if not files:
        raise StoreError(f"{features_dir}: no feature files (*.h5); run 'wsi-mil extract' first")
    table: LabelTable | TargetTable
    if cfg.task == "classification":
        table, warnings = match_feature_files(read_labels(labels_csv, cfg.classes), files, cfg.missing_features)
    else:
        table, warnings = match_target_files(read_targets(labels_csv, cfg.task), files, cfg.missing_features)
    paths = [files[r.slide_id] for r in table.rows]
    encoder_id, embed_dim = feature_encoder(paths[0])
    check_same_encoder(paths, encoder_id, embed_dim)
    return table, warnings, paths, encoder_id, embed_dim


@dataclass
class TrainingCheck:
    """What ``train --check`` found: training and test slides, the encoder of their features, warnings."""

    n_train: int
    n_test: int
    encoder_id: str
    embed_dim: int
    warnings: list[str]


def check_training(features_dir: str | Path, labels_csv: str | Path, cfg: TrainConfig) -> TrainingCheck:
    """``train --check``: the labels, their feature files and the cross-validation plan validated (as
    ``run_train`` would, before loading any bag); nothing is trained or written."""
    table, warnings, _, encoder_id, embed_dim = _matched_labels(features_dir, labels_csv, cfg)
    check_cv_plan(table, cfg)
    n_test = sum(r.split == "test" for r in table.rows)
    return TrainingCheck(len(table.rows) - n_test, n_test, encoder_id, embed_dim, warnings)


def load_training_data(features_dir: str | Path, labels_csv: str | Path, cfg: TrainConfig) -> TrainingData:
    """Read the labels, match them to feature files (one encoder for all), load the bags once."""
    table, warnings, paths, encoder_id, embed_dim = _matched_labels(features_dir, labels_csv, cfg)
    bags = load_bags(paths, encoder_id, embed_dim)
    empty = [b.slide_id for b in bags if b.n_tiles == 0]
    if empty:
        warnings.append(f"{len(empty)} slide(s) have no tiles and are left out: {', '.join(empty[:5])}")
        table = table.subset({b.slide_id for b in bags if b.n_tiles > 0})
        bags = [b for b in bags if b.n_tiles > 0]
    data = TrainingData(table, bags, encoder_id, embed_dim, warnings)
    domains = check_domains(table, cfg)
    if domains is not None:
        data.domains, data.domain_names = domains
    return data


@dataclass
class CrossValidation:
    """Out-of-fold probabilities (n, C) (NaN for test slides), fold index per slide (-1: test),
    per-fold metrics, best epochs and training histories; nested CV adds each fold model's
    probabilities (n_test, C) of the test split; ``fold_sites``: the site each fold holds out
    (leave-one-site-out; empty for K-fold); ``cfg``: the configuration the folds ran with (the head's
    ``auto`` options settled from the training bags)."""

    oof: npt.NDArray[np.float64]
    folds: npt.NDArray[np.int64]
    fold_metrics: list[dict[str, Any]]
    best_epochs: list[int]
    history: dict[str, Any]
    cfg: TrainConfig
    test_probs: list[npt.NDArray[np.float64]] = field(default_factory=list)
    fold_heads: list[MILHead] = field(default_factory=list)
    fold_options: list[dict[str, Any]] = field(default_factory=list)
    fold_sites: list[str] = field(default_factory=list)


def outer_folds(data: TrainingData, cfg: TrainConfig) -> tuple[npt.NDArray[np.int64], list[str]]:
    """(n,) outer fold per slide (-1: test split) and, for ``cv: leave_one_site_out``, the site each
    fold holds out (K-fold: stratified, grouped by case; an empty list)."""
    train_all = np.flatnonzero(~data.is_test)
    folds = np.full(len(data.bags), -1, dtype=np.int64)
    if cfg.cv == "leave_one_site_out":
        sites = data.sites
        if sites is None:  # checked by check_loso; a programming error here
            raise ValueError("leave-one-site-out needs the labels' site column")
        folds[train_all], names = site_folds(sites[train_all])
        return folds, names
    folds[train_all] = assign_folds(data.strata[train_all], data.groups[train_all], cfg.folds, cfg.seed)
    return folds, []


def cross_validate(data: TrainingData, bagset: BagSet, cfg: TrainConfig, log: Log = quiet) -> CrossValidation:
    """K folds over the training slides, grouped by case (``cv: leave_one_site_out``: one fold per site,
    each site held out in turn); each fold early-stops on its own validation part, drawn from its
    training slides.

    With ``cfg.tune == "on"`` the CV is nested: each fold's settings are chosen by a search over
    that fold's training slides only, then the fold model is fitted with them and scores the
    held-out fold (which no search of this fold has seen); the fold models and their predictions
    of the test split are kept for the final model.
    """
    cfg = settle_bag_defaults(cfg, bagset, np.flatnonzero(~data.is_test), log)
    tuned = cfg.tune == "on"
    names = data.table.class_names
    targets, groups = data.y, data.groups
    strata = data.strata  # classification: the classes themselves
    test_pos = np.flatnonzero(data.is_test)
    folds, fold_sites = outer_folds(data, cfg)
    n_folds = int(folds.max()) + 1
    oof = np.full((len(data.bags), len(names)), np.nan)
    cv = CrossValidation(oof, folds, [], [], {}, cfg, fold_sites=fold_sites)
    for f in range(n_folds):
        held = np.flatnonzero(folds == f)
        rest = np.flatnonzero((folds >= 0) & (folds != f))
        fcfg, search = cfg, None
        where = f" (site {fold_sites[f]} held out)" if fold_sites else ""
        if tuned:
            log(f"fold {f + 1}/{n_folds}{where}: choosing settings on its {len(rest)} training slides")
            search = tuning.search_settings(bagset, targets, groups, rest, cfg, names, cfg.seed + 101 * (f + 1), log,
                                            strata=strata, domains=data.domains)
            fcfg = search.cfg
        tr, va = validation_split(rest, strata, groups, fcfg.val_fraction, cfg.seed + f)
        head = build_head(fcfg, data.embed_dim, len(names), cfg.seed + 1000 * (f + 1))
        res = fit(head, bagset, targets, tr, va, fcfg, cfg.seed + f, class_names=names, domains=data.domains)
        if tuned:
            _orient(head, bagset, rest, fcfg)  # exact (predictions unchanged): the fold model may join the final one
        oof[held] = predict_probs(head, bagset, held.tolist(), cfg.eval_tiles_per_batch)
        m: dict[str, Any] = dict(_metrics_of(data.task, targets[held], oof[held], names))
        m.update(fold=f, n_slides=int(len(held)), best_epoch=res.best_epoch, epochs_run=res.epochs_run,
                 feature_scaling=res.scaling)
        if res.settled:
            m["settled_from_start"] = res.settled
        if fold_sites:
            m["site"] = fold_sites[f]
        if search is not None:
            m["tuning"] = search.record()
            if len(test_pos):
                cv.test_probs.append(predict_probs(head, bagset, test_pos.tolist(), cfg.eval_tiles_per_batch))
            cv.fold_heads.append(head)
            cv.fold_options.append(config_to_dict(head.opts))  # type: ignore[arg-type]
        cv.fold_metrics.append(m)
        cv.best_epochs.append(res.best_epoch)
        cv.history[f"fold_{f}"] = res.history
        log(f"fold {f + 1}/{n_folds}{where}: {len(tr)} train / {len(va)} val / {len(held)} held out; best epoch "
            f"{res.best_epoch} of {res.epochs_run}; {_brief(data.task, m)}")
    return cv


def _metrics_of(task: str, y: npt.NDArray[Any], out: npt.NDArray[np.float64], names: list[str]) -> dict[str, float | None]:
    """The task's metrics of predictions ``out`` (n, C) (one-output tasks: (n, 1))."""
    if task == "classification":
        return classification_metrics(y, out, names)
    return task_metrics(task, y, out)


def _brief(task: str, m: dict[str, Any]) -> str:
    """The log's summary of one set of metrics."""
    if task == "classification":
        return f"AUC {_fmt(m['auc'])}, balanced accuracy {_fmt(m['balanced_accuracy'])}"
    if task == SURVIVAL:
        return f"c-index {_fmt(m['c_index'])}, Uno's c-index {_fmt(m['c_index_uno'])}"
    return f"MAE {_fmt(m['mae'])}, Spearman r {_fmt(m['spearman_r'])}, Pearson r {_fmt(m['pearson_r'])}"


def run_train(
    features_dir: str | Path, labels_csv: str | Path, run_dir: str | Path, cfg: TrainConfig,
    log: Log = quiet, overwrite: bool = False,
) -> TrainSummary:
    """Cross-validate and train ``cfg.head`` on the labelled feature files; write the run folder."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:
        raise StoreError(f"{run_dir}: run folder exists; choose another -o or pass --overwrite")
    check_replaceable(run_dir, MODEL_RUN)  # --overwrite replaces only a model run: never a job or foreign folder
    check_writable(run_dir)  # before the cross-validation, not after it
    device = _device(cfg)
    if cfg.domain_adversarial is not None:
        check_head_representation(cfg.head)  # before any bag is loaded
    data = load_training_data(features_dir, labels_csv, cfg)
    table, warnings, embed_dim, encoder_id = data.table, data.warnings, data.embed_dim, data.encoder_id
    for w in warnings:
        log(f"warning: {w}")
    names = table.class_names
    task = data.task
    targets, is_test = data.y, data.is_test
    train_all, test_pos = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if cfg.cv == "leave_one_site_out":
        check_loso(table)
    elif task == "classification":
        check_fold_counts(targets[train_all], data.groups[train_all], names, cfg.folds, str(table.path))
    else:
        check_task_folds(task, targets[train_all], data.groups[train_all], cfg.folds, str(table.path))
    if data.domains is not None and cfg.cv == "leave_one_site_out" and len(set(data.domains[train_all].tolist())) < 3:
        warnings.append("domain_adversarial with cv: leave_one_site_out and 2 domains: each fold trains on one "
                        "domain, so its site classifier has nothing to tell apart (only the final model has)")
    bagset = BagSet([b.features for b in data.bags], device)
    what = f"classes {names}" if task == "classification" else f"task {task}"
    log(f"{len(train_all)} training slides, {len(test_pos)} test slides, {what}, {encoder_id} "
        f"({embed_dim}-d); bags {'on' if bagset.on_device else 'copied per batch to'} {device} "
        f"({bagset.nbytes / 2**20:.0f} MiB)")
    tuned = cfg.tune == "on"
    cv = cross_validate(data, bagset, cfg, log)
    cfg = cv.cfg  # the head's auto options settled from the training bags
    oof, folds, fold_metrics, best_epochs, history = cv.oof, cv.folds, cv.fold_metrics, cv.best_epochs, cv.history

    metric_keys = [k for k in fold_metrics[0]
                   if k not in ("fold", "n_slides", "best_epoch", "epochs_run", "tuning", "site", "settled_from_start",
                                 "feature_scaling")]
    metrics: dict[str, Any] = {
        "head": cfg.head,
        "task": task,
        "class_names": names,
        "folds": fold_metrics,
        "fold_summary": summarize([{k: m[k] for k in metric_keys} for m in fold_metrics]),
        "out_of_fold": _evaluation(targets[train_all], oof[train_all], names, cfg, task),
        "cv": {"kind": cfg.cv, "folds": len(fold_metrics),
               **({"column": "site", "held_out_sites": cv.fold_sites} if cv.fold_sites else {})},
        "domain_adversarial": _domain_record(cfg, data),
    }

    final_cfg, epochs_from = cfg, best_epochs
    final_search: tuning.SearchResult | None = None
    final_model: dict[str, Any] = {"trained_on": "all slides with split != test", "n_slides": int(len(train_all))}
    head: MILHead
    if tuned and cfg.tune_final == "ensemble":  # the outer-fold models, averaged: no further training
        head = FoldEnsemble(cv.fold_heads)
        final_model = {"kind": FOLD_ENSEMBLE, "trained_on": "each outer fold's training slides",
                       "n_slides": int(len(train_all)), "members": len(cv.fold_heads),
                       "member_head_options": cv.fold_options,
                       "member_settings": [m["tuning"]["chosen"] for m in fold_metrics],
                       "fold_best_epochs": best_epochs}
        metrics["tuning"] = {"final_model": "ensemble", "trials_budget": cfg.tune_trials,
                             "timeout_s": cfg.tune_timeout_s, "inner_folds": cfg.tune_folds}
        log(f"final model: the mean of the {len(cv.fold_heads)} outer-fold models")
    else:
        if tuned:  # the final model's settings: a search over all training slides (the test split unseen)
            log(f"final model: choosing settings on all {len(train_all)} training slides")
            final_search = tuning.search_settings(bagset, targets, data.groups, train_all, cfg, names, cfg.seed, log,
                                                  strata=data.strata, domains=data.domains)
            final_cfg = final_search.cfg
            epochs_from = final_search.best_epochs or best_epochs
            metrics["tuning"] = {"final_model": "refit", **final_search.record(), "trials_budget": cfg.tune_trials,
                                 "timeout_s": cfg.tune_timeout_s}
        final_epochs = cfg.final_epochs or max(1, int(round(float(np.median(epochs_from)))))
        log(f"final model: {len(train_all)} training slides, {final_epochs} epochs")
        head = build_head(final_cfg, embed_dim, len(names), cfg.seed)
        res = fit(head, bagset, targets, train_all, train_all[:0], final_cfg, cfg.seed, n_epochs=final_epochs,
                  domains=data.domains)
        history["final"] = res.history
        _orient(head, bagset, train_all, final_cfg)
        final_model.update(epochs=final_epochs, fold_best_epochs=best_epochs, feature_scaling=res.scaling)
        log(f"final model: feature scaling {res.scaling} (standardize: {final_cfg.standardize})")
        if res.settled:
            final_model["settled_from_start"] = res.settled
        if final_search is not None:
            final_model["tuned_settings"] = final_search.chosen
            final_model["train_config"] = config_to_dict(final_cfg)
    test_probs = None
    if len(test_pos):
        test_probs = predict_probs(head, bagset, test_pos.tolist(), cfg.eval_tiles_per_batch)
        metrics["test"] = _evaluation(targets[test_pos], test_probs, names, cfg, task)
        log(f"test split: {len(test_pos)} slides, {_brief(task, metrics['test']['metrics'])}")
        if cv.test_probs and final_search is not None:  # the alternative, measured: the mean of the fold models
            metrics["test_fold_ensemble"] = _evaluation(targets[test_pos], np.mean(cv.test_probs, axis=0), names, cfg,
                                                        task)
    sites = data.sites
    if sites is not None:
        metrics["per_site"] = _per_site(sites, targets, oof, train_all, test_pos, test_probs, names, task)
    metrics["warnings"] = warnings
    metrics["seconds"] = round(time.perf_counter() - t_start, 2)

    extra_files: dict[str, bytes] = {}
    if isinstance(table, TargetTable):
        split_rows, pred_rows, split_cols, pred_cols = _task_tables(table, folds, oof, test_pos, test_probs)
        extra_files = _task_figures(task, targets[train_all], oof[train_all])
    else:
        split_rows, pred_rows = _run_tables(table, folds, oof, test_pos, test_probs)
        site_cols = ["site"] if table.has_site else []
        split_cols = ["slide_id", "case_id", "label", *site_cols, "split", "fold"]
        pred_cols = ["slide_id", "label", *site_cols, "split", "fold", "predicted", *_prob_columns(names)]
    config = {
        "head": cfg.head, "task": task, "head_options": config_to_dict(getattr(head, "opts", final_cfg.head_options)),
        "class_names": names,
        "n_classes": len(names), "encoder_id": encoder_id, "embed_dim": embed_dim, "train_config": config_to_dict(cfg),
        "labels_csv": str(Path(labels_csv).resolve()), "features_dir": str(Path(features_dir).resolve()),
        "final_model": final_model, "cv": cfg.cv, "domain_adversarial": metrics["domain_adversarial"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_model_run(run_dir, head, config, {
        "splits.csv": rows_to_csv(split_rows, split_cols),
        "predictions.csv": rows_to_csv(pred_rows, pred_cols),
        "metrics.json": json.dumps(metrics, indent=2, default=str) + "\n",
        "history.json": json.dumps(history, indent=1) + "\n",
    }, extra_files)
    return TrainSummary(run_dir, metrics, warnings)


def _domain_record(cfg: TrainConfig, data: TrainingData) -> dict[str, Any] | None:
    """metrics.json / config.json record of domain-adversarial training (None when off)."""
    if cfg.domain_adversarial is None:
        return None
    return {**config_to_dict(cfg.domain_adversarial), "domains": data.domain_names,
            "schedule": "Ganin: lambda_p = 2 / (1 + exp(-10 p)) - 1, p = step / planned steps"}


def _per_site(
    sites: npt.NDArray[np.str_], y: npt.NDArray[Any], oof: npt.NDArray[np.float64], train_all: npt.NDArray[np.int64],
    test_pos: npt.NDArray[np.int64], test_out: npt.NDArray[np.float64] | None, names: list[str], task: str,
) -> dict[str, Any]:
    """metrics.json ``per_site``: the task's metrics of the out-of-fold predictions (and of the test split's),
    pooled and per site."""
    def part(pos: npt.NDArray[np.int64], out: npt.NDArray[np.float64]) -> dict[str, Any]:
        return per_site_metrics(sites[pos], lambda idx: _metrics_of(task, y[pos][idx], out[idx], names))

    record: dict[str, Any] = {"column": "site", "out_of_fold": part(train_all, oof[train_all])}
    if test_out is not None and len(test_pos):
        record["test"] = part(test_pos, test_out)
    return record


def _evaluation(y: npt.NDArray[Any], probs: npt.NDArray[np.float64], names: list[str], cfg: TrainConfig,
                task: str = "classification") -> dict[str, Any]:
    """Metrics of one set of predictions with bootstrap confidence intervals (``ci``: None when off)."""
    if task != "classification":
        return task_evaluation(task, y, probs, cfg.bootstrap, cfg.ci_level, cfg.seed)
    return {
        "n_slides": int(len(y)),
        "metrics": classification_metrics(y, probs, names),
        "ci": bootstrap_ci(y, probs, names, cfg.bootstrap, cfg.ci_level, cfg.seed) if cfg.bootstrap else None,
        "ci_level": cfg.ci_level, "bootstrap": cfg.bootstrap,
    }


def _run_tables(
    table: LabelTable, folds: npt.NDArray[np.int64], oof: npt.NDArray[np.float64], test_pos: npt.NDArray[np.int64],
    test_probs: npt.NDArray[np.float64] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of splits.csv and predictions.csv (out-of-fold for training slides, final model for test)."""
    names = table.class_names
    split_rows, pred_rows = [], []
    for i, r in enumerate(table.rows):
        test = r.split == "test"
        fold = int(folds[i]) if folds[i] >= 0 else ""
        site = {"site": r.site} if table.has_site else {}
        split_rows.append({"slide_id": r.slide_id, "case_id": r.case_id, "label": r.label, **site,
                           "split": "test" if test else "train", "fold": fold})
        probs = test_probs[np.searchsorted(test_pos, i)] if test and test_probs is not None else oof[i]
        row = {"slide_id": r.slide_id, "label": r.label, **site, "split": "test" if test else "train", "fold": fold,
               "predicted": names[int(np.argmax(probs))]}
        row.update({c: f"{p:.6f}" for c, p in zip(_prob_columns(names), probs, strict=True)})
        pred_rows.append(row)
    return split_rows, pred_rows


def _task_tables(
    table: TargetTable, folds: npt.NDArray[np.int64], oof: npt.NDArray[np.float64], test_pos: npt.NDArray[np.int64],
    test_out: npt.NDArray[np.float64] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str], list[str]]:
    """Rows and columns of splits.csv and predictions.csv of a survival or regression run: the targets,
    ``site`` when the labels have it, and the out-of-fold (test: final model) ``risk`` or ``value``."""
    out_name = table.class_names[0]
    value_cols = ["time", "event"] if table.task == SURVIVAL else ["target"]
    site_cols = ["site"] if table.has_site else []
    split_rows, pred_rows = [], []
    for i, r in enumerate(table.rows):
        test = r.split == "test"
        fold = int(folds[i]) if folds[i] >= 0 else ""
        values = ({"time": f"{r.time:g}", "event": r.event} if table.task == SURVIVAL else {"target": f"{r.target:g}"})
        base = {"slide_id": r.slide_id, **values, "split": "test" if test else "train", "fold": fold,
                **({"site": r.site} if table.has_site else {})}
        split_rows.append({"case_id": r.case_id, **base})
        out = test_out[np.searchsorted(test_pos, i)] if test and test_out is not None else oof[i]
        pred_rows.append({**base, out_name: f"{out[0]:.6g}"})
    split_cols = ["slide_id", "case_id", *value_cols, *site_cols, "split", "fold"]
    pred_cols = ["slide_id", *value_cols, *site_cols, "split", "fold", out_name]
    return split_rows, pred_rows, split_cols, pred_cols


def _task_figures(task: str, y: npt.NDArray[np.float64], oof: npt.NDArray[np.float64]) -> dict[str, bytes]:
    """The run folder's figure of the out-of-fold predictions: Kaplan-Meier curves or a scatter (PNG bytes)."""
    from wsi_mil.mil import plots  # matplotlib: only when a task run writes its figure

    if task == SURVIVAL:
        return {plots.KM_FILE: plots.km_figure(y[:, 0], y[:, 1], oof[:, 0])}
    return {plots.SCATTER_FILE: plots.scatter_figure(y, oof[:, 0])}


def _orient(head: MILHead, bagset: BagSet, positions: npt.NDArray[np.int64], cfg: TrainConfig) -> None:
    """Let the head fix the sign of its tile scores on the training bags (CHOWDER; no-op otherwise)."""
    batches = ((f, m) for _, f, m in bagset.whole_batches(positions.tolist(), cfg.eval_tiles_per_batch))
    head.orient_(batches)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


@dataclass
class PredictSummary:
    """What ``run_predict`` wrote: the slide CSV, the tiles folder, slides predicted and warnings."""

    out_csv: Path
    tiles_dir: Path
    n_slides: int
    warnings: list[str] = field(default_factory=list)
    #: every slide's status (slide-id order), recorded in ``OUT.status.csv``
    report: StageReport | None = None

    @property
    def failed(self) -> list[SlideStatus]:
        """Slides whose feature file could not be read or predicted, with the reasons."""
        return self.report.failed if self.report is not None else []


def tiles_dir_of(out_csv: str | Path) -> Path:
    """``OUT.csv`` -> ``OUT.tiles``: where per-tile scores go."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.stem + ".tiles")


def predict_status_path(out_csv: str | Path) -> Path:
    """``OUT.csv`` -> ``OUT.status.csv``: the per-slide record of a prediction."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.stem + ".status.csv")


def run_predict(
    run_dir: str | Path, features_dir: str | Path, out_csv: str | Path, device: str = "auto", log: Log = quiet,
) -> PredictSummary:
    """Predict every feature file in ``features_dir`` with the run's final model.

    Writes ``OUT.csv`` (slide_id, n_tiles, prob_<class>..., predicted; survival: slide_id, n_tiles,
    risk; regression: slide_id, n_tiles, value) and
    ``OUT.tiles/{slide_id}.csv`` (tile_id, x, y, score_<class>..., selected_<class>...; selected
    is +1 top, -1 bottom, 0 not). Feature files from another encoder or dimension are refused.
    """
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but no CUDA GPU is available; use --device cpu")
    check_writable(out_csv)  # OUT.csv, OUT.tiles/, OUT.status.csv: before any slide is read
    run = load_model_run(run_dir, dev)
    paths = list_feature_files(features_dir)
    if not paths:
        raise StoreError(f"{features_dir}: no feature files (*.h5); run 'wsi-mil extract' first")
    check_same_encoder(paths, run.encoder_id, run.embed_dim, skip_unreadable=True)
    out_csv = Path(out_csv)
    tiles_dir = tiles_dir_of(out_csv)
    names = run.class_names
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    record = RunRecord(predict_status_path(out_csv))
    record.rows.clear()  # a record of this prediction only, not of an earlier one
    statuses: list[SlideStatus] = []
    with atomic_path(tiles_dir) as tmp:
        tmp.mkdir(parents=True)
        for p in paths:
            work = functools.partial(_predict_one, p, run, Path(tmp), rows, warnings, log)
            st = guard_slide(slide_id_of(p), str(p), "predicting", work)
            statuses.append(st)
            if st.status == FAILED:
                log(f"{st.slide_id}: failed: {st.reason}")
                if is_disk_full(st.reason):  # a full disk stops the prediction: nothing is left half-written
                    raise DiskFullError(f"{st.reason}; the prediction stopped at slide {st.slide_id}")
    record.rows = {st.slide_id: st for st in statuses}
    record.save()
    columns = ["slide_id", "n_tiles", *_prob_columns(names), "predicted"] if run.n_classes > 1 else ["slide_id", "n_tiles", *names]
    write_text_atomic(out_csv, rows_to_csv(rows, columns))
    for w in warnings:
        log(f"warning: {w}")
    report = StageReport(sorted(statuses, key=lambda st: st.slide_id), record.path)
    return PredictSummary(out_csv, tiles_dir, len(rows), warnings, report)


def _predict_one(path: Path, run: ModelRun, tiles_dir: Path, rows: list[dict[str, Any]], warnings: list[str],
                 log: Log) -> SlideStatus:
    """Predict one feature file: append its row to ``rows``, write ``tiles_dir/{slide_id}.csv``."""
    t0 = time.perf_counter()
    names = run.class_names
    ff = read_feature_file(path, run.encoder_id, run.embed_dim)
    pred = run.predict_bag(ff.features)
    row: dict[str, Any] = {"slide_id": ff.slide_id, "n_tiles": ff.n_tiles}
    if run.n_classes == 1:  # survival: the risk score; regression: the predicted value
        row[names[0]] = "" if ff.n_tiles == 0 else f"{pred.probs[0]:.6g}"
        if ff.n_tiles == 0:
            warnings.append(f"{path}: no tiles; {names[0]} left empty")
    elif ff.n_tiles == 0:
        warnings.append(f"{path}: no tiles; probabilities left empty")
        row.update({c: "" for c in _prob_columns(names)}, predicted="")
    else:
        row.update({c: f"{v:.6f}" for c, v in zip(_prob_columns(names), pred.probs, strict=True)})
        row["predicted"] = names[int(np.argmax(pred.probs))]
    (tiles_dir / f"{ff.slide_id}.csv").write_text(_tile_csv(ff.coords, pred, names), encoding="utf-8")
    rows.append(row)
    shown = row.get("predicted", row.get(names[0], ""))
    log(f"{ff.slide_id}: {ff.n_tiles} tiles" + (f", predicted {shown}" if ff.n_tiles else ""))
    return SlideStatus(ff.slide_id, str(path), DONE, "", ff.n_tiles, time.perf_counter() - t0)


def _tile_csv(coords: np.ndarray, pred: Any, names: list[str]) -> str:
    cols = ["tile_id", "x", "y"] + [f"score_{c}" for c in names] + [f"selected_{c}" for c in names]
    lines = [",".join(cols)]
    for i in range(coords.shape[0]):
        scores = ",".join(f"{v:.6g}" for v in pred.tile_scores[i])
        sel = ",".join(str(int(v)) for v in pred.selected[i])
        lines.append(f"{i},{int(coords[i, 0])},{int(coords[i, 1])},{scores},{sel}")
    return "\n".join(lines) + "\n"
