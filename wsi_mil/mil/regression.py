"""Continuous slide targets: the training loss (MSE or Huber) and the regression metrics.

``target`` (n,) float in the unit of the labels CSV; ``pred`` (n,) float in that unit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from torch import Tensor

#: Huber's delta, in units of the training targets' standard deviation (targets are standardised)
HUBER_DELTA = 1.0


def regression_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Mean ``kind`` ('mse' or 'huber') loss of standardised predictions over members.

    Arguments:
        pred: Predictions of shape `(B, E)` (E ensemble members), standardised units.
        target: Standardised targets of shape `(B,)`.
    """
    expanded = target.unsqueeze(1).expand_as(pred)
    if kind == "huber":
        return F.huber_loss(pred, expanded, delta=HUBER_DELTA)
    return F.mse_loss(pred, expanded)


def _corr(fn: Any, a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(fn(a, b)[0])


def regression_metrics(target: Any, pred: Any) -> dict[str, float | None]:
    """Pearson r, Spearman rho, mean absolute error and root mean squared error of ``pred`` (n,).

    A correlation is None when it is undefined (fewer than 3 slides, or a constant input).
    """
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    if y.size == 0:
        return {"pearson_r": None, "spearman_r": None, "mae": None, "rmse": None}
    return {
        "pearson_r": _corr(pearsonr, y, p),
        "spearman_r": _corr(spearmanr, y, p),
        "mae": float(np.abs(y - p).mean()),
        "rmse": float(np.sqrt(((y - p) ** 2).mean())),
    }
