"""Tile grids at an exact physical scale (pure functions, no I/O).

A tile is ``tile_size`` pixels at ``target_mpp`` µm/px, i.e. ``tile_size * target_mpp / mpp``
level-0 pixels (a float: tiles are exact in µm, coordinates are rounded level-0 pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """Tiles kept for one slide.

    coords: (N, 2) int64 level-0 (x, y) of the top-left corners, in reading order: vertical
    bands of ``band_tiles`` columns, row-major inside a band (see :func:`make_tile_grid`).
    tissue_fraction: (N,) float32. tile_size_level0 / stride_level0: level-0 pixels (float).
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    tile_size_level0: float
    stride_level0: float
    grid_shape: tuple[int, int]  # (rows, cols) of the full grid before tissue filtering


def tissue_fractions(mask: np.ndarray, downsample: float, coords: np.ndarray, size_level0: float) -> np.ndarray:
    """Fraction of each tile's footprint that is tissue in ``mask`` (h, w) at ``downsample``.

    coords: (N, 2) level-0 (x, y); returns (N,) float32 in [0, 1]. Uses an integral image.
    """
    if len(coords) == 0:
        return np.zeros(0, dtype=np.float32)
    h, w = mask.shape
    dt = np.int32 if h * w * max(1, int(mask.max(initial=0))) < 2**31 else np.int64  # exact sums, half the memory
    integral = np.zeros((h + 1, w + 1), dtype=dt)
    inner = integral[1:, 1:]
    np.cumsum(mask, axis=0, dtype=dt, out=inner)
    np.cumsum(inner, axis=1, dtype=dt, out=inner)
    x0 = np.clip(np.floor(coords[:, 0] / downsample).astype(np.int64), 0, w)
    y0 = np.clip(np.floor(coords[:, 1] / downsample).astype(np.int64), 0, h)
    x1 = np.clip(np.ceil((coords[:, 0] + size_level0) / downsample).astype(np.int64), 0, w)
    y1 = np.clip(np.ceil((coords[:, 1] + size_level0) / downsample).astype(np.int64), 0, h)
    x1 = np.maximum(x1, np.minimum(x0 + 1, w))
    y1 = np.maximum(y1, np.minimum(y0 + 1, h))
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (total / area).astype(np.float32)


def make_tile_grid(
    level0_size: tuple[int, int],
    mpp: float,
    target_mpp: float,
    tile_size: int,
    stride: int,
    mask: np.ndarray,
    mask_downsample: float,
    min_tissue_fraction: float,
    band_tiles: int = 8,
) -> TileGrid:
    """All whole tiles inside the slide whose tissue fraction is at least ``min_tissue_fraction``.

    Order: vertical bands ``band_tiles`` tiles wide, row-major within each band. Reading in that
    order keeps the slide's own JPEG tiles under a row of our tiles in OpenSlide's tile cache
    until every tile that needs them is read, so each is decoded about once, whatever the slide
    width (row-major order over a wide slide decodes each source tile once per tile row it spans).
    """
    w0, h0 = level0_size
    size0 = tile_size * target_mpp / mpp
    step0 = stride * target_mpp / mpp
    cols = max(0, math.floor((w0 - size0) / step0 + 1e-9) + 1) if w0 >= size0 else 0
    rows = max(0, math.floor((h0 - size0) / step0 + 1e-9) + 1) if h0 >= size0 else 0
    if rows == 0 or cols == 0:
        empty = np.zeros((0, 2), dtype=np.int64)
        return TileGrid(empty, np.zeros(0, np.float32), size0, step0, (rows, cols))
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    coords = np.stack([np.round(xs.ravel() * step0), np.round(ys.ravel() * step0)], axis=1).astype(np.int64)
    frac = tissue_fractions(mask, mask_downsample, coords, size0)
    keep = frac >= max(min_tissue_fraction, 1e-9)
    band = (xs.ravel() // max(1, band_tiles))[keep]
    order = np.lexsort((xs.ravel()[keep], ys.ravel()[keep], band))
    return TileGrid(coords[keep][order], frac[keep][order], size0, step0, (rows, cols))
