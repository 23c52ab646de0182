"""Deep Zoom tiles of a slide, read on demand through :mod:`wsi_mil.slide` (the tile stage's reader).

The geometry is that of OpenSlide's ``openslide.deepzoom.DeepZoomGenerator`` (tile side 254 px,
1 px overlap, whole image, no bounds cropping), so OpenSeadragon's Deep Zoom sources work as they
are and the tiles equal the ones DeepZoomGenerator serves (a test compares them). Deep Zoom level
``L - 1`` is level 0 of the slide; each level below halves it (rounding up). A tile at Deep Zoom
level ``z`` covers level-0 pixels ``scale(z) = 2 ** (L - 1 - z)`` times its own size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from wsi_mil.errors import WsiMilError
from wsi_mil.slide import Slide

TILE_SIZE = 254
OVERLAP = 1


class TileAddressError(WsiMilError):
    """A Deep Zoom level or tile address outside the image."""


@dataclass(frozen=True)
class TileInfo:
    """Where a Deep Zoom tile comes from.

    location0: level-0 (x, y) of the first pixel read; slide_level: pyramid level read;
    read_size: (w, h) pixels read at that level; size: (w, h) of the tile served;
    origin_z: (x, y) of the tile's first pixel in Deep Zoom level pixels (overlap included);
    scale: level-0 pixels per Deep Zoom pixel at this level.
    """

    location0: tuple[int, int]
    slide_level: int
    read_size: tuple[int, int]
    size: tuple[int, int]
    origin_z: tuple[int, int]
    scale: float


def best_level_for_downsample(downsamples: list[float], downsample: float) -> int:
    """OpenSlide's rule: the last level whose downsample is not above ``downsample``."""
    if downsample < downsamples[0]:
        return 0
    for i in range(1, len(downsamples)):
        if downsample < downsamples[i]:
            return i - 1
    return len(downsamples) - 1


class DeepZoom:
    """Deep Zoom pyramid geometry and tiles of one open :class:`~wsi_mil.slide.Slide`."""

    def __init__(self, slide: Slide, tile_size: int = TILE_SIZE, overlap: int = OVERLAP) -> None:
        self.slide = slide
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self.width, self.height = (int(v) for v in slide.dimensions)
        z = (self.width, self.height)
        dims = [z]
        while z[0] > 1 or z[1] > 1:
            z = (max(1, math.ceil(z[0] / 2)), max(1, math.ceil(z[1] / 2)))
            dims.append(z)
        #: (w, h) in pixels of each Deep Zoom level, coarsest (1 x 1) first
        self.level_dimensions: list[tuple[int, int]] = list(reversed(dims))
        self.level_count = len(self.level_dimensions)
        #: (cols, rows) of tiles per Deep Zoom level
        self.level_tiles = [(math.ceil(w / self.tile_size), math.ceil(h / self.tile_size)) for w, h in self.level_dimensions]
        self._l0_z = [float(2 ** (self.level_count - z - 1)) for z in range(self.level_count)]
        self._slide_level = [best_level_for_downsample(slide.level_downsamples, d) for d in self._l0_z]
        self._l_z = [self._l0_z[z] / slide.level_downsamples[self._slide_level[z]] for z in range(self.level_count)]

    def scale(self, level: int) -> float:
        """Level-0 pixels per pixel of Deep Zoom ``level``."""
        return self._l0_z[level]

    def dzi_xml(self, fmt: str = "jpeg") -> str:
        """The ``.dzi`` descriptor (Deep Zoom XML) of the image."""
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" Overlap="{self.overlap}" '
                f'TileSize="{self.tile_size}"><Size Height="{self.height}" Width="{self.width}"/></Image>\n')

    def tile_info(self, level: int, col: int, row: int) -> TileInfo:
        """The read behind tile (col, row) of Deep Zoom ``level``; TileAddressError outside the image."""
        if not (0 <= level < self.level_count):
            raise TileAddressError(f"Deep Zoom level {level} is outside 0..{self.level_count - 1}")
        cols, rows = self.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileAddressError(f"tile ({col}, {row}) is outside the {cols} x {rows} tiles of level {level}")
        slide_level = self._slide_level[level]
        zw, zh = self.level_dimensions[level]
        t, ov = self.tile_size, self.overlap
        tl = (ov * int(col != 0), ov * int(row != 0))
        br = (ov * int(col != cols - 1), ov * int(row != rows - 1))
        size = (min(t, zw - t * col) + tl[0] + br[0], min(t, zh - t * row) + tl[1] + br[1])
        origin_z = (t * col - tl[0], t * row - tl[1])
        lz = self._l_z[level]
        l_loc = (lz * origin_z[0], lz * origin_z[1])
        lds = self.slide.level_downsamples[slide_level]
        loc0 = (int(lds * l_loc[0]), int(lds * l_loc[1]))
        lw, lh = self.slide.level_dimensions[slide_level]
        read = (int(min(math.ceil(lz * size[0]), lw - math.ceil(l_loc[0]))),
                int(min(math.ceil(lz * size[1]), lh - math.ceil(l_loc[1]))))
        return TileInfo(loc0, slide_level, read, size, origin_z, self._l0_z[level])

    def tile(self, level: int, col: int, row: int) -> NDArray[np.uint8]:
        """Tile (col, row) of Deep Zoom ``level`` as (h, w, 3) uint8 RGB (transparent -> white)."""
        info = self.tile_info(level, col, row)
        rgb = self.slide.read_region(info.location0, info.slide_level, info.read_size)
        if (rgb.shape[1], rgb.shape[0]) == info.size:
            return np.ascontiguousarray(rgb)
        img = Image.fromarray(np.ascontiguousarray(rgb))
        img.thumbnail(info.size, Image.Resampling.LANCZOS)  # as DeepZoomGenerator does
        return np.asarray(img)
