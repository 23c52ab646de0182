"""How well a run's predicted tile scores find the planted lesions of a synthetic cohort.

Reads ``predict``'s per-tile CSVs (``OUT.tiles/{slide_id}.csv``: level-0 ``x``, ``y`` and
``score_{class}``) and evaluates the scores of the run's positive class (class index 1) with
:func:`wsi_mil.evaluation.tiles.evaluate_tile_scores`: the figures ``wsi-mil demo`` prints.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from wsi_mil.evaluation.lesion import LESION_TILE_FRACTION
from wsi_mil.evaluation.tiles import SlideTileScores, TileEvaluation, evaluate_tile_scores
from wsi_mil.evaluation.truth import tile_lesion_fraction
from wsi_mil.jobdir import patch_store_path
from wsi_mil.stores.patches import open_patch_store


@dataclass
class Localisation:
    """How well tile scores find the planted lesions (tiles of every slide; see ``describe``)."""

    tile_auc: float | None  # pooled over all slides: lesion tiles vs normal tiles
    mean_slide_tile_auc: float | None  # mean over positive slides of the within-slide tile AUC
    top_tile_hits: int  # positive slides whose top-scored tile is a lesion tile
    top_tile_touch: int  # positive slides whose top-scored tile overlaps a lesion at all
    n_positive: int
    n_lesion_tiles: int
    n_normal_tiles: int

    @classmethod
    def of(cls, ev: TileEvaluation) -> Localisation:
        return cls(ev.tile_auc_pooled, ev.tile_auc_mean, ev.top_tile_hits, ev.top_tile_touch, ev.n_positive,
                   ev.n_lesion_tiles, ev.n_normal_tiles)

    def describe(self) -> list[str]:
        f = (lambda v: "n/a" if v is None else f"{v:.3f}")
        share = (lambda k: f"{k}/{self.n_positive}" + (f" = {k / self.n_positive:.0%}" if self.n_positive else ""))
        return [
            f"tile AUC, lesion vs normal tiles, all slides: {f(self.tile_auc)} "
            f"({self.n_lesion_tiles} lesion tiles >= {LESION_TILE_FRACTION:.0%} lesion, "
            f"{self.n_normal_tiles} normal tiles)",
            f"tile AUC within each positive slide, mean: {f(self.mean_slide_tile_auc)}",
            f"top-scored tile is a lesion tile: {share(self.top_tile_hits)} positive slides; "
            f"overlaps a lesion: {share(self.top_tile_touch)}",
        ]


def read_tile_scores(path: str | Path, class_name: str) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(coords (N, 2) int64 level-0 x, y; scores (N,) float64 of ``class_name``) from a ``.tiles`` CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    coords = np.array([[int(r["x"]), int(r["y"])] for r in rows], dtype=np.int64).reshape(-1, 2)
    scores = np.array([float(r[f"score_{class_name}"]) for r in rows], dtype=np.float64)
    return coords, scores


def evaluate_localisation(cohort: Path, job: Path, predictions_csv: Path, run_dir: Path) -> Localisation:
    """Compare the run's tile scores (``predict``'s ``.tiles`` CSVs) with the planted lesions."""
    from wsi_mil.mil.stage import tiles_dir_of  # mil.stage loads torch

    run_cfg = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
    positive = str(run_cfg["class_names"][1])

    def slides() -> Iterable[SlideTileScores]:
        for path in sorted(tiles_dir_of(predictions_csv).glob("*.csv")):
            coords, scores = read_tile_scores(path, positive)
            if len(scores) == 0:
                continue
            size = open_patch_store(patch_store_path(job, path.stem)).tile_size_level0
            fraction, has_lesion = tile_lesion_fraction(cohort, path.stem, coords, size)
            yield SlideTileScores(scores, fraction, has_lesion)

    return Localisation.of(evaluate_tile_scores(slides()))
