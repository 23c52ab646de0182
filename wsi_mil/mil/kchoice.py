"""WELDON's ``k_top`` / ``k_bottom: auto`` on slides, read off the warm start before training.

A fixed k cannot serve both kinds of positive slide: with one to three lesion tiles among thousands the
top-10 mean dilutes them (few-lesion feature bags: k 1 -> 0.993 slide AUC, k 10 -> 0.930), while a weak
lesion over 1-5 % of the tiles needs a mean over tens of tiles to rise above the noise (k 2 -> 0.659,
k 10 -> 0.783, 2 % of the bag -> 0.823; BENCHMARKS.md, "WELDON's k from the warm start"). Once the tile
scorer starts from a direction that already ranks lesion tiles high (:mod:`wsi_mil.mil.warmstart`), the
training bags say which of the two they are: for every candidate k, WELDON's own pooling of the start's tile
scores ranks the training slides, and the k whose ranking separates the classes best (ROC AUC, training
slides only) is kept. One pass of scoring, no gradient step; deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from wsi_mil.mil.minmax import KSpec, minmax_pool
from wsi_mil.mil.warmstart import binary_auc

#: the k tried, in order of preference on ties: tile counts, then shares of the bag (1 % - 5 %)
K_CANDIDATES: tuple[KSpec, ...] = (1, 2, 3, 5, 10, 0.01, 0.02, 0.05)


def pooled_scores(tile_scores: Sequence[Tensor], k_top: KSpec, k_bottom: KSpec | None,
                  negative_weight: float) -> npt.NDArray[np.float64]:
    """WELDON's slide score (:func:`~wsi_mil.mil.minmax.minmax_pool`) of each bag's tile scores (N_i,): (n_bags,)."""
    out = np.empty(len(tile_scores))
    for i, s in enumerate(tile_scores):
        scores = s.reshape(1, -1, 1)
        mask = torch.ones(scores.shape[:2], dtype=torch.bool, device=s.device)
        out[i] = float(minmax_pool(scores, mask, k_top, k_bottom, negative_weight)) if s.numel() else 0.0
    return out


def choose_k(tile_scores: Sequence[Tensor], labels: npt.NDArray[np.int64], k_top: KSpec | None,
             k_bottom: KSpec | None, negative_weight: float, bottom_auto: bool,
             candidates: Sequence[KSpec] = K_CANDIDATES) -> tuple[KSpec, KSpec | None, dict[str, float]]:
    """(k_top, k_bottom, AUC per candidate) from the training bags' start tile scores ``tile_scores[i]`` (N_i,)
    and their 0/1 ``labels``.

    ``k_top`` None is the side to choose (a candidate), else it stays; ``k_bottom`` likewise when
    ``bottom_auto`` (the candidate), else it stays as given (None: no negative evidence). The first
    candidate of the highest AUC wins.
    """
    labels = np.asarray(labels)
    if k_top is not None and not bottom_auto:
        candidates = candidates[:1]  # nothing to choose: one readout
    if not candidates:
        raise ValueError("choose_k needs at least one candidate k")
    rows = []
    for c in candidates:
        top = c if k_top is None else k_top
        bottom = c if bottom_auto else k_bottom
        rows.append((str(c), binary_auc(pooled_scores(tile_scores, top, bottom, negative_weight), labels), top, bottom))
    _, _, best_top, best_bottom = max(rows, key=lambda row: row[1])  # the first of the highest AUC
    return best_top, best_bottom, {name: round(auc, 4) for name, auc, _, _ in rows}
