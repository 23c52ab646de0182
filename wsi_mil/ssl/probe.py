"""Does an encoder see disease? Tile-level probes on a synthetic cohort with ground truth.

The tiles of a job tiled from a ``wsi_mil.synth`` cohort are labelled from the lesion masks:
lesion when more than ``min_lesion`` of the tile is lesion, normal when none of it is (tiles
in between are left out). By default only slides with lesions are used, so a probe cannot
win by recognising a slide's stain instead of the lesion. Two label-driven read-outs of frozen
features, both out-of-fold (stratified k-fold):

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
from torch import nn


def labelled_tiles(
    job: str | Path, cohort_dir: str | Path, min_lesion: float = 0.5, positive_slides_only: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Tiles (N, S, S, 3) uint8, labels (N,) int (1 = lesion) and the slide id of each tile."""
    from wsi_mil.stores.patches import list_patch_stores, open_patch_store
    from wsi_mil.synth import lesion_fraction, load_lesion_mask

    tiles, labels, slides = [], [], []
    for path in list_patch_stores(job):
        store = open_patch_store(path)
        if store.n_tiles == 0:
            continue
        mask, ds = load_lesion_mask(cohort_dir, store.slide_id)
        frac = lesion_fraction(mask, ds, store.coords, store.tile_size_level0)
        lesion, normal = frac > min_lesion, frac == 0
        if positive_slides_only and not lesion.any():
            continue
        keep = lesion | normal
        tiles.append(store.read_tiles(0, store.n_tiles)[keep])
        labels.append(lesion[keep].astype(np.int64))
        slides += [store.slide_id] * int(keep.sum())
    if not tiles:
        raise ValueError(f"{job}: no labelled tiles (no slide with lesion tiles)")
    return np.concatenate(tiles), np.concatenate(labels), slides


@torch.no_grad()
def encode_tiles(
    model: nn.Module,
    tiles: np.ndarray,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Features (N, D) float32 of whole tiles resized (antialiased bilinear) to ``input_size``."""
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


def probe_auc(features: np.ndarray, labels: np.ndarray, folds: int = 5, k: int = 10, seed: int = 0) -> dict[str, float]:
    """Out-of-fold tile AUCs of a linear probe and of a cosine k-NN: ``linear_auc``, ``knn_auc``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
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
    return {"linear_auc": float(roc_auc_score(labels, p_lin)), "knn_auc": float(roc_auc_score(labels, p_knn))}
