"""Survival analysis for MIL: the Cox loss, concordance indices, Kaplan-Meier curves, log-rank test.

Conventions: ``time`` (n,) float >= 0 (any unit), ``event`` (n,) 1 = observed, 0 = censored;
``risk`` (n,) float, higher = shorter expected survival (a Cox linear predictor).

- :func:`cox_loss`: negative Cox partial log-likelihood with Breslow's handling of tied times
  (the risk set of an event at ``t`` is every slide with time ``>= t``), averaged over events.
- :func:`harrell_c`: Harrell's c-index; :func:`uno_c`: Uno's c-index with inverse-probability-of-
  censoring weights (``1 / G(t_i)^2``, ``G`` the Kaplan-Meier estimate of the censoring
  distribution). Comparable pairs and tie rules follow scikit-survival's
  ``concordance_index_censored`` / ``concordance_index_ipcw``: an event at ``t_i`` is compared
  with every slide whose time is later, or equal and censored; equal risks count 1/2.
- :func:`kaplan_meier` and :func:`logrank_test` (G groups, chi-square with G - 1 degrees of freedom).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy.stats import chi2
from torch import Tensor

FloatArray = npt.NDArray[np.float64]


def cox_loss(risk: Tensor, time: Tensor, event: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood (Breslow ties) per event of one batch.

    Arguments:
        risk: Linear predictors of shape `(B,)` or `(B, E)` (E ensemble members: their mean loss).
        time: Times of shape `(B,)`.
        event: Event indicators of shape `(B,)` (1 observed, 0 censored; float or bool).

    Returns:
        loss: A scalar; ``sum_{i: event} [log sum_{j: t_j >= t_i} exp(r_j) - r_i] / n_events``
        (0, still attached to ``risk``'s graph, when the batch has no event).
    """
    r = risk if risk.ndim == 2 else risk.unsqueeze(1)  # (B, E)
    ev = event.to(r.dtype)
    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # [i, j]: j is in the risk set of i
    masked = torch.where(at_risk.unsqueeze(-1), r.unsqueeze(0), torch.full_like(r.unsqueeze(0), float("-inf")))
    log_denom = torch.logsumexp(masked, dim=1)  # (B, E)
    n_events = ev.sum()
    per = ((log_denom - r) * ev.unsqueeze(1)).sum(dim=0)  # (E,)
    return per.mean() / n_events.clamp(min=1.0)


def _comparable(time: FloatArray, event: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """(n, n) bool: [i, j] when an event at t_i is compared with j (t_j > t_i, or equal and censored)."""
    later = time[None, :] > time[:, None]
    tied_censored = (time[None, :] == time[:, None]) & ~event[None, :]
    return event[:, None] & (later | tied_censored)


def _weighted_concordance(time: FloatArray, event: npt.NDArray[np.bool_], risk: FloatArray, weights: FloatArray,
                          tied_tol: float) -> float | None:
    comp = _comparable(time, event)
    diff = risk[:, None] - risk[None, :]  # i has the shorter time: concordant when its risk is higher
    score = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(np.float64))
    w = weights[:, None] * comp
    denom = float(w.sum())
    if denom <= 0:
        return None
    return float((w * score).sum() / denom)


def _arrays(time: Any, event: Any, risk: Any) -> tuple[FloatArray, npt.NDArray[np.bool_], FloatArray]:
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if not (t.shape == e.shape == r.shape):
        raise ValueError(f"time, event and risk must have one shape, got {t.shape}, {e.shape}, {r.shape}")
    return t, e, r


def harrell_c(time: Any, event: Any, risk: Any, tied_tol: float = 1e-8) -> float | None:
    """Harrell's concordance index of ``risk`` (n,); None when no pair is comparable (no event)."""
    t, e, r = _arrays(time, event, risk)
    return _weighted_concordance(t, e, r, np.ones_like(t), tied_tol)


@dataclass
class KaplanMeier:
    """A Kaplan-Meier curve: ``times`` (K,) sorted unique times, ``survival`` (K,) S(t) just after each,
    ``at_risk`` (K,) and ``events`` (K,) counts at each time."""

    times: FloatArray
    survival: FloatArray
    at_risk: npt.NDArray[np.int64]
    events: npt.NDArray[np.int64]

    def __call__(self, t: Any) -> FloatArray:
        """S(t) at times ``t`` (right-continuous step function; 1 before the first time)."""
        idx = np.searchsorted(self.times, np.asarray(t, dtype=np.float64), side="right") - 1
        return np.where(idx >= 0, self.survival[np.clip(idx, 0, None)], 1.0)


def kaplan_meier(time: Any, event: Any) -> KaplanMeier:
    """Product-limit estimate ``S(t) = prod_{t_k <= t} (1 - d_k / n_k)`` over the unique times."""
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    times, inverse = np.unique(t, return_inverse=True)
    events = np.bincount(inverse, weights=e, minlength=len(times)).astype(np.int64)
    leaving = np.bincount(inverse, minlength=len(times)).astype(np.int64)
    at_risk = (len(t) - np.concatenate([[0], np.cumsum(leaving)[:-1]])).astype(np.int64)
    factor = np.where(at_risk > 0, 1.0 - events / np.maximum(at_risk, 1), 1.0)
    return KaplanMeier(times, np.cumprod(factor).astype(np.float64), at_risk, events)


def censoring_survival(time: Any, event: Any) -> KaplanMeier:
    """Kaplan-Meier estimate G(t) of the censoring distribution (censorings are the "events"; an event
    and a censoring at one time: the event first, as scikit-survival's ``CensoringDistributionEstimator``)."""
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    km = kaplan_meier(t, e)
    censored = np.bincount(np.searchsorted(km.times, t[~e]), minlength=len(km.times)).astype(np.int64)
    n_risk = km.at_risk - km.events
    factor = np.where(n_risk > 0, 1.0 - censored / np.maximum(n_risk, 1), 1.0)
    return KaplanMeier(km.times, np.cumprod(factor).astype(np.float64), n_risk, censored)


def uno_c(time: Any, event: Any, risk: Any, tau: float | None = None, train_time: Any = None,
          train_event: Any = None, tied_tol: float = 1e-8) -> float | None:
    """Uno's IPCW c-index: each event at t_i weighs ``1 / G(t_i)^2``, events at or after ``tau`` are left out.

    ``G`` is estimated from ``train_time``/``train_event`` (default: the same slides). Events where
    ``G(t_i) = 0`` (after the last censoring-free time) get weight 0. None when nothing is comparable.
    """
    t, e, r = _arrays(time, event, risk)
    g = censoring_survival(t if train_time is None else train_time, e if train_event is None else train_event)
    gt = g(t)
    w = np.zeros_like(t)
    ok = e & (gt > 0)
    w[ok] = 1.0 / gt[ok] ** 2
    if tau is not None:
        w = np.where(t < tau, w, 0.0)
    return _weighted_concordance(t, e, r, w, tied_tol)


@dataclass
class LogRank:
    """Log-rank test of G groups: chi-square statistic, degrees of freedom (G - 1), p-value."""

    statistic: float
    dof: int
    p_value: float


def logrank_test(time: Any, event: Any, groups: Any) -> LogRank:
    """The (multivariate) log-rank test of equal hazards across the labels in ``groups`` (n,)."""
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    labels, g = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
    k = len(labels)
    if k < 2:
        return LogRank(0.0, 0, 1.0)
    times = np.unique(t[e])
    observed = np.zeros(k)
    expected = np.zeros(k)
    var = np.zeros((k, k))
    for u in times:
        at = t >= u
        n_g = np.bincount(g[at], minlength=k).astype(np.float64)
        d_g = np.bincount(g[at & (t == u) & e], minlength=k).astype(np.float64)
        n, d = n_g.sum(), d_g.sum()
        observed += d_g
        expected += d * n_g / n
        if n > 1:
            frac = n_g / n
            var += d * (n - d) / (n - 1) * (np.diag(frac) - np.outer(frac, frac))
    diff = (observed - expected)[:-1]
    v = var[:-1, :-1]
    stat = float(diff @ np.linalg.pinv(v) @ diff)
    dof = k - 1
    return LogRank(stat, dof, float(chi2.sf(stat, dof)))


def risk_groups(risk: Any, n_groups: int) -> npt.NDArray[np.int64]:
    """(n,) group 0 (lowest risk) .. n_groups - 1 (highest) by the risk quantiles (median: 2, tertiles: 3)."""
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    cuts = np.quantile(r, np.linspace(0, 1, n_groups + 1)[1:-1])
    return np.searchsorted(cuts, r, side="right").astype(np.int64)


def survival_metrics(time: Any, event: Any, risk: Any) -> dict[str, float | None]:
    """Harrell's and Uno's c-index and the median-split log-rank p-value of one set of risks."""
    t, e, r = _arrays(time, event, risk)
    p = logrank_test(t, e, risk_groups(r, 2)).p_value if len(t) >= 2 and e.any() else None
    return {"c_index": harrell_c(t, e, r), "c_index_uno": uno_c(t, e, r), "logrank_p_median": p}
