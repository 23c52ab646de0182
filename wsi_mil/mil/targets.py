"""Slide targets of the one-output tasks: survival (``time,event``) and regression (``target``).

Labels CSV of a survival task: ``slide_id,time,event[,case_id][,split][,site]`` (event 1 =
observed, 0 = censored; time >= 0 in any unit); of a regression task:
``slide_id,target[,case_id][,split][,site]``. Other columns are ignored. The rules of
classification labels hold (:mod:`wsi_mil.mil.labels`): empty cells, duplicate slide ids, an
unknown split, a case in both the test split and training are errors; ``val`` rows train.
Bad values (a time that is not a number or negative, an event other than 0/1, a target that is not
a finite number, no event at all) are errors that name the lines.

This module also holds what differs between tasks downstream: the arrays training reads
(:func:`task_arrays`), the strata of the cross-validation (the event for survival, target
quartiles for regression), the metrics, their bootstrap intervals and the score a search or
early stopping maximises.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from wsi_mil.errors import LabelsError
from wsi_mil.mil.labels import SPLITS, _lines, check_rows, match_rows, read_label_csv
from wsi_mil.mil.metrics import bootstrap_intervals
from wsi_mil.mil.regression import regression_metrics
from wsi_mil.mil.survival import survival_metrics

SURVIVAL, REGRESSION = "survival", "regression"
#: the output name of a one-output task (columns ``risk`` / ``value`` in predictions)
OUTPUT_NAME = {SURVIVAL: "risk", REGRESSION: "value"}
VALUE_COLUMNS = {SURVIVAL: ("time", "event"), REGRESSION: ("target",)}
#: the metric a search or early stopping maximises, per task (regression: -MAE)
PRIMARY = {SURVIVAL: "c_index", REGRESSION: "mae"}


@dataclass(frozen=True)
class TargetRow:
    """One slide: ``time``/``event`` (survival) or ``target`` (regression); ``line`` is 1-based."""

    slide_id: str
    case_id: str
    split: str
    site: str
    line: int
    time: float = math.nan
    event: int = 0
    target: float = math.nan

    @property
    def label(self) -> str:
        """The slide's target as written in splits.csv (``time`` or ``target``)."""
        return f"{self.time:g}" if math.isnan(self.target) else f"{self.target:g}"


@dataclass
class TargetTable:
    """A validated survival or regression labels CSV (``class_names``: the one output's name)."""

    path: Path
    task: str
    rows: list[TargetRow]
    has_case_id: bool
    has_site: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return [OUTPUT_NAME[self.task]]

    def subset(self, slide_ids: set[str]) -> TargetTable:
        """The rows whose slide id is in ``slide_ids``."""
        return TargetTable(self.path, self.task, [r for r in self.rows if r.slide_id in slide_ids],
                           self.has_case_id, self.has_site, list(self.warnings))

    @property
    def y(self) -> npt.NDArray[np.float64]:
        """Survival: (n, 2) [time, event]; regression: (n,) target."""
        return task_arrays(self.task, self.rows)

    @property
    def strata(self) -> npt.NDArray[np.int64]:
        """(n,) fold strata: the event (survival) or the target's quartile (regression)."""
        return strata_of(self.task, self.y)


def task_arrays(task: str, rows: list[TargetRow]) -> npt.NDArray[np.float64]:
    """Survival: (n, 2) float64 [time, event]; regression: (n,) float64 target."""
    if task == SURVIVAL:
        return np.array([[r.time, r.event] for r in rows], dtype=np.float64).reshape(-1, 2)
    return np.array([r.target for r in rows], dtype=np.float64)


def strata_of(task: str, y: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """(n,) int strata for stratified folds: event (survival), target quartile 0..3 (regression)."""
    if task == SURVIVAL:
        return y[:, 1].astype(np.int64)
    if len(y) < 8:
        return np.zeros(len(y), dtype=np.int64)
    cuts = np.quantile(y, [0.25, 0.5, 0.75])
    return np.searchsorted(cuts, y, side="right").astype(np.int64)


def _float(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_targets(path: str | Path, task: str) -> TargetTable:
    """Read and validate the labels CSV of a survival or regression task; raises :class:`LabelsError`."""
    path = Path(path)
    header, raw = read_label_csv(path)
    value_cols = VALUE_COLUMNS[task]
    needed = ("slide_id", *value_cols)
    missing = [c for c in needed if c not in header]
    if missing:
        hint = "slide_id,time,event" if task == SURVIVAL else "slide_id,target"
        raise LabelsError(f"{path}: missing column(s) {', '.join(missing)} for task '{task}'; the header must be "
                          f"{hint}[,case_id][,split][,site]")
    if not raw:
        raise LabelsError(f"{path}: no rows; add one line per slide ({','.join(needed)})")
    has_case, has_split, has_site = "case_id" in header, "split" in header, "site" in header
    check_rows(path, raw, needed + (("case_id",) if has_case else ()) + (("site",) if has_site else ()))
    rows = [_row(path, task, rec, line, has_case, has_split, has_site) for rec, line in raw]
    if task == SURVIVAL:
        _check_survival(path, raw, rows)
    else:
        _check_regression(path, raw, rows)
    splits_of_case: dict[str, set[bool]] = defaultdict(set)
    for r in rows:
        splits_of_case[r.case_id].add(r.split == "test")
    mixed = sorted(c for c, s in splits_of_case.items() if len(s) > 1)
    if mixed:
        raise LabelsError(f"{path}: case(s) {', '.join(mixed[:5])} have slides in both the test split and "
                          "training; put all slides of a case in the same split")
    warnings: list[str] = []
    n_val = sum(r.split == "val" for r in rows)
    if n_val:
        warnings.append(f"{path}: {n_val} slide(s) with split=val are used for training; the early-stopping "
                        "validation part is drawn inside each training fold")
    return TargetTable(path, task, rows, has_case, has_site, warnings)


def _row(path: Path, task: str, rec: dict[str, str], line: int, has_case: bool, has_split: bool,
         has_site: bool) -> TargetRow:
    split = (rec.get("split", "").lower() if has_split else "") or "train"
    if split not in SPLITS:
        raise LabelsError(f"{path}: line {line}: split '{rec.get('split')}' is not one of {', '.join(SPLITS)}")
    case = rec["case_id"] if has_case else rec["slide_id"]
    site = rec.get("site", "") if has_site else ""
    if task == SURVIVAL:
        t, e = _float(rec["time"]), _float(rec["event"])
        event = int(e) if e is not None and e in (0.0, 1.0) else -1  # -1: reported by _check_survival
        return TargetRow(rec["slide_id"], case, split, site, line, math.nan if t is None else t, event)
    v = _float(rec["target"])
    return TargetRow(rec["slide_id"], case, split, site, line, target=math.nan if v is None else v)


def _cells(raw: list[tuple[dict[str, str], int]], lines: list[int], column: str) -> str:
    """The ``column`` cells of the first three bad ``lines``, quoted, for an error message."""
    shown = set(lines[:3])
    return ", ".join(repr(rec[column]) for rec, line in raw if line in shown)


def _check_survival(path: Path, raw: list[tuple[dict[str, str], int]], rows: list[TargetRow]) -> None:
    """Times must be numbers >= 0, events 0 or 1, and some slide must have an event."""
    bad_time = [r.line for r in rows if math.isnan(r.time)]
    if bad_time:
        cells = _cells(raw, bad_time, "time")
        raise LabelsError(f"{path}: 'time' is not a number on line(s) {_lines(bad_time)} ({cells}); write the "
                          "follow-up time as a number (e.g. months)")
    negative = [r.line for r in rows if r.time < 0]
    if negative:
        raise LabelsError(f"{path}: negative 'time' on line(s) {_lines(negative)}; times are follow-up durations "
                          ">= 0")
    bad_event = [r.line for r in rows if r.event not in (0, 1)]
    if bad_event:
        cells = _cells(raw, bad_event, "event")
        raise LabelsError(f"{path}: 'event' is not 0 or 1 on line(s) {_lines(bad_event)} ({cells}); write 1 for an "
                          "observed event, 0 for a censored time")
    if not any(r.event == 1 for r in rows):
        raise LabelsError(f"{path}: all {len(rows)} slides are censored (event 0 on lines {_lines([r.line for r in rows])}); "
                          "a Cox model needs observed events (event 1)")


def _check_regression(path: Path, raw: list[tuple[dict[str, str], int]], rows: list[TargetRow]) -> None:
    """Targets must be finite numbers and not all equal."""
    bad = [r.line for r in rows if math.isnan(r.target)]
    if bad:
        cells = _cells(raw, bad, "target")
        raise LabelsError(f"{path}: 'target' is not a finite number on line(s) {_lines(bad)} ({cells}); write a "
                          "number on every row or remove it")
    if len({r.target for r in rows}) < 2:
        raise LabelsError(f"{path}: every 'target' is {rows[0].target:g}; a regression needs targets that vary")


def match_target_files(
    table: TargetTable, files: dict[str, Path], missing: str = "error",
) -> tuple[TargetTable, list[str]]:
    """Keep the slides that have a feature file (as :func:`wsi_mil.mil.labels.match_feature_files`)."""
    matched, warnings = match_rows(table, files, missing)
    if table.task == SURVIVAL and not any(r.event == 1 for r in matched.rows):
        raise LabelsError(f"{table.path}: after matching feature files no slide has an event (event 1); a Cox "
                          "model needs observed events")
    return matched, warnings


def check_task_folds(task: str, y: npt.NDArray[np.float64], groups: npt.NDArray[np.str_], k: int, source: str,
                     folds_option: str = "--folds") -> None:
    """Refuse K folds with fewer than K training cases (regression) or K cases with an event (survival).

    ``folds_option`` names the setting in the advice as the command in use spells it."""
    if task == SURVIVAL:
        n = len(set(groups[y[:, 1] == 1].tolist()))
        what = "case(s) with an event (event 1)"
    else:
        n = len(set(groups.tolist()))
        what = "case(s)"
    if n < k:
        fix = f"set {folds_option} to at most {n}, or add slides" if n >= 2 else "add slides (at least 2 such cases)"
        raise LabelsError(f"{source}: the training slides have {n} {what}, fewer than the {k} folds asked for; {fix}")


def check_table_folds(table: TargetTable, folds: int, folds_option: str = "--folds") -> None:
    """:func:`check_task_folds` on the training rows (``split != test``) of a labels table."""
    train = [r for r in table.rows if r.split != "test"]
    check_task_folds(table.task, task_arrays(table.task, train), np.array([r.case_id for r in train]), folds,
                     str(table.path), folds_option)


def task_metrics(task: str, y: npt.NDArray[np.float64], out: npt.NDArray[np.float64]) -> dict[str, float | None]:
    """Metrics of one-output predictions ``out`` (n, 1) against ``y`` (see :func:`task_arrays`)."""
    pred = np.asarray(out, dtype=np.float64).reshape(-1)
    if task == SURVIVAL:
        return survival_metrics(y[:, 0], y[:, 1], pred)
    return regression_metrics(y, pred)


def task_score(task: str, metrics: dict[str, float | None]) -> float | None:
    """The number a search or early stopping maximises: Harrell's c-index, or -MAE (regression)."""
    v = metrics.get(PRIMARY[task])
    if v is None:
        return None
    return float(v) if task == SURVIVAL else -float(v)


def task_evaluation(task: str, y: npt.NDArray[np.float64], out: npt.NDArray[np.float64], n_boot: int, level: float,
                    seed: int) -> dict[str, Any]:
    """Metrics with percentile bootstrap intervals over slides (``ci`` None when ``n_boot`` is 0)."""
    def at(idx: np.ndarray) -> dict[str, float | None]:
        m = task_metrics(task, y[idx], out[idx])
        m.pop("logrank_p_median", None)  # a p-value has no useful bootstrap interval
        return m

    return {"n_slides": int(len(y)), "metrics": task_metrics(task, y, out),
            "ci": bootstrap_intervals(at, len(y), n_boot, level, seed) if n_boot else None,
            "ci_level": level, "bootstrap": n_boot}
