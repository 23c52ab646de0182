"""The cohort page's summary: how well the run separates the classes, from its out-of-fold predictions.

Read from the model run (``RUN/predictions.csv``, rows with ``split == train``: each slide predicted by
the fold model that did not see it; ``RUN/metrics.json``: the AUC's bootstrap interval). Shown: the
out-of-fold slide AUC with its confidence interval, the ROC curve of the shown class, the confusion
matrix at the threshold the run predicts with (the most probable class: P > 0.5 for two classes),
class counts, and per-site figures when the labels CSV has a ``site`` column (the run's own labels
CSV, or the one passed to ``heatmap --labels``).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wsi_mil.errors import WsiMilError
from wsi_mil.mil.labels import read_label_csv
from wsi_mil.mil.metrics import bootstrap_ci, roc_auc

SITE_COLUMNS = ("site", "center", "centre", "hospital")


@dataclass
class SiteFigures:
    """One site's out-of-fold figures: slides, AUC (None with one class), accuracy."""

    site: str
    n: int
    auc: float | None
    accuracy: float


@dataclass
class CohortSummary:
    """What the summary shows.

    class_names: C names; shown: index of the class whose probability is scored (ROC positive);
    n_oof: slides with out-of-fold predictions; auc, auc_ci, ci_level: their AUC and interval;
    roc: (K, 2) false / true positive rates; confusion: (C, C) counts, rows true, columns predicted;
    class_counts: label -> slides; sites: per-site figures (empty without a site column).
    """

    class_names: list[str]
    shown: int
    n_oof: int
    auc: float | None
    auc_ci: list[float] | None
    ci_level: float
    roc: NDArray[np.float64]
    confusion: NDArray[np.int64]
    class_counts: dict[str, int]
    threshold: str
    sites: list[SiteFigures] = field(default_factory=list)
    site_column: str | None = None


def roc_points(scores: NDArray[np.float64], positive: NDArray[np.bool_]) -> NDArray[np.float64]:
    """(K, 2) ROC curve (false positive rate, true positive rate) from (0, 0) to (1, 1); ties share a step."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(positive.astype(int), scores, drop_intermediate=False)
    return np.stack([fpr, tpr], axis=1)


def read_sites(path: str | Path | None) -> tuple[str | None, dict[str, str]]:
    """(site column, slide id -> site) from a labels CSV, or (None, {}) without such a column or file."""
    if path is None or not Path(path).is_file():
        return None, {}
    header, rows = read_label_csv(path)
    col = next((c for c in SITE_COLUMNS if c in header), None)
    if col is None or "slide_id" not in header:
        return None, {}
    return col, {r["slide_id"]: r[col] for r, _ in rows if r.get("slide_id") and r.get(col)}


def _oof_rows(run_dir: Path, names: list[str]) -> tuple[list[str], NDArray[np.int64], NDArray[np.float64]]:
    path = run_dir / "predictions.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split", "train") != "test"]
    cols = [f"prob_{c}" for c in names]
    ids, ys, ps = [], [], []
    for r in rows:
        if r.get("label") not in names or any(r.get(c) in (None, "") for c in cols):
            continue
        ids.append(r["slide_id"])
        ys.append(names.index(r["label"]))
        ps.append([float(r[c]) for c in cols])
    return ids, np.asarray(ys, np.int64), np.asarray(ps, np.float64).reshape(len(ps), len(names))


def cohort_summary(run_dir: str | Path, class_names: list[str], shown: int,
                   labels_csv: str | Path | None = None) -> CohortSummary | None:
    """The summary of ``run_dir``'s out-of-fold predictions; None when the run has none to summarise."""
    run_dir = Path(run_dir)
    names = list(class_names)
    if not (run_dir / "predictions.csv").is_file():
        return None
    try:
        ids, y, probs = _oof_rows(run_dir, names)
    except (OSError, ValueError, KeyError) as exc:
        raise WsiMilError(f"{run_dir / 'predictions.csv'}: unreadable predictions ({exc}); re-run 'wsi-mil train'") from exc
    if not ids:
        return None
    positive = y == shown
    auc = roc_auc(probs[:, shown], positive) if len(names) == 2 else _recorded_auc(run_dir)
    ci, level = _recorded_ci(run_dir)
    if ci is None and auc is not None:
        level = 0.95
        ci = bootstrap_ci(y, probs, names, 1000, level, 0).get("auc")
    pred = probs.argmax(axis=1)
    conf = np.zeros((len(names), len(names)), np.int64)
    np.add.at(conf, (y, pred), 1)
    counts = {c: int((y == i).sum()) for i, c in enumerate(names)}
    roc = roc_points(probs[:, shown], positive) if positive.any() and (~positive).any() else np.zeros((0, 2))
    threshold = (f"P({names[1]}) > 0.5 (the most probable class, as the run predicts; a tie is {names[0]})"
                 if len(names) == 2 else "the most probable class, as the run predicts")
    config = _run_config(run_dir)
    site_col, sites = read_sites(labels_csv) if labels_csv is not None else (None, {})
    if not sites:
        site_col, sites = read_sites(config.get("labels_csv"))
    per_site = []
    for site in sorted({sites[s] for s in ids if s in sites}):
        m = np.array([sites.get(s) == site for s in ids])
        per_site.append(SiteFigures(site, int(m.sum()), roc_auc(probs[m, shown], positive[m]),
                                    float((pred[m] == y[m]).mean())))
    return CohortSummary(names, shown, len(ids), auc, ci, level, roc, conf, counts, threshold, per_site,
                         site_col if per_site else None)


def _run_config(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


def _metrics(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("out_of_fold") or {})
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _recorded_auc(run_dir: Path) -> float | None:
    v = (_metrics(run_dir).get("metrics") or {}).get("auc")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _recorded_ci(run_dir: Path) -> tuple[list[float] | None, float]:
    m = _metrics(run_dir)
    ci = (m.get("ci") or {}).get("auc")
    level = float(m.get("ci_level") or 0.95)
    if isinstance(ci, list) and len(ci) == 2:
        return [float(ci[0]), float(ci[1])], level
    return None, level
