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
import torch

#: tiles taken per bag: the most outlying of each positive bag / of each negative bag
TOP_POSITIVE = 5
TOP_NEGATIVE = 50
REFITS = 3
#: inverse L2 strength of the tile-level logistic regression
C_TILE = 0.1
#: tiles per negative bag used for the Gaussian (a deterministic subsample bounds the cost)
GAUSSIAN_TILES_PER_BAG = 2000

Bag = npt.NDArray[np.floating] | torch.Tensor


def _float64(bag: Bag) -> torch.Tensor:
    """A bag (N, D) as float64 on its own device (a NumPy bag: on the CPU, without a copy when float64)."""
    if isinstance(bag, torch.Tensor):
        return bag.to(torch.float64)
    return torch.from_numpy(np.asarray(bag, dtype=np.float64))


def _median(x: torch.Tensor) -> torch.Tensor:
    """Per-column median of (N, D), N >= 1, as NumPy's: the mean of the two middle values when N is even."""
    v = torch.sort(x, dim=0).values
    n = len(v)
    return (v[(n - 1) // 2] + v[n // 2]) / 2


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(scores, min(k, len(scores)), sorted=False).indices


def outlier_direction(
    bags: Sequence[Bag], labels: npt.NDArray[np.int64], top_positive: int = TOP_POSITIVE,
    top_negative: int = TOP_NEGATIVE, refits: int = REFITS, c: float = C_TILE, seed: int = 0,
) -> tuple[npt.NDArray[np.float64], float]:
    """(weight (D,), bias) of a tile scorer from standardised bags ``bags[i]`` (N_i, D) and 0/1 ``labels``.

    Bags are NumPy arrays or tensors; the per-tile work (medians, the Gaussian's sums, Mahalanobis and
    regression scores) runs in float64 on each bag's device (the GPU when the bags are there), only the
    selected tiles go to scikit-learn. ``bags`` may be a lazy sequence: each of the ``refits + 2`` passes
    reads one bag at a time and keeps only its median, its selected tiles and the Gaussian's sums (memory:
    one bag plus D x D, not the cohort). Deterministic for a seed. Needs at least one bag of each label
    with at least one tile.
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    # one pass: each bag's median (bags are centred on it), and the negative tiles' Gaussian sums
    medians: dict[int, torch.Tensor] = {}
    total: torch.Tensor | None = None  # (D,) and (D, D), from the first negative bag
    outer: torch.Tensor | None = None
    count = 0
    for i in range(len(bags)):
        x = _float64(bags[i])
        if len(x) == 0:
            continue
        medians[i] = _median(x)
        if labels[i] == 0:
            x = x - medians[i]
            if len(x) > GAUSSIAN_TILES_PER_BAG:
                x = x[torch.as_tensor(rng.choice(len(x), GAUSSIAN_TILES_PER_BAG, replace=False), device=x.device)]
            total = x.sum(0) if total is None else total + x.sum(0).to(total.device)
            outer = x.T @ x if outer is None else outer + (x.T @ x).to(outer.device)
            count += len(x)
    keep = list(medians)
    if total is None or outer is None or not any(labels[i] == 1 for i in keep):
        raise ValueError("tile_init: outliers needs training bags of both classes with tiles")
    dim = len(medians[keep[0]])
    device = medians[keep[0]].device  # where the bags are (the GPU when they are there): the scoring runs there

    def centred(i: int) -> torch.Tensor:
        return _float64(bags[i]).to(device) - medians[i].to(device)

    mean_np = total.cpu().numpy() / count
    cov = outer.cpu().numpy() / max(count - 1, 1) - np.outer(mean_np, mean_np) * count / max(count - 1, 1)
    mean = torch.from_numpy(mean_np).to(device)
    precision = torch.from_numpy(np.linalg.pinv(cov + 1e-6 * np.eye(dim))).to(device)
    linear: tuple[torch.Tensor, float] | None = None  # the last regression's (weight (D,) on ``device``, bias)

    def score(x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance to the negative tiles' Gaussian; after a regression, its decision value."""
        if linear is None:
            d = x - mean
            return ((d @ precision) * d).sum(1)
        return x @ linear[0] + linear[1]

    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    for _ in range(refits + 1):
        pos: list[npt.NDArray[np.float64]] = []
        neg: list[npt.NDArray[np.float64]] = []
        for i in keep:
            x = centred(i)
            chosen = x[_top(score(x), top_positive if labels[i] == 1 else top_negative)]
            (pos if labels[i] == 1 else neg).append(chosen.cpu().numpy())
        x_fit = np.concatenate(pos + neg)
        n_pos = int(sum(len(p) for p in pos))
        y_fit = np.r_[np.ones(n_pos), np.zeros(len(x_fit) - n_pos)]
        model.fit(x_fit, y_fit)
        linear = torch.from_numpy(model.coef_[0].astype(np.float64)).to(device), float(model.intercept_[0])
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])
