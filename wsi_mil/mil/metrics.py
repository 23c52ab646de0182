"""Classification metrics with bootstrap confidence intervals.

``probs`` (n, C) class probabilities, ``y`` (n,) int class indices. AUC is the binary ROC AUC of
class 1 for C = 2, and the macro mean of one-vs-rest AUCs for C > 2 (with ``auc_<class>`` per
class). A metric that is undefined (one class only) is ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import rankdata


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney, ties count 1/2) of ``scores`` (n,) for bool ``positive`` (n,)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, float | None]:
    """AUC, accuracy, balanced accuracy (mean per-class recall) and per-class AUC for C > 2."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    out: dict[str, float | None] = {}
    c = probs.shape[1]
    if c == 2:
        out["auc"] = roc_auc(probs[:, 1], y == 1)
    else:
        per = {name: roc_auc(probs[:, i], y == i) for i, name in enumerate(class_names)}
        defined = [v for v in per.values() if v is not None]
        out["auc"] = float(np.mean(defined)) if len(defined) == c else None
        out.update({f"auc_{k}": v for k, v in per.items()})
    out["accuracy"] = float((pred == y).mean()) if y.size else None
    recalls = [float((pred[y == i] == i).mean()) for i in range(c) if (y == i).any()]
    out["balanced_accuracy"] = float(np.mean(recalls)) if recalls else None
    return out


def bootstrap_ci(
    y: np.ndarray, probs: np.ndarray, class_names: list[str], n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, list[float] | None]:
    """Percentile bootstrap interval ``[low, high]`` of each metric over ``n_boot`` resamples of slides."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        for k, v in classification_metrics(y[idx], probs[idx], class_names).items():
            if v is not None:
                samples.setdefault(k, []).append(v)
    keys = classification_metrics(y, probs, class_names).keys()
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: ([float(np.percentile(samples[k], lo)), float(np.percentile(samples[k], hi))]
                if len(samples.get(k, [])) >= max(10, n_boot // 2) else None) for k in keys}


def summarize(per_fold: list[dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation (ddof=0) of each metric over folds where it is defined."""
    out: dict[str, dict[str, Any]] = {}
    for k in per_fold[0] if per_fold else []:
        vals = [float(v) for m in per_fold if (v := m.get(k)) is not None]
        out[k] = {"mean": float(np.mean(vals)) if vals else None,
                  "std": float(np.std(vals)) if vals else None, "n_folds": len(vals)}
    return out


def bootstrap_intervals(
    metric: Callable[[np.ndarray], dict[str, float | None]], n: int, n_boot: int = 1000, level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap ``[low, high]`` of each metric ``metric(idx)`` computes on resampled slide
    positions ``idx`` (n,) (any task); None where fewer than half the resamples define it."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        for k, v in metric(rng.integers(0, n, n)).items():
            if v is not None:
                samples.setdefault(k, []).append(v)
    keys = metric(np.arange(n)).keys()
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: ([float(np.percentile(samples[k], lo)), float(np.percentile(samples[k], hi))]
                if len(samples.get(k, [])) >= max(10, n_boot // 2) else None) for k in keys}
