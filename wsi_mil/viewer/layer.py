"""The score layer: a run's tile scores drawn as RGBA Deep Zoom tiles aligned with the slide's.

Scores come from the heatmap stage's ``scores.csv`` (``JOB/heatmaps/{run}/{slide_id}/``): level-0
top-left corners, the tile side, one score column per class and the min-max layer's selection.
They are placed on the tile grid (:func:`wsi_mil.heatmaps.scoremap.build_score_grid`), and an
overlay tile samples that grid at the level-0 centre of each of its pixels, so it covers exactly
the level-0 area of the image tile at the same address. Colours come from a 256-entry lookup table
of the matplotlib colour map between ``vmin`` and ``vmax``; pixels without a tile are transparent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from wsi_mil.heatmaps.scoremap import ScoreGrid, build_score_grid, score_limits
from wsi_mil.viewer.deepzoom import TileInfo


@functools.lru_cache(maxsize=8)
def colour_table(cmap: str) -> NDArray[np.uint8]:
    """(256, 3) uint8 RGB of the matplotlib colour map ``cmap`` from 0 to 1."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.linspace(0.0, 1.0, 256))
    return np.asarray(np.rint(rgba[:, :3] * 255), dtype=np.uint8)


@dataclass
class ScoreLayer:
    """One slide's tile scores for one class.

    coords: (N, 2) int64 level-0 top-left corners; scores: (N,) float32; selected: (N,) int8
    (+1 top, -1 bottom, 0); tile_size0, step0: tile side and grid pitch in level-0 pixels;
    class_name: the class shown; vmin, vmax: scores at the ends of the colour scale.
    """

    coords: NDArray[np.int64]
    scores: NDArray[np.float32]
    selected: NDArray[np.int8]
    tile_size0: float
    step0: float
    class_name: str
    cmap: str = "coolwarm"
    vmin: float | None = None
    vmax: float | None = None

    def __post_init__(self) -> None:
        lo, hi = score_limits(self.scores)
        self.vmin = lo if self.vmin is None else float(self.vmin)
        self.vmax = hi if self.vmax is None else float(self.vmax)
        self.grid: ScoreGrid = build_score_grid(self.coords, self.scores, self.tile_size0, self.step0)
        self.cells: NDArray[np.uint8] = self._cell_rgba()

    @property
    def limits(self) -> tuple[float, float]:
        """(vmin, vmax) of the colour scale (set from the scores when not given)."""
        lo, hi = score_limits(self.scores)
        return (lo if self.vmin is None else float(self.vmin)), (hi if self.vmax is None else float(self.vmax))

    def colours(self, values: NDArray[np.float32]) -> NDArray[np.uint8]:
        """(..., 3) uint8 colours of score ``values`` (any shape; NaN gives index 0, masked by callers)."""
        lo, hi = self.limits
        t = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
        return colour_table(self.cmap)[np.rint(t * 255).astype(np.intp)]

    def tile_rgba(self, info: TileInfo) -> NDArray[np.uint8]:
        """(h, w, 4) uint8 RGBA overlay for the Deep Zoom tile described by ``info``.

        Pixel (i, j) shows the grid cell under its level-0 centre (as :meth:`ScoreGrid.lookup`);
        the grid is axis-aligned, so the cell is found once per column and once per row, and the
        colours of all cells are made once.
        """
        w, h = info.size
        xs = (info.origin_z[0] + np.arange(w) + 0.5) * info.scale
        ys = (info.origin_z[1] + np.arange(h) + 0.5) * info.scale
        g = self.grid
        rows, cols = g.shape
        c = np.clip(np.floor((xs - g.origin[0]) / g.step).astype(np.int64) + 1, 0, cols + 1)
        r = np.clip(np.floor((ys - g.origin[1]) / g.step).astype(np.int64) + 1, 0, rows + 1)
        return self.cells[r[:, None], c[None, :]]

    def _cell_rgba(self) -> NDArray[np.uint8]:
        """(rows + 2, cols + 2, 4) uint8 colours of the grid's cells, in a transparent border ("off the grid")."""
        v = self.grid.values
        cells = np.zeros((v.shape[0] + 2, v.shape[1] + 2, 4), np.uint8)
        if v.size:
            cells[1:-1, 1:-1, :3] = self.colours(v)
            cells[1:-1, 1:-1, 3] = np.where(np.isfinite(v), 255, 0).astype(np.uint8)
        return cells

    def colour_bar(self, n: int = 11) -> list[dict[str, object]]:
        """``n`` stops of the colour scale: ``{"value": score, "colour": "#rrggbb"}``."""
        lo, hi = self.limits
        vals = np.linspace(lo, hi, n).astype(np.float32)
        return [{"value": float(v), "colour": "#" + "".join(f"{int(c):02x}" for c in rgb)}
                for v, rgb in zip(vals, self.colours(vals))]
