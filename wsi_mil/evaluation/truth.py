"""Per-tile ground truth of a ``wsi_mil.synth`` cohort: the lesion share of each tile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from wsi_mil.jobdir import patch_store_path
from wsi_mil.stores.patches import open_patch_store
from wsi_mil.synth import lesion_fraction, load_lesion_mask

#: (slide_id, coords (N, 2) int64 level-0 x, y) -> lesion share of each tile (N,) in [0, 1]
TruthFn = Callable[[str, NDArray[np.int64]], NDArray[np.floating]]


def tile_lesion_fraction(cohort_dir: str | Path, slide_id: str, coords: NDArray[np.int64],
                         tile_size_level0: float) -> tuple[NDArray[np.float32], bool]:
    """``(share (N,) float32, slide has lesion)`` for square tiles at level-0 top-left ``coords`` (N, 2).

    ``tile_size_level0`` is the tile's side in level-0 px; the share is that of the tile's area.
    """
    mask, ds = load_lesion_mask(cohort_dir, slide_id)
    return lesion_fraction(mask, ds, coords, tile_size_level0), bool(mask.any())


def synth_truth(cohort_dir: str | Path, job: str | Path) -> TruthFn:
    """Ground truth of a ``wsi_mil.synth`` cohort for tiles of the job's patch stores."""

    def truth(slide_id: str, coords: NDArray[np.int64]) -> NDArray[np.floating]:
        size = open_patch_store(patch_store_path(job, slide_id)).tile_size_level0
        return tile_lesion_fraction(cohort_dir, slide_id, coords, size)[0]

    return truth
