"""Warm start of a linear tile scorer from the tiles that stand out (``train.tile_init: outliers``).

From a random start, a max/top-k MIL head's top tiles are extremes along a random direction: with
one to a few lesion tiles among thousands, they almost never reach the top k and the slide-level
gradient says almost nothing about them (BENCHMARKS.md, "Few lesion tiles on feature bags"). This
module finds a starting direction from the training bags alone, before any gradient step:

1. each bag is centred on its own median feature (a slide's stain / scanner offset must not decide
   which tiles stand out);
2. the tiles of the negative bags are modelled as one Gaussian (mean, covariance);
3. the ``top_positive`` most Mahalanobis-outlying tiles of every positive bag are taken as
   positives, the ``top_negative`` most outlying tiles of every negative bag as negatives, and a
   tile-level logistic regression (scikit-learn, L2, balanced) separates them;
4. ``refits`` times: the tiles are re-selected by that regression's scores and it is refitted.

The result is a weight vector (D,) and a bias for standardised features; heads with a linear tile
scorer load it (:meth:`wsi_mil.mil.heads.base.MILHead.init_tile_scorer`) and training goes on from
there. Binary classification only (the positive class is the one whose bags hold the lesion).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: tiles taken per bag: the most outlying of each positive bag / of each negative bag
TOP_POSITIVE = 5
TOP_NEGATIVE = 50
REFITS = 3
#: inverse L2 strength of the tile-level logistic regression
C_TILE = 0.1
#: tiles per negative bag used for the Gaussian (a deterministic subsample bounds the cost)
GAUSSIAN_TILES_PER_BAG = 2000


def _top(scores: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.int64]:
    k = min(k, len(scores))
    return np.argpartition(scores, len(scores) - k)[len(scores) - k:]


def outlier_direction(
    bags: Sequence[npt.NDArray[np.floating]], labels: npt.NDArray[np.int64], top_positive: int = TOP_POSITIVE,
    top_negative: int = TOP_NEGATIVE, refits: int = REFITS, c: float = C_TILE, seed: int = 0,
) -> tuple[npt.NDArray[np.float64], float]:
    """(weight (D,), bias) of a tile scorer from standardised bags ``bags[i]`` (N_i, D) and 0/1 ``labels``.

    ``bags`` may be a lazy sequence: each of the ``refits + 2`` passes reads one bag at a time and keeps
    only its median, its selected tiles and the Gaussian's sums (memory: one bag plus D x D, not the cohort). Deterministic for a
    seed. Needs at least one bag of each label with at least one tile.
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    # one pass: each bag's median (bags are centred on it), and the negative tiles' Gaussian sums
    medians: dict[int, npt.NDArray[np.float64]] = {}
    total: npt.NDArray[np.float64] | float = 0.0  # becomes (D,) and (D, D) with the first negative bag
    outer: npt.NDArray[np.float64] | float = 0.0
    count = 0
    for i in range(len(bags)):
        x = np.asarray(bags[i], dtype=np.float64)
        if len(x) == 0:
            continue
        medians[i] = np.median(x, axis=0)
        if labels[i] == 0:
            x = x - medians[i]
            if len(x) > GAUSSIAN_TILES_PER_BAG:
                x = x[rng.choice(len(x), GAUSSIAN_TILES_PER_BAG, replace=False)]
            total = total + x.sum(axis=0)
            outer = outer + x.T @ x
            count += len(x)
    keep = list(medians)
    if not any(labels[i] == 1 for i in keep) or not any(labels[i] == 0 for i in keep):
        raise ValueError("tile_init: outliers needs training bags of both classes with tiles")
    dim = len(medians[keep[0]])

    def centred(i: int) -> npt.NDArray[np.float64]:
        return np.asarray(bags[i], dtype=np.float64) - medians[i]

    mean = np.asarray(total) / count
    cov = np.asarray(outer) / max(count - 1, 1) - np.outer(mean, mean) * count / max(count - 1, 1)
    precision = np.linalg.pinv(cov + 1e-6 * np.eye(dim))

    def mahalanobis(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        d = x - mean
        return np.einsum("ij,ij->i", d @ precision, d)  # one BLAS product: a three-operand einsum is ~20x slower

    score = mahalanobis
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    for _ in range(refits + 1):
        pos: list[npt.NDArray[np.float64]] = []
        neg: list[npt.NDArray[np.float64]] = []
        for i in keep:
            x = centred(i)
            (pos if labels[i] == 1 else neg).append(x[_top(score(x), top_positive if labels[i] == 1 else top_negative)])
        x_fit = np.concatenate(pos + neg)
        n_pos = int(sum(len(p) for p in pos))
        y_fit = np.r_[np.ones(n_pos), np.zeros(len(x_fit) - n_pos)]
        model.fit(x_fit, y_fit)
        score = model.decision_function
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])
