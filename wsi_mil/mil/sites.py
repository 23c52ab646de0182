"""Cohorts from several sites (hospitals, scanners or batches): the labels' optional ``site`` column.

- :func:`prevalence_warning` (in :mod:`wsi_mil.mil.labels`, which adds it to the warnings of every
  labels table with sites; re-exported here): a warning when the share of a class differs strongly between sites
  (a confounder: a model can learn the site instead of the disease). It fires when the largest
  difference of a class's share between two sites (of at least :data:`MIN_SITE_SLIDES` slides)
  is at least :data:`CONFOUNDER_POINTS` percentage points **and** a chi-square test of
  independence of site and class gives p < :data:`CONFOUNDER_P`: 20 points is the size of a
  difference that a site classifier alone turns into a useful label predictor, and the test
  keeps a 20-point difference between a few slides (chance) from raising the alarm.
- :func:`site_folds`: leave-one-site-out cross-validation (each site held out in turn), with the
  checks that make it possible (:func:`check_site_folds`).
- :func:`domain_labels`: the domain index of each slide for domain-adversarial training
  (``site``, or another column of the labels CSV).
- :func:`per_site_metrics`: the task's metrics pooled and per site.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from wsi_mil.errors import LabelsError
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.labels import (  # noqa: F401  (the confounder rule lives with the labels, re-exported here)
    ADVICE,
    CONFOUNDER_P,
    CONFOUNDER_POINTS,
    MIN_SITE_SLIDES,
    LabelTable,
    _lines,
    check_class_counts,
    prevalence_warning,
    read_label_csv,
)
from wsi_mil.mil.targets import SURVIVAL, TargetTable, check_table_folds


class _Row(Protocol):
    @property
    def slide_id(self) -> str: ...
    @property
    def case_id(self) -> str: ...
    @property
    def site(self) -> str: ...
    @property
    def line(self) -> int: ...


class _SiteTable(Protocol):
    path: Path

    @property
    def rows(self) -> Sequence[_Row]: ...

    has_site: bool


def site_array(table: _SiteTable, what: str) -> npt.NDArray[np.str_]:
    """(n,) the site of each row; a LabelsError naming ``what`` needs it when there is no site column."""
    if not table.has_site:
        raise LabelsError(f"{table.path}: {what} needs a 'site' column (hospital, scanner or batch) in the labels "
                          "CSV; add one, or use cv: kfold")
    return np.array([r.site for r in table.rows])


def check_case_sites(table: _SiteTable) -> None:
    """Refuse cases with slides at two sites (leave-one-site-out holds out whole sites and whole cases)."""
    sites: dict[str, set[str]] = defaultdict(set)
    lines: dict[str, list[int]] = defaultdict(list)
    for r in table.rows:
        sites[r.case_id].add(r.site)
        lines[r.case_id].append(r.line)
    mixed = sorted(c for c, s in sites.items() if len(s) > 1)
    if mixed:
        shown = "; ".join(f"'{c}' at {', '.join(sorted(sites[c]))} (lines {_lines(lines[c])})" for c in mixed[:3])
        more = f" (and {len(mixed) - 3} more)" if len(mixed) > 3 else ""
        raise LabelsError(f"{table.path}: case(s) with slides at two sites: {shown}{more}; leave-one-site-out holds "
                          "out whole sites and keeps a case in one fold: give each case one site, or use cv: kfold")


def site_folds(sites: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Leave-one-site-out: (n,) fold index per slide (fold i holds out site ``names[i]``), and the
    site names in fold order (sorted)."""
    names = sorted(set(sites.tolist()))
    index = {s: i for i, s in enumerate(names)}
    return np.array([index[s] for s in sites.tolist()], dtype=np.int64), names


def check_site_folds(sites: npt.NDArray[np.str_], ok: Callable[[npt.NDArray[np.bool_]], str | None],
                     source: str) -> None:
    """Refuse leave-one-site-out with fewer than 2 sites, or where the slides left for training when a
    site is held out cannot train: ``ok(train_mask)`` returns why not (None when they can)."""
    names = sorted(set(sites.tolist()))
    if len(names) < 2:
        found = f"only site '{names[0]}'" if names else "no site"
        raise LabelsError(f"{source}: cv: leave_one_site_out needs training slides from at least 2 sites, found "
                          f"{found}; add slides of another site, or use cv: kfold")
    for s in names:
        why = ok(sites != s)
        if why:
            raise LabelsError(f"{source}: with site '{s}' held out (cv: leave_one_site_out), the other sites' "
                              f"training slides {why}; add such slides, or use cv: kfold")


def class_rule(targets: npt.NDArray[np.int64]) -> Callable[[npt.NDArray[np.bool_]], str | None]:
    """:func:`check_site_folds`'s rule of a classification: the training slides hold 2 classes or more."""
    def ok(train: npt.NDArray[np.bool_]) -> str | None:
        n = len(set(targets[train].tolist()))
        return None if n >= 2 else f"have {n} class(es); a classifier needs slides of 2 classes"
    return ok


def event_rule(events: npt.NDArray[np.float64]) -> Callable[[npt.NDArray[np.bool_]], str | None]:
    """:func:`check_site_folds`'s rule of a survival task: some training slide has an event."""
    def ok(train: npt.NDArray[np.bool_]) -> str | None:
        return None if (events[train] > 0).any() else "have no event (event 1); a Cox model needs events"
    return ok


def domain_labels(table: _SiteTable, column: str) -> tuple[npt.NDArray[np.int64], list[str]]:
    """(n,) domain index per row of ``table`` and the domain names (sorted): the ``site`` of each row,
    or the values of another ``column`` of the labels CSV (re-read; every row must have one)."""
    if column == "site":
        values = site_array(table, "domain_adversarial (column: site)").tolist()
    else:
        header, raw = read_label_csv(table.path)
        if column not in header:
            raise LabelsError(f"{table.path}: domain_adversarial.column '{column}' is not a column of the labels CSV "
                              f"(columns: {', '.join(header)}); name one of them, e.g. site")
        by_id = {rec["slide_id"]: (rec.get(column, ""), line) for rec, line in raw}
        empty = [by_id[r.slide_id][1] for r in table.rows if not by_id[r.slide_id][0]]
        if empty:
            raise LabelsError(f"{table.path}: empty '{column}' (domain_adversarial.column) on line(s) {_lines(empty)}; "
                              "fill it in or remove the row")
        values = [by_id[r.slide_id][0] for r in table.rows]
    names = sorted(set(values))
    index = {v: i for i, v in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64), names


def per_site_metrics(sites: npt.NDArray[np.str_], metrics: Callable[[npt.NDArray[np.int64]], dict[str, Any]],
                     ) -> dict[str, Any]:
    """``{"pooled": {n_slides, ...}, "sites": {site: {n_slides, ...}}}``: ``metrics(positions)`` of all the
    slides and of each site's (sites sorted)."""
    def one(idx: npt.NDArray[np.int64]) -> dict[str, Any]:
        return {"n_slides": int(len(idx)), **metrics(idx)}

    return {"pooled": one(np.arange(len(sites))),
            "sites": {s: one(np.flatnonzero(sites == s)) for s in sorted(set(sites.tolist()))}}


def check_loso(table: LabelTable | TargetTable) -> None:
    """Refuse ``cv: leave_one_site_out`` on these labels: no site column, fewer than 2 training sites, a
    case at two sites, or a site whose removal leaves training slides that cannot train (one class;
    survival: no event)."""
    train = np.array([r.split != "test" for r in table.rows], dtype=bool)
    sites = site_array(table, "cv: leave_one_site_out")[train]
    check_case_sites(table)
    ok: Callable[[npt.NDArray[np.bool_]], str | None]
    if isinstance(table, LabelTable):
        ok = class_rule(np.array(table.targets, dtype=np.int64)[train])
    elif table.task == SURVIVAL:
        ok = event_rule(table.y[train][:, 1])
    else:
        def ok(mask: npt.NDArray[np.bool_]) -> str | None:
            return None if mask.sum() >= 2 else "are fewer than 2; a regression needs slides to fit"
    check_site_folds(sites, ok, str(table.path))


def check_domains(table: LabelTable | TargetTable, cfg: TrainConfig) -> tuple[npt.NDArray[np.int64], list[str]] | None:
    """The domains of ``cfg.domain_adversarial`` (site index per row, names), checked: a head with a slide
    representation, a domain for every row, 2 domains or more among the training slides; None when off."""
    da = cfg.domain_adversarial
    if da is None:
        return None
    from wsi_mil.mil.domain import check_head_representation  # torch: only when domain-adversarial

    check_head_representation(cfg.head)
    codes, names = domain_labels(table, da.column)
    train = np.array([r.split != "test" for r in table.rows], dtype=bool)
    present = sorted({names[c] for c in codes[train].tolist()})
    if len(present) < 2:
        raise LabelsError(f"{table.path}: domain_adversarial needs training slides from at least 2 values of "
                          f"'{da.column}', found {', '.join(repr(p) for p in present) or 'none'}; add slides of "
                          "another one, or remove domain_adversarial")
    return codes, names


def check_cv_plan(table: LabelTable | TargetTable, cfg: TrainConfig, folds_option: str = "--folds") -> None:
    """Everything the cross-validation of ``cfg`` needs of the labels, before any work: enough cases per
    class (or with an event) for K folds (``cv: kfold``), or the sites of leave-one-site-out; the
    domains of domain-adversarial training."""
    if cfg.cv == "leave_one_site_out":
        check_loso(table)
    elif isinstance(table, LabelTable):
        check_class_counts(table, cfg.folds, folds_option)
    else:
        check_table_folds(table, cfg.folds, folds_option)
    check_domains(table, cfg)
