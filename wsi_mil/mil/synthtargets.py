"""Synthetic survival and regression cohorts of feature bags whose outcome grows with the lesion fraction.

Built on :func:`wsi_mil.mil.synthbags.make_synthetic_bags`: each slide's true lesion fraction
``f_i`` (share of lesion tiles) drives the outcome. Survival: hazard ``h_i = exp(beta * z_i)`` with
``z_i`` the standardised ``f_i``, event time ``T_i ~ Exponential(h_i)``, censoring time
``C_i ~ Exponential(c)`` with ``c`` solved so that the expected censored share is ``censoring``;
``time = min(T, C)``, ``event = T <= C``. Regression: ``target = scale * f_i + N(0, noise^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import brentq

from wsi_mil.atomic import write_text_atomic
from wsi_mil.mil.synthbags import SyntheticCohort, make_synthetic_bags, write_synthetic_cohort


@dataclass
class TargetCohort:
    """Bags and ground truth (``cohort``), the true lesion fraction (n,), and the targets:
    ``time``/``event`` (n,) for survival, ``target`` (n,) for regression."""

    cohort: SyntheticCohort
    lesion_fraction: np.ndarray
    time: np.ndarray
    event: np.ndarray
    target: np.ndarray


def make_target_cohort(n_slides: int = 120, beta: float = 1.5, censoring: float = 0.3, noise: float = 0.1,
                       scale: float = 10.0, seed: int = 0, **bag_options: object) -> TargetCohort:
    """Draw a cohort (see the module docstring); ``bag_options`` go to :func:`make_synthetic_bags`
    (default here: 80 % of slides carry 1-8 % lesion tiles). Deterministic for a seed."""
    opts: dict[str, object] = {"positive_fraction": 0.8, "lesion_fraction": (0.01, 0.08), **bag_options}
    cohort = make_synthetic_bags(n_slides=n_slides, seed=seed, **opts)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed + 7919)
    frac = np.array([les.mean() for les in cohort.lesion], dtype=np.float64)
    z = (frac - frac.mean()) / (frac.std() or 1.0)
    hazard = np.exp(beta * z)
    t_event = rng.exponential(1.0 / hazard)
    rate = brentq(lambda c: float(np.mean(c / (c + hazard))) - censoring, 1e-9, 1e9) if censoring > 0 else 0.0
    t_cens = rng.exponential(1.0 / rate, size=n_slides) if rate > 0 else np.full(n_slides, np.inf)
    time = np.minimum(t_event, t_cens)
    event = (t_event <= t_cens).astype(np.int64)
    target = scale * frac + rng.normal(0.0, noise, size=n_slides)
    return TargetCohort(cohort, frac, time, event, target)


def write_target_cohort(tc: TargetCohort, folder: str | Path, task: str, labels_csv: str | Path) -> tuple[Path, Path]:
    """Feature files ``folder/{slide_id}.h5`` and the labels CSV of ``task`` (survival or regression)."""
    folder, _ = write_synthetic_cohort(tc.cohort, folder, labels_csv=Path(labels_csv).with_suffix(".classes.csv"))
    c = tc.cohort
    if task == "survival":
        lines = ["slide_id,time,event,case_id"] + [f"{s},{t:.6g},{e},{g}" for s, t, e, g in
                                                   zip(c.slide_ids, tc.time, tc.event, c.case_ids, strict=True)]
    else:
        lines = ["slide_id,target,case_id"] + [f"{s},{v:.6g},{g}" for s, v, g in
                                               zip(c.slide_ids, tc.target, c.case_ids, strict=True)]
    write_text_atomic(Path(labels_csv), "\n".join(lines) + "\n")
    return folder, Path(labels_csv)
