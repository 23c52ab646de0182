"""The score map as a tiled, pyramidal, compressed OME-TIFF aligned to the slide.

Geometry: the base level covers the whole slide, level-0 ``[0, W) x [0, H)``, at ``downsample``
level-0 pixels per overlay pixel, so overlay pixel ``(x, y)`` covers level-0
``[x * d, (x + 1) * d) x [y * d, (y + 1) * d)`` and its physical size is ``d * mpp`` µm (written
as ``PhysicalSizeX/Y`` in the OME-XML and as the TIFF resolution tags). Reduced levels halve the
size each time (downsample ``d * 2**k``) and are stored as SubIFDs of the base image (the
OME-TIFF pyramid convention read by Bio-Formats/QuPath, tifffile, OpenSlide-free readers).

Values: float32 tile scores, unchanged (no scaling); ``NaN`` where there is no tile (background,
or a slide without tissue). Each pixel takes the score of the grid cell holding its centre.

Memory: every level is produced one 256 x 256 TIFF tile at a time from the tile-resolution
:class:`~wsi_mil.heatmaps.scoremap.ScoreGrid`; nothing of the size of a level is ever held.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.atomic import atomic_path
from wsi_mil.errors import WsiMilError
from wsi_mil.heatmaps.scoremap import ScoreGrid

TIFF_TILE = 256
DEFAULT_PIXELS_PER_TILE = 4


def overlay_downsample(grid: ScoreGrid, pixels_per_tile: int = DEFAULT_PIXELS_PER_TILE) -> float:
    """Level-0 pixels per overlay pixel: the grid step split into ``pixels_per_tile`` pixels."""
    if pixels_per_tile < 1:
        raise WsiMilError(f"pixels_per_tile must be >= 1, got {pixels_per_tile}")
    return grid.step / float(pixels_per_tile)


def level_shapes(width0: int, height0: int, downsample: float, tile: int = TIFF_TILE) -> list[tuple[int, int, float]]:
    """(height, width, downsample) of each pyramid level, base first, down to one TIFF tile."""
    out = []
    d = float(downsample)
    while True:
        h = max(1, math.ceil(height0 / d))
        w = max(1, math.ceil(width0 / d))
        out.append((h, w, d))
        if max(h, w) <= tile:
            return out
        d *= 2.0


def _level_tiles(grid: ScoreGrid, shape: tuple[int, int], d: float, tile: int) -> Iterator[np.ndarray]:
    """Tiles of one level in row-major order, each (<=tile, <=tile) float32."""
    h, w = shape
    rows, cols = grid.shape
    # grid cell of each overlay column / row centre; -1 when off the grid
    cx = np.floor(((np.arange(w) + 0.5) * d - grid.origin[0]) / grid.step).astype(np.int64)
    cy = np.floor(((np.arange(h) + 0.5) * d - grid.origin[1]) / grid.step).astype(np.int64)
    cx[(cx < 0) | (cx >= cols)] = -1
    cy[(cy < 0) | (cy >= rows)] = -1
    # one padding column/row of NaN at index -1 makes off-grid lookups a plain gather
    padded = np.full((rows + 1, cols + 1), np.nan, dtype=np.float32)
    padded[:rows, :cols] = grid.values
    for y0 in range(0, h, tile):
        ry = cy[y0:y0 + tile]
        for x0 in range(0, w, tile):
            yield padded[ry[:, None], cx[None, x0:x0 + tile]]


def write_score_ometiff(
    path: str | Path,
    grid: ScoreGrid,
    width0: int,
    height0: int,
    mpp: float | None,
    pixels_per_tile: int = DEFAULT_PIXELS_PER_TILE,
    name: str = "tile scores",
    compression: str = "zlib",
) -> Path:
    """Write the score map as a pyramidal OME-TIFF (atomic).

    grid: the tile-resolution scores; width0, height0: slide level-0 size in pixels;
    mpp: level-0 microns per pixel (physical size = downsample * mpp; ``None`` writes no
    physical size); pixels_per_tile: overlay pixels per grid step (base-level resolution).
    """
    import tifffile

    path = Path(path)
    d = overlay_downsample(grid, pixels_per_tile)
    levels = level_shapes(int(width0), int(height0), d)
    base_h, base_w, _ = levels[0]
    metadata: dict = {"axes": "YX", "Name": name}
    resolution = None
    if mpp is not None and mpp > 0:
        size_um = d * float(mpp)
        metadata.update(PhysicalSizeX=size_um, PhysicalSizeXUnit="µm",
                        PhysicalSizeY=size_um, PhysicalSizeYUnit="µm")
        resolution = (1e4 / size_um, 1e4 / size_um)
    options: dict[str, Any] = dict(tile=(TIFF_TILE, TIFF_TILE), compression=compression, dtype=np.float32,
                                   photometric="minisblack")
    bigtiff = base_h * base_w * 4 * 4 // 3 > 2**31 - 2**26  # all levels, uncompressed, with margin
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as tif:
            tif.write(_level_tiles(grid, (base_h, base_w), d, TIFF_TILE), shape=(base_h, base_w),
                      subifds=len(levels) - 1, metadata=metadata,
                      resolution=resolution, resolutionunit="CENTIMETER" if resolution else None,
                      **options)
            for h, w, dk in levels[1:]:
                res_k = (1e4 / (dk * float(mpp)), 1e4 / (dk * float(mpp))) if resolution and mpp else None
                tif.write(_level_tiles(grid, (h, w), dk, TIFF_TILE), shape=(h, w), subfiletype=1,
                          metadata=None, resolution=res_k,
                          resolutionunit="CENTIMETER" if res_k else None, **options)
    return path
