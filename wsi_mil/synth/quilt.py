"""Texture quilts: an endless, seamless texture made of real tissue patches, rendered tile by tile.

The level-0 plane is cut into square cells of ``CELL_UM`` micrometres. Each cell shows one texture patch
of the sample (a random window that is almost all tissue) under one of the 8 flips/rotations; neighbouring
cells overlap by ``OVERLAP_UM`` and are cross-faded there with linear weights that sum to 1, so no seam is
a hard edge. A cell's patch is a pure function of the slide's cell table, so any tile of any pyramid level
is rendered on its own, in any order, without the rest of the slide in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wsi_mil.synth.texture import PATCH_UM, Sample

#: cell edge (the part a patch shows alone) and cross-fade overlap, in micrometres
OVERLAP_UM = 32.0
CELL_UM = PATCH_UM - OVERLAP_UM


@dataclass(frozen=True)
class CellTable:
    """Which patch each cell shows: (ny, nx) candidate index, (ny, nx) flip/rotation code 0-7, and
    (ny,) horizontal offset of each row of cells in cells (0-1): rows are staggered like bricks so that
    the cross-fades do not line up into a grid."""

    patch: np.ndarray
    dihedral: np.ndarray
    row_offset: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n_candidates: int, ny: int, nx: int) -> CellTable:
        return cls(patch=rng.integers(0, n_candidates, size=(ny, nx), dtype=np.int32),
                   dihedral=rng.integers(0, 8, size=(ny, nx), dtype=np.int8),
                   row_offset=rng.uniform(0.0, 1.0, size=ny))


def _axis_cells(lo: float, hi: float, cell: float, overlap: float, n_cells: int) -> range:
    """Cells whose extended span [i*cell - overlap/2, (i+1)*cell + overlap/2] meets [lo, hi]."""
    i0 = max(0, int(np.floor((lo - overlap / 2) / cell)))
    i1 = min(n_cells - 1, int(np.floor((hi + overlap / 2) / cell)))
    return range(i0, i1 + 1)


def _axis_weight(centres: np.ndarray, i: int, cell: float, overlap: float) -> np.ndarray:
    """(n,) float32 cross-fade weight of cell ``i`` at level-0 positions ``centres`` (partition of unity)."""
    start, stop = i * cell, (i + 1) * cell
    up = (centres - (start - overlap / 2)) / overlap
    down = ((stop + overlap / 2) - centres) / overlap
    w = np.minimum(np.minimum(up, down), 1.0)
    if i == 0:  # no neighbour before the first cell
        w = np.minimum(down, 1.0)
    return np.clip(w, 0.0, 1.0).astype(np.float32)


class Quilt:
    """Renders the texture quilt of one slide for one source (normal or lesion texture).

    table: the slide's cells (see :meth:`shape_for` for how many); mpp: level-0 micrometres per pixel.
    """

    def __init__(self, sample: Sample, table: CellTable, mpp: float) -> None:
        self.sample = sample
        self.table = table
        self.mpp = mpp
        self.cell = CELL_UM / mpp           # level-0 px
        self.overlap = OVERLAP_UM / mpp     # level-0 px

    @staticmethod
    def shape_for(width: int, height: int, mpp: float) -> tuple[int, int]:
        """(ny, nx) cells needed to cover a slide of ``width`` x ``height`` level-0 px."""
        cell = CELL_UM / mpp
        return int(np.ceil(height / cell)) + 1, int(np.ceil(width / cell)) + 2

    def render(self, window: Callable[[int, int, int, int], np.ndarray], scale: float, downsample: float,
               x: int, y: int, w: int, h: int, rows: np.ndarray | None = None) -> np.ndarray:
        """(h, w, 3) uint8 texture of the level-k region at (x, y), level-k px.

        window: (d, x, y, size) -> the ``size`` window at (x, y) of the stain-varied source crop resized by
        ``scale`` (sample px -> level-k px), flipped/rotated by dihedral code d
        (:meth:`~wsi_mil.synth.texture.SlideTextures.window`);
        downsample: level-k downsample relative to level 0.
        rows: optional (h,) bool; only rows from the first to the last True one are rendered, the others
        are left undefined (e.g. pure glass, overwritten by the caller).
        Cell cores are copied as they are; only the cross-fade bands are computed in floating point.
        """
        cell, ov = self.cell, self.overlap
        out = np.zeros((h, w, 3), np.uint8)
        acc = np.zeros((h, w, 3), np.float32)  # cross-fade bands only (calloc: untouched pages cost nothing)
        bands: list[tuple[int, int, int, int]] = []
        row_lo, row_hi = 0, h
        if rows is not None:
            on = np.flatnonzero(rows)
            if on.size == 0:
                return out
            row_lo, row_hi = int(on[0]), int(on[-1]) + 1
        ys = (np.arange(y, y + h, dtype=np.float64) + 0.5) * downsample
        xs = (np.arange(x, x + w, dtype=np.float64) + 0.5) * downsample
        ny, nx = self.table.patch.shape
        patch_k = int(np.floor(self.sample.patch_px * scale))
        cand = self.sample.candidates
        for i in _axis_cells(ys[row_lo], ys[row_hi - 1], cell, ov, ny):
            wy = _axis_weight(ys, i, cell, ov)
            wy[:row_lo] = 0
            wy[row_hi:] = 0
            ry = _spans(wy)
            if ry is None:
                continue
            ext_y = i * cell - ov / 2
            v0 = int(np.floor((ys[ry[0]] - ext_y) / downsample))
            xs_row = xs + self.table.row_offset[i] * cell
            for j in _axis_cells(xs_row[0], xs_row[-1], cell, ov, nx):
                wx = _axis_weight(xs_row, j, cell, ov)
                rx = _spans(wx)
                if rx is None:
                    continue
                ext_x = j * cell - ov / 2
                u0 = int(np.floor((xs_row[rx[0]] - ext_x) / downsample))
                k = int(self.table.patch[i, j])
                sx, sy = (int(round(c * scale)) for c in cand[k])
                view = window(int(self.table.dihedral[i, j]), sx, sy, patch_k + 1)
                src = _window(view, v0, ry[3] - ry[0], u0, rx[3] - rx[0])
                bands += _paste(out, acc, src, wy, wx, ry, rx)
        for a, b, c, d in bands:
            out[a:b, c:d] = acc[a:b, c:d] + 0.5
        return out


def _spans(weight: np.ndarray) -> tuple[int, int, int, int] | None:
    """(start, core_start, core_stop, stop) of a cell along one axis: weight > 0 on [start, stop) and
    == 1 on [core_start, core_stop) (empty core: core_start == core_stop); None when all zero."""
    nz = np.flatnonzero(weight)
    if nz.size == 0:
        return None
    a, b = int(nz[0]), int(nz[-1]) + 1
    core = np.flatnonzero(weight[a:b] >= 1.0)
    if core.size == 0:
        return a, a, a, b
    return a, a + int(core[0]), a + int(core[-1]) + 1, b


def _window(view: np.ndarray, v0: int, nh: int, u0: int, nw: int) -> np.ndarray:
    """``view[v0:v0+nh, u0:u0+nw]``, repeating edge pixels where rounding at coarse levels overruns it."""
    vh, vw = view.shape[:2]
    if 0 <= v0 and v0 + nh <= vh and 0 <= u0 and u0 + nw <= vw:
        return view[v0:v0 + nh, u0:u0 + nw]
    ri = np.clip(np.arange(v0, v0 + nh), 0, vh - 1)
    ci = np.clip(np.arange(u0, u0 + nw), 0, vw - 1)
    return view[ri][:, ci]


def _paste(out: np.ndarray, acc: np.ndarray, src: np.ndarray, wy: np.ndarray, wx: np.ndarray,
           ry: tuple[int, int, int, int], rx: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """Put ``src`` (uint8) over rows ry[0]:ry[3], cols rx[0]:rx[3], weighted by wy x wx.

    Where both weights are 1 (the cell's core, which no other cell reaches) the pixels are copied into
    ``out``; the cross-fade bands are accumulated, weighted, in ``acc``. Returns the band rectangles
    (row start, row stop, col start, col stop) for the caller to copy from ``acc`` once all cells are in.
    """
    r0, rc0, rc1, r1 = ry
    c0, cc0, cc1, c1 = rx
    if rc1 > rc0 and cc1 > cc0:
        out[rc0:rc1, cc0:cc1] = src[rc0 - r0:rc1 - r0, cc0 - c0:cc1 - c0]
        bands = [(r0, rc0, c0, c1), (rc1, r1, c0, c1), (rc0, rc1, c0, cc0), (rc0, rc1, cc1, c1)]
    else:
        bands = [(r0, r1, c0, c1)]
    done = []
    for a, b, c, d in bands:
        if b > a and d > c:
            wgt = wy[a:b, None] * wx[None, c:d]
            acc[a:b, c:d] += src[a - r0:b - r0, c - c0:d - c0] * wgt[..., None]
            done.append((a, b, c, d))
    return done
