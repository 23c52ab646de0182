"""Does an encoder see disease? Tile-level probes on a synthetic cohort with ground truth.

The tiles of a job tiled from a ``wsi_mil.synth`` cohort are labelled lesion / normal by the rule of
:mod:`wsi_mil.evaluation.lesion` (ambiguous tiles are left out). By default only slides with lesion
tiles are used, so a probe cannot win by recognising a slide's stain instead of the lesion. Two
label-driven read-outs of frozen features, both out-of-fold (stratified k-fold):

- ``linear_auc``: logistic regression on standardised features;
- ``knn_auc``: k-nearest-neighbour vote on L2-normalised features (cosine), which measures
  the representation itself, with no re-weighting of its dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from wsi_mil.evaluation.lesion import label_tiles
from wsi_mil.evaluation.truth import tile_lesion_fraction
from wsi_mil.mil.metrics import roc_auc
from wsi_mil.stores.patches import list_patch_stores, open_patch_store


def labelled_tiles(
    job: str | Path, cohort_dir: str | Path, positive_slides_only: bool = True
) -> tuple[NDArray[np.uint8], NDArray[np.int64], list[str]]:
    """Tiles (N, S, S, 3) uint8, labels (N,) int64 (1 = lesion, 0 = normal) and the slide id of each tile."""
    tiles, labels, slides = [], [], []
    for path in list_patch_stores(job):
        store = open_patch_store(path)
        if store.n_tiles == 0:
            continue
        frac, _ = tile_lesion_fraction(cohort_dir, store.slide_id, store.coords, store.tile_size_level0)
        keep, lesion = label_tiles(frac)
        if positive_slides_only and not lesion.any():
            continue
        tiles.append(store.read_tiles(0, store.n_tiles)[keep])
        labels.append(lesion[keep].astype(np.int64))
        slides += [store.slide_id] * int(keep.sum())
    if not tiles:
        raise ValueError(f"{job}: no labelled tiles (no slide with lesion tiles)")
    return np.concatenate(tiles), np.concatenate(labels), slides


@torch.no_grad()
def encode_tiles(
    model: nn.Module,
    tiles: NDArray[np.uint8],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> NDArray[np.float32]:
    """Features (N, D) float32 of tiles (N, S, S, 3) uint8 resized (antialiased bilinear) to ``input_size``."""
    model = model.eval().to(device)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(tiles), batch_size):
        x = torch.from_numpy(tiles[i : i + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
        if x.shape[-1] != input_size or x.shape[-2] != input_size:
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
        out.append(model((x - m) / s).float().cpu())
    return torch.cat(out).numpy()


def probe_auc(features: NDArray[np.floating], labels: NDArray[np.int64], folds: int = 5, k: int = 10,
              seed: int = 0) -> dict[str, float]:
    """Out-of-fold tile AUCs of a linear probe and of a cosine k-NN: ``linear_auc``, ``knn_auc``.

    features (N, D), labels (N,) 0/1.
    """
    from sklearn.linear_model import LogisticRegression  # sklearn: slow to import, probes only
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, int(labels.sum()), int((1 - labels).sum()))
    if folds < 2:
        raise ValueError("probe_auc needs at least 2 tiles of each class")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    linear = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    p_lin = cross_val_predict(linear, features, labels, cv=cv, method="predict_proba")[:, 1]
    unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
    p_knn = cross_val_predict(KNeighborsClassifier(k), unit, labels, cv=cv, method="predict_proba")[:, 1]
    positive = labels == 1
    lin, knn = roc_auc(p_lin, positive), roc_auc(p_knn, positive)
    if lin is None or knn is None:  # unreachable: both classes were checked above
        raise ValueError("probe_auc needs tiles of both classes")
    return {"linear_auc": lin, "knn_auc": knn}
