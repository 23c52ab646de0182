"""Tile scores -> a score grid at tile resolution, plus the geometry that maps it to level 0.

Tiles lie on a regular grid: tile ``i`` has its top-left corner at level-0 pixel
``coords[i] = origin + index[i] * step`` (up to the rounding of ``coords`` to integers), where
``step`` is the tiling stride in level-0 pixels (equal to the tile size when tiles do not
overlap). The grid holds one float32 value per grid cell (``NaN`` where there is no tile), so
its memory is ``4 * n_cells`` bytes whatever the slide's size: a 150,000 x 100,000 px slide
tiled at 224 px has about 300,000 cells, 1.2 MB.

Cell ``(r, c)`` covers level-0 ``[ox + c * step, ox + (c + 1) * step) x [oy + r * step, ...)``.
Where tiles overlap (``step < tile_size_level0``) a cell shows the tile that starts in it; where
two tiles fall in one cell (coordinates off the grid) the higher score is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_mil.errors import WsiMilError


@dataclass(frozen=True)
class ScoreGrid:
    """Scores on the tile grid.

    values: (rows, cols) float32, NaN where there is no tile.
    origin: level-0 (x, y) of the top-left corner of cell (0, 0), pixels.
    step: level-0 pixels per cell (the tiling stride).
    tile_size_level0: level-0 size of one tile, pixels (>= step when tiles overlap).
    index: (N, 2) int64 (row, col) of each tile's cell.
    """

    values: np.ndarray
    origin: tuple[float, float]
    step: float
    tile_size_level0: float
    index: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.values.shape[0]), int(self.values.shape[1]))

    def lookup(self, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
        """Score at level-0 positions ``(x0, y0)`` (float arrays of one shape); NaN off the grid."""
        c = np.floor((np.asarray(x0, dtype=np.float64) - self.origin[0]) / self.step).astype(np.int64)
        r = np.floor((np.asarray(y0, dtype=np.float64) - self.origin[1]) / self.step).astype(np.int64)
        rows, cols = self.shape
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        out = np.full(np.shape(c), np.nan, dtype=np.float32)
        if rows and cols:
            out[inside] = self.values[r[inside], c[inside]]
        return out


def check_tile_arrays(coords: np.ndarray, scores: np.ndarray, what: str = "tiles") -> tuple[np.ndarray, np.ndarray]:
    """Validate ``coords`` (N, 2) and ``scores`` (N,); return them as int64 / float32 arrays."""
    coords = np.asarray(coords)
    scores = np.asarray(scores)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise WsiMilError(f"{what}: coords must have shape (N, 2), got {coords.shape}")
    if scores.shape != (coords.shape[0],):
        raise WsiMilError(f"{what}: scores must have shape ({coords.shape[0]},), got {scores.shape}")
    return coords.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)


def build_score_grid(
    coords: np.ndarray,
    scores: np.ndarray,
    tile_size_level0: float,
    step: float | None = None,
) -> ScoreGrid:
    """Place tile scores on the tile grid.

    coords: (N, 2) int level-0 (x, y) top-left corners; scores: (N,) float;
    tile_size_level0: tile side in level-0 pixels; step: grid pitch in level-0 pixels
    (the stride; default ``tile_size_level0``). N = 0 gives an empty (0, 0) grid.
    """
    coords, scores = check_tile_arrays(coords, scores)
    size = float(tile_size_level0)
    step = float(step) if step is not None else size
    if not (size > 0 and step > 0 and np.isfinite(size) and np.isfinite(step)):
        raise WsiMilError(f"tile size ({tile_size_level0}) and step ({step}) must be positive level-0 pixels")
    if coords.shape[0] == 0:
        return ScoreGrid(np.zeros((0, 0), np.float32), (0.0, 0.0), step, size, np.zeros((0, 2), np.int64))
    origin = coords.min(axis=0).astype(np.float64)
    # integer coords are rounded from origin + k * step: nearest cell index
    cr = np.rint((coords - origin) / step).astype(np.int64)
    cols = int(cr[:, 0].max()) + 1
    rows = int(cr[:, 1].max()) + 1
    values = np.full((rows, cols), np.nan, dtype=np.float32)
    order = np.argsort(scores, kind="stable")  # ascending: the highest score in a cell wins
    values[cr[order, 1], cr[order, 0]] = scores[order]
    index = np.stack([cr[:, 1], cr[:, 0]], axis=1)
    return ScoreGrid(values, (float(origin[0]), float(origin[1])), step, size, index)


def stride_level0(attrs: dict) -> float:
    """The tiling stride in level-0 pixels from patch-store attributes.

    ``stride_level0`` when recorded; else ``stride`` (pixels at the target mpp, like
    ``tile_size``) scaled by ``tile_size_level0 / tile_size``; else the tile size (adjacent tiles).
    """
    if attrs.get("stride_level0"):
        return float(attrs["stride_level0"])
    size0 = float(attrs["tile_size_level0"])
    stride = attrs.get("stride")
    tile_size = attrs.get("tile_size")
    if stride in (None, "", 0) or not tile_size:
        return size0
    return float(stride) * size0 / float(tile_size)


def score_limits(scores: np.ndarray) -> tuple[float, float]:
    """(vmin, vmax) for a colour scale over finite ``scores``; a constant or empty set gets width 1."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:
        return lo - 0.5, hi + 0.5
    return lo, hi
