"""Tile-level evaluation against ground truth: do tile scores rank lesion tiles first?

For a synthetic cohort (``wsi_mil.synth``) every tile gets the share of its area covered by lesion
(``lesion_fraction``); a tile counts as a lesion tile when that share exceeds ``min_fraction``.
Tile AUC is computed per positive slide (tile scores of the positive class against lesion
tiles) and averaged, and also pooled over all tiles of all slides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_mil.mil.metrics import roc_auc
from wsi_mil.mil.modelrun import ModelRun
from wsi_mil.stores.common import slide_id_of
from wsi_mil.stores.features import list_feature_files, read_feature_file

#: (slide_id, coords (N, 2)) -> per-tile lesion share (N,)
TruthFn = Callable[[str, np.ndarray], np.ndarray]


@dataclass
class TileEvaluation:
    """Mean per-slide tile AUC over positive slides, pooled tile AUC, and counts."""

    tile_auc_mean: float | None
    tile_auc_pooled: float | None
    n_slides: int
    n_lesion_tiles: int
    n_tiles: int


def evaluate_tiles(
    run: ModelRun, features_dir: str | Path, truth: TruthFn, positive_class: int = 1, min_fraction: float = 0.5,
) -> TileEvaluation:
    """Score every slide in ``features_dir`` with ``run`` and compare tile scores with ``truth``."""
    per_slide, all_scores, all_truth = [], [], []
    for path in list_feature_files(features_dir):
        ff = read_feature_file(path, run.encoder_id, run.embed_dim)
        if ff.n_tiles == 0:
            continue
        scores = run.predict_bag(ff.features).tile_scores[:, positive_class]
        lesion = truth(slide_id_of(path), ff.coords) > min_fraction
        all_scores.append(scores)
        all_truth.append(lesion)
        auc = roc_auc(scores, lesion)
        if auc is not None:
            per_slide.append(auc)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    lesion = np.concatenate(all_truth) if all_truth else np.zeros(0, bool)
    return TileEvaluation(float(np.mean(per_slide)) if per_slide else None, roc_auc(scores, lesion),
                          len(per_slide), int(lesion.sum()), int(lesion.size))


def synth_truth(cohort_dir: str | Path, job: str | Path) -> TruthFn:
    """Ground truth of a ``wsi_mil.synth`` cohort for tiles of the job's patch stores."""
    from wsi_mil.jobdir import patch_store_path
    from wsi_mil.stores.patches import open_patch_store
    from wsi_mil.synth import lesion_fraction, load_lesion_mask

    def truth(slide_id: str, coords: np.ndarray) -> np.ndarray:
        mask, ds = load_lesion_mask(cohort_dir, slide_id)
        size = float(open_patch_store(patch_store_path(job, slide_id)).attrs["tile_size_level0"])
        return lesion_fraction(mask, ds, coords, size)

    return truth
