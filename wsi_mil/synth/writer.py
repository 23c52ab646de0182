"""Streaming writer of tiled, JPEG-compressed, pyramidal TIFF slides that OpenSlide reads as slides.

Every level is rendered tile by tile by a callback and written as it comes (tifffile accepts an iterator
of already-encoded tiles), so memory holds one tile at a time whatever the slide size. Tiles the callback
reports as empty glass are encoded once and the same bytes reused. Reduced levels carry
``NewSubfileType = 1`` and every level carries resolution tags in pixels per centimetre, so OpenSlide
reports a pyramid and ``openslide.mpp-x/y`` (see ``../shared/NOTES.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_mil.atomic import atomic_path
from wsi_mil.errors import ConfigError

#: render(level, x, y, w, h) -> (h, w, 3) uint8, or None for a tile of pure glass
TileRenderer = Callable[[int, int, int, int, int], "np.ndarray | None"]

JPEG_SUBSAMPLING = (2, 2)


@dataclass(frozen=True)
class Level:
    """One pyramid level: size in pixels and downsample relative to level 0."""

    width: int
    height: int
    downsample: float


def pyramid_levels(width: int, height: int, factor: int = 2, min_size: int = 512) -> list[Level]:
    """Level 0 and levels reduced by ``factor`` each, until the longer side is at most ``min_size``."""
    if factor < 2:
        raise ConfigError(f"level_downsample: must be an integer >= 2, got {factor}")
    levels = [Level(width, height, 1.0)]
    d = 1
    while max(levels[-1].width, levels[-1].height) > min_size:
        d *= factor
        levels.append(Level(max(1, -(-width // d)), max(1, -(-height // d)), float(d)))
    return levels


def encode_jpeg(tile: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a (t, t, 3) uint8 tile as tifffile writes them (YCbCr, 2x2 chroma subsampling)."""
    import imagecodecs

    return imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR",
                                    subsampling=JPEG_SUBSAMPLING)


@dataclass
class WriteStats:
    """What a write did: tiles per level, how many were glass (cached encoding), bytes written."""

    tiles: int = 0
    glass_tiles: int = 0
    file_bytes: int = 0


def _level_tiles(level_index: int, level: Level, render: TileRenderer, tile: int, quality: int,
                 background: tuple[int, int, int], glass: bytes, stats: WriteStats) -> Iterator[bytes]:
    for y in range(0, level.height, tile):
        for x in range(0, level.width, tile):
            w, h = min(tile, level.width - x), min(tile, level.height - y)
            stats.tiles += 1
            img = render(level_index, x, y, w, h)
            if img is None:
                stats.glass_tiles += 1
                yield glass
                continue
            if img.shape != (h, w, 3) or img.dtype != np.uint8:
                raise ValueError(f"renderer returned {img.shape} {img.dtype}, expected ({h}, {w}, 3) uint8")
            if (h, w) != (tile, tile):
                full = np.empty((tile, tile, 3), np.uint8)
                full[:] = background
                full[:h, :w] = img
                img = full
            yield encode_jpeg(np.ascontiguousarray(img), quality)


def write_pyramidal_tiff(path: str | Path, levels: list[Level], mpp: float, render: TileRenderer,
                         background: tuple[int, int, int] = (255, 255, 255), tile_size: int = 512,
                         quality: int = 85, description: str = "") -> WriteStats:
    """Write a pyramidal JPEG TIFF atomically (temporary file, renamed when complete).

    levels: from :func:`pyramid_levels`; mpp: level-0 micrometres per pixel; render: called once per tile
    of every level in row-major order; background: glass colour used for empty tiles and tile padding.
    BigTIFF is used when the uncompressed level 0 exceeds 2 GiB.
    """
    import tifffile

    if tile_size % 16 or tile_size <= 0:
        raise ConfigError(f"tile_size: must be a positive multiple of 16, got {tile_size}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"jpeg_quality: must be 1-100, got {quality}")
    if mpp <= 0:
        raise ConfigError(f"mpp: must be > 0, got {mpp}")
    path = Path(path)
    stats = WriteStats()
    blank = np.empty((tile_size, tile_size, 3), np.uint8)
    blank[:] = background
    glass = encode_jpeg(blank, quality)
    big = levels[0].width * levels[0].height * 3 > 2**31
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=big) as tif:
            for k, level in enumerate(levels):
                res = 1e4 / (mpp * level.downsample)  # pixels per centimetre
                tif.write(
                    _level_tiles(k, level, render, tile_size, quality, background, glass, stats),
                    shape=(level.height, level.width, 3), dtype=np.uint8, tile=(tile_size, tile_size),
                    photometric="rgb", compression="jpeg", subsampling=JPEG_SUBSAMPLING,
                    subfiletype=1 if k else 0, resolution=(res, res), resolutionunit="CENTIMETER",
                    description=description if k == 0 else None, metadata=None, software="wsi_mil.synth",
                )
        stats.file_bytes = tmp.stat().st_size
    return stats
