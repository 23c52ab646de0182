"""Figures of a survival or regression run's out-of-fold predictions, as PNG bytes (matplotlib's
object API, no pyplot state: safe in worker processes).

- :func:`km_figure`: Kaplan-Meier curves of the slides split by predicted risk at the median (left)
  and at the tertiles (right), each with its log-rank p-value.
- :func:`scatter_figure`: predicted against true target, with the identity line, Pearson and
  Spearman r and the MAE.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from wsi_mil.mil.regression import regression_metrics
from wsi_mil.mil.survival import kaplan_meier, logrank_test, risk_groups

KM_FILE = "km_curves.png"
SCATTER_FILE = "predicted_vs_true.png"
_GROUP_NAMES = {2: ("low risk", "high risk"), 3: ("low risk", "intermediate risk", "high risk")}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _fmt_p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 1e-4 else "p < 0.0001"


def km_figure(time: Any, event: Any, risk: Any) -> bytes:
    """Two panels of Kaplan-Meier curves (median split, tertiles) of ``time``/``event`` (n,) by ``risk`` (n,)."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, k in zip(axes, (2, 3), strict=True):
        groups = risk_groups(risk, k)
        for g, name in enumerate(_GROUP_NAMES[k]):
            m = groups == g
            if not m.any():
                continue
            km = kaplan_meier(t[m], e[m])
            xs = np.concatenate([[0.0], km.times])
            ys = np.concatenate([[1.0], km.survival])
            ax.step(xs, ys, where="post", label=f"{name} (n={int(m.sum())}, events {int(e[m].sum())})")
            cens = m & ~e
            ax.plot(t[cens], km(t[cens]), "|", color=ax.lines[-1].get_color(), markersize=7)
        test = logrank_test(t, e, groups)
        ax.set_title(f"{'median' if k == 2 else 'tertiles'} of the predicted risk: log-rank {_fmt_p(test.p_value)}",
                     fontsize=10)
        ax.set_xlabel("time")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("survival probability (Kaplan-Meier)")
    fig.suptitle("out-of-fold predicted risk", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def scatter_figure(target: Any, pred: Any) -> bytes:
    """Predicted (y axis) against true (x axis) values of ``target``/``pred`` (n,), with the identity line."""
    y = np.asarray(target, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    m = regression_metrics(y, p)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(y, p, s=14, alpha=0.7)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="identity")
    parts = [f"{name} {m[key]:.3f}" for name, key in (("Pearson r", "pearson_r"), ("Spearman r", "spearman_r"),
                                                      ("MAE", "mae")) if m[key] is not None]
    ax.set_title("out-of-fold predictions\n" + ", ".join(parts), fontsize=9)
    ax.set_xlabel("true target")
    ax.set_ylabel("predicted")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
