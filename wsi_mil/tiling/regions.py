"""Tile geometry shared by every tile reader: which source pixels make one tile, and the resampling.

A tile is ``tile_size`` px at the target scale whose top-left corner is level-0 (x, y). At the
pyramid level read (downsample ``ds``) it covers ``region_size`` level pixels (a float). Readers
fetch an integer window of level pixels (optionally decoded at 1/``scale`` of the level, see
:mod:`wsi_mil.tiling.direct`) and :func:`resample_window` maps the exact float box onto the tile
with an area (box) filter, or bicubic when upsampling. Every reader goes through these two
functions, so the OpenSlide path and the direct-decoding path give the same tile from the same
window pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image


@dataclass(frozen=True)
class ReadPlan:
    """How tiles are read: pyramid level, region size at that level (float), resampling."""

    level: int
    level_downsample: float
    region_size: float  # pixels at `level` covering one tile
    resample: bool


@dataclass(frozen=True)
class Window:
    """Integer window of source pixels (at 1/``scale`` of the level) and the float box in it."""

    x: int  # left, source pixels
    y: int  # top, source pixels
    width: int
    height: int
    box: tuple[float, float, float, float]  # (left, top, right, bottom) inside the window


def tile_window(x: int, y: int, plan: ReadPlan, scale: int = 1) -> Window:
    """The window that covers the tile at level-0 (x, y), in pixels of the level decoded at 1/``scale``.

    With ``scale=1`` this is exactly the window the OpenSlide reader reads.
    """
    f = plan.level_downsample * scale
    size = plan.region_size / scale
    lx, ly = x / f, y / f
    ix, iy = int(math.floor(lx)), int(math.floor(ly))
    n = int(math.ceil(size + (lx - ix))) + 1
    m = int(math.ceil(size + (ly - iy))) + 1
    return Window(ix, iy, n, m, (lx - ix, ly - iy, lx - ix + size, ly - iy + size))


def tile_windows(coords: NDArray[np.int64], plan: ReadPlan, scale: int = 1) -> NDArray[np.int64]:
    """(N, 4) int64 (x, y, width, height) of :func:`tile_window` for every level-0 corner in
    ``coords`` (N, 2), with the same float arithmetic (vectorised)."""
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    f = plan.level_downsample * scale
    size = plan.region_size / scale
    lxy = xy / f
    ixy = np.floor(lxy)
    nm = np.ceil(size + (lxy - ixy)).astype(np.int64) + 1
    return np.concatenate([ixy.astype(np.int64), nm], axis=1)


def read_windows(coords: NDArray[np.int64], plan: ReadPlan, tile_size: int, scale: int = 1) -> NDArray[np.int64]:
    """(N, 4) int64 (x, y, width, height) of the pixels the direct reader reads for each level-0
    corner in ``coords`` (N, 2), at 1/``scale`` of the level: the tile itself when the level is read
    as is or when the tile's box is whole pixels of its size (:func:`exact_offset`: then at offset
    (0, 0) of its window), else :func:`tile_window`'s window."""
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if not plan.resample:
        return np.concatenate([xy // int(round(plan.level_downsample)), np.full_like(xy, tile_size)], axis=1)
    windows = tile_windows(xy, plan, scale)
    if plan.region_size / scale == tile_size:
        lxy = xy / (plan.level_downsample * scale)
        exact = np.all(lxy == np.floor(lxy), axis=1)
        windows[exact, 2:] = tile_size
    return windows


def exact_offset(window: Window, tile_size: int) -> tuple[int, int] | None:
    """(x, y) of the tile inside ``window`` when its box is whole pixels and ``tile_size`` wide (no
    resampling to do: Pillow's filters give exactly those pixels there), else None."""
    x0, y0, x1, y1 = window.box
    if x1 - x0 != tile_size or y1 - y0 != tile_size or x0 != int(x0) or y0 != int(y0):
        return None
    return int(x0), int(y0)


def resample_window(region: NDArray[np.uint8], window: Window, tile_size: int,
                    shrink: Image.Resampling = Image.Resampling.BOX) -> NDArray[np.uint8]:
    """(h, w, 3) uint8 window pixels -> (tile_size, tile_size, 3) uint8.

    ``shrink`` filter when shrinking (area/box for full-size windows; bicubic, antialiased by
    Pillow, after a DCT-reduced decode, whose residual factor is near 1 where a box filter jitters),
    bicubic when enlarging.
    """
    size = window.box[2] - window.box[0]
    filt = shrink if size > tile_size else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(region).resize((tile_size, tile_size), filt, box=window.box))


def reduced_scale(plan: ReadPlan, tile_size: int, allowed: tuple[int, ...] = (8, 4, 2)) -> int:
    """The largest DCT scale (1/8, 1/4, 1/2) that still leaves at least ``tile_size`` px per tile
    (less half a pixel, the stage's tolerance for reading a level without resampling).

    1 when the plan reads at the target scale (no resampling) or any reduction would upsample.
    """
    if not plan.resample:
        return 1
    for s in allowed:
        if plan.region_size / s >= tile_size - 0.5:
            return s
    return 1
