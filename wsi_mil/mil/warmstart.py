"""Warm starts of a linear tile scorer (``train.tile_init: contrast`` and ``outliers``).

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

``contrast`` (:func:`contrast_direction`, the default on slides) asks instead which direction makes the
positive bags' tiles more heavy-tailed than the negative bags' ones: the top generalised eigenvector of
the two classes' fourth-moment matrices (the FOBI matrix E[|x|^2 x x^T] of each bag, averaged per
class). A lesion of one to three tiles among hundreds barely moves a bag's mean or covariance, but its
tiles are far out along one direction, and the fourth moment weighs them by their squared distance.
On the 200-slide few-lesion cohort that direction alone ranks the slides at 0.83 AUC (max tile; the
tile-supervised oracle on the same features 0.83-0.86), where the outlier start stays near chance
(BENCHMARKS.md, "Few lesion tiles: a fourth-moment contrast start").

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
#: ridge of the negative class's fourth-moment matrix, as a share of its mean eigenvalue
CONTRAST_SHRINK = 0.1

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


def fourth_moment(x: torch.Tensor) -> torch.Tensor:
    """FOBI matrix of one bag (N, D), centred on its mean: (1/N) sum_i (|x_i|^2 / D) x_i x_i^T, (D, D)."""
    x = x - x.mean(0)
    weight = (x * x).sum(1, keepdim=True) / x.shape[1]
    return (x * weight).T @ x / len(x)


def _class_means(bags: Sequence[Bag], labels: npt.NDArray[np.int64], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the bags of each class (0, 1) of :func:`fourth_moment`; negative bags above
    :data:`GAUSSIAN_TILES_PER_BAG` tiles are subsampled (their moment is an average; a positive bag keeps
    every tile: its few lesion tiles are the signal)."""
    rng = np.random.default_rng(seed)
    sums: dict[int, torch.Tensor] = {}
    counts = {0: 0, 1: 0}
    for i in range(len(bags)):
        x = _float64(bags[i])
        if len(x) < 2:
            continue
        label = int(labels[i])
        if label == 0 and len(x) > GAUSSIAN_TILES_PER_BAG:
            x = x[torch.as_tensor(rng.choice(len(x), GAUSSIAN_TILES_PER_BAG, replace=False), device=x.device)]
        m = fourth_moment(x)
        sums[label] = m if label not in sums else sums[label] + m.to(sums[label].device)
        counts[label] += 1
    if counts[0] == 0 or counts[1] == 0:
        raise ValueError("tile_init: contrast needs training bags of both classes with at least 2 tiles")
    return sums[0] / counts[0], sums[1] / counts[1]


def contrast_direction(
    bags: Sequence[Bag], labels: npt.NDArray[np.int64], shrink: float = CONTRAST_SHRINK, seed: int = 0,
) -> tuple[npt.NDArray[np.float64], float]:
    """(weight (D,), bias 0) of a tile scorer from standardised bags ``bags[i]`` (N_i, D) and 0/1 ``labels``.

    The weight is the top generalised eigenvector v of ``M1 v = l (M0 + shrink * tr(M0) / D * I) v``,
    with Mc the class means of the bags' :func:`fourth_moment`; its sign is the one along which the
    positive bags' highest tile stands higher than the negative bags' (slide AUC of the max tile over
    the training bags), and it is scaled to unit variance over the negative bags' tiles. Two passes, one
    bag at a time (memory: one bag plus a few D x D); deterministic for a seed.
    """
    labels = np.asarray(labels)
    m0, m1 = (m.cpu() for m in _class_means(bags, labels, seed))
    dim = m0.shape[0]
    ridge = m0 + shrink * float(torch.trace(m0)) / dim * torch.eye(dim, dtype=m0.dtype)
    lower = torch.linalg.cholesky(ridge)
    inv = torch.linalg.solve_triangular(lower, torch.eye(dim, dtype=m0.dtype), upper=False)
    _, vectors = torch.linalg.eigh(inv @ m1 @ inv.T)
    v = (inv.T @ vectors[:, -1]).numpy()
    highs, lows, y, negative_sq, negative_n = [], [], [], 0.0, 0
    for i in range(len(bags)):
        x = _float64(bags[i])
        if len(x) == 0:
            continue
        s = (x - x.mean(0)) @ torch.as_tensor(v, device=x.device)
        highs.append(float(s.max()))
        lows.append(float(-s.min()))
        y.append(int(labels[i]))
        if labels[i] == 0:
            negative_sq += float((s * s).sum())
            negative_n += len(s)
    sign = 1.0 if binary_auc(np.asarray(highs), np.asarray(y)) >= binary_auc(np.asarray(lows), np.asarray(y)) else -1.0
    scale = np.sqrt(negative_sq / max(negative_n, 1)) or 1.0
    return sign * v / scale, 0.0


def binary_auc(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> float:
    """:func:`wsi_mil.mil.metrics.roc_auc` of ``scores`` for 0/1 ``labels``, 0.5 when a class is missing."""
    from wsi_mil.mil.metrics import roc_auc

    auc = roc_auc(scores, np.asarray(labels) == 1)
    return 0.5 if auc is None else auc
