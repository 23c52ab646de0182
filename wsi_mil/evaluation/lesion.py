"""THE rule for what a lesion tile is, used by every evaluation in the package.

A tile's *lesion share* is the fraction of its area (level-0 px^2 / level-0 px^2, in [0, 1]) covered
by the ground-truth lesion mask, area-weighted exactly (:func:`wsi_mil.synth.lesion_fraction`); the
part of a tile outside the mask counts as no lesion, so the share is always relative to the whole
tile. A tile is

- a **lesion** tile when its share is at least :data:`LESION_TILE_FRACTION` (most of it is lesion);
- a **normal** tile when its share is exactly 0 (it touches no lesion at all);
- **ambiguous** otherwise (it holds some lesion but less than that share): neither a positive nor a
  negative, so it is left out of tile AUCs and probes. Counting such a tile as normal would punish a
  model for scoring high a tile that does contain lesion.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: lesion share (fraction of the tile's area, 0-1) from which a tile counts as a lesion tile
LESION_TILE_FRACTION: float = 0.5


def is_lesion_tile(fraction: ArrayLike) -> NDArray[np.bool_]:
    """(N,) bool: lesion share (N,) in [0, 1] >= :data:`LESION_TILE_FRACTION`."""
    return np.asarray(fraction, dtype=np.float64) >= LESION_TILE_FRACTION


def is_normal_tile(fraction: ArrayLike) -> NDArray[np.bool_]:
    """(N,) bool: lesion share (N,) is exactly 0 (the tile touches no lesion)."""
    return np.asarray(fraction, dtype=np.float64) == 0.0


def label_tiles(fraction: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """``(labelled, lesion)``, both (N,) bool, from lesion shares (N,) in [0, 1].

    ``labelled`` is False for ambiguous tiles; ``lesion[labelled]`` are the tiles' labels.
    """
    lesion = is_lesion_tile(fraction)
    return lesion | is_normal_tile(fraction), lesion
