"""Tile-level evaluation against ground truth: do tile scores rank lesion tiles first?

Tiles are labelled by the one rule of :mod:`wsi_mil.evaluation.lesion` (ambiguous tiles left out).
Tile AUC (:func:`wsi_mil.mil.metrics.roc_auc`) is computed within each slide that has both lesion and
normal tiles and averaged over those slides, and pooled over the tiles of all slides.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from wsi_mil.evaluation.lesion import is_lesion_tile, label_tiles
from wsi_mil.evaluation.truth import TruthFn
from wsi_mil.mil.metrics import roc_auc
from wsi_mil.stores.common import slide_id_of
from wsi_mil.stores.features import list_feature_files, read_feature_file

if TYPE_CHECKING:  # only its methods are called: no torch at import
    from wsi_mil.mil.modelrun import ModelRun


@dataclass(frozen=True)
class SlideTileScores:
    """One slide: tile scores (N,), lesion share of each tile (N,) in [0, 1], whether it has lesion."""

    scores: NDArray[np.floating]
    fraction: NDArray[np.floating]
    positive: bool


@dataclass
class TileEvaluation:
    """Tile AUCs and counts; ``n_tiles`` counts every tile scored, ambiguous ones included."""

    tile_auc_mean: float | None  # mean over slides of the within-slide tile AUC (where defined)
    tile_auc_pooled: float | None  # lesion vs normal tiles of all slides together
    n_slides: int  # slides whose within-slide tile AUC is defined
    n_lesion_tiles: int
    n_tiles: int
    n_normal_tiles: int
    n_positive: int  # slides with lesion in their ground truth
    top_tile_hits: int  # positive slides whose top-scored tile is a lesion tile
    top_tile_touch: int  # positive slides whose top-scored tile overlaps a lesion at all


def evaluate_tile_scores(slides: Iterable[SlideTileScores]) -> TileEvaluation:
    """Compare each slide's tile scores with its lesion shares; slides with no tiles are skipped."""
    per_slide: list[float] = []
    pooled_scores: list[NDArray[np.floating]] = []
    pooled_lesion: list[NDArray[np.bool_]] = []
    n_tiles = n_positive = hits = touch = 0
    for s in slides:
        scores, fraction = np.asarray(s.scores), np.asarray(s.fraction)
        if scores.shape != fraction.shape or scores.ndim != 1:
            raise ValueError(f"tile scores {scores.shape} and lesion shares {fraction.shape} must be (N,) alike")
        if scores.size == 0:
            continue
        n_tiles += scores.size
        labelled, lesion = label_tiles(fraction)
        pooled_scores.append(scores[labelled])
        pooled_lesion.append(lesion[labelled])
        auc = roc_auc(scores[labelled], lesion[labelled])
        if auc is not None:
            per_slide.append(auc)
        if s.positive:
            n_positive += 1
            top = int(np.argmax(scores))
            hits += int(is_lesion_tile(fraction[top]))
            touch += int(fraction[top] > 0)
    y = np.concatenate(pooled_lesion) if pooled_lesion else np.zeros(0, bool)
    x = np.concatenate(pooled_scores) if pooled_scores else np.zeros(0)
    n_lesion = int(y.sum())
    return TileEvaluation(
        tile_auc_mean=float(np.mean(per_slide)) if per_slide else None, tile_auc_pooled=roc_auc(x, y),
        n_slides=len(per_slide), n_lesion_tiles=n_lesion, n_tiles=n_tiles, n_normal_tiles=int(y.size) - n_lesion,
        n_positive=n_positive, top_tile_hits=hits, top_tile_touch=touch,
    )


def evaluate_tiles(run: ModelRun, features_dir: str | Path, truth: TruthFn, positive_class: int = 1) -> TileEvaluation:
    """Score every slide in ``features_dir`` with ``run``; compare tile scores of ``positive_class`` with ``truth``."""

    def slides() -> Iterable[SlideTileScores]:
        for path in list_feature_files(features_dir):
            ff = read_feature_file(path, run.encoder_id, run.embed_dim)
            if ff.n_tiles == 0:
                continue
            fraction = np.asarray(truth(slide_id_of(path), ff.coords), dtype=np.float64)
            scores = run.predict_bag(ff.features).tile_scores[:, positive_class]
            yield SlideTileScores(scores, fraction, bool((fraction > 0).any()))

    return evaluate_tile_scores(slides())
