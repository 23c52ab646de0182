"""Streaming writer of tiled, JPEG-compressed, pyramidal TIFF slides that OpenSlide reads as slides.

Level 0 is rendered tile by tile, in row-major order, by a callback and handed to tifffile as it comes
(tifffile accepts an iterator of already-encoded tiles). Each finished tile is also box-reduced into a
one-tile-row strip of the next level; a full strip is encoded, reduced into the level after it, and so
on, the encoded tiles of the reduced levels going to spool files that are copied into the TIFF once
level 0 is done. Memory therefore holds one tile plus one strip per reduced level (about
``3 * tile_size * width`` bytes in all), never a level, and every level is exactly the box-filtered
level above it. Tiles the callback reports as glass are encoded once and the bytes reused.

Reduced levels carry ``NewSubfileType = 1`` and every level carries resolution tags in pixels per
centimetre, so OpenSlide reports a pyramid and ``openslide.mpp-x/y`` (see ``../shared/NOTES.md``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from wsi_mil.atomic import TMP_MARK, atomic_path
from wsi_mil.errors import ConfigError

#: render(x, y, w, h) -> (h, w, 3) uint8 level-0 pixels, or None for a tile of pure glass
TileRenderer = Callable[[int, int, int, int], "np.ndarray | None"]

JPEG_SUBSAMPLING = (2, 2)


@dataclass(frozen=True)
class Level:
    """One pyramid level: size in pixels and downsample relative to level 0."""

    width: int
    height: int
    downsample: float


def pyramid_levels(width: int, height: int, factor: int = 2, min_size: int = 512) -> list[Level]:
    """Level 0 and levels reduced by ``factor`` each (size rounded up), until the longer side is at most
    ``min_size``."""
    if factor not in (2, 4):
        raise ConfigError(f"level_downsample: must be 2 or 4, got {factor}")
    levels = [Level(width, height, 1.0)]
    while max(levels[-1].width, levels[-1].height) > min_size:
        prev = levels[-1]
        levels.append(Level(-(-prev.width // factor), -(-prev.height // factor), prev.downsample * factor))
    return levels


def encode_jpeg(tile: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a (t, t, 3) uint8 tile as tifffile writes them (YCbCr, 2x2 chroma subsampling)."""
    import imagecodecs

    return imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR",
                                    subsampling=JPEG_SUBSAMPLING)


def box_reduce(tile: np.ndarray, factor: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (ceil(h/f), ceil(w/f), 3) box means (partial boxes average what they hold)."""
    from PIL import Image

    return np.asarray(Image.fromarray(tile).reduce(factor))


@dataclass
class WriteStats:
    """What a write did: tiles written over all levels, how many were glass (cached encoding), file size."""

    tiles: int = 0
    glass_tiles: int = 0
    file_bytes: int = 0


@dataclass
class _Spool:
    """Encoded tiles of one reduced level, in row-major order, kept in a spool file."""

    file: BinaryIO
    spans: list[tuple[int, int]] = field(default_factory=list)

    def append(self, data: bytes) -> None:
        offset = self.file.seek(0, 2)
        self.file.write(data)
        self.spans.append((offset, len(data)))

    def __iter__(self) -> Iterator[bytes]:
        for offset, length in self.spans:
            self.file.seek(offset)
            yield self.file.read(length)


class _Pyramid:
    """Encodes level-0 tiles and cascades them, box-reduced, through one strip per reduced level."""

    def __init__(self, levels: list[Level], factor: int, tile: int, quality: int,
                 background: tuple[int, int, int], spool_dir: Path, stats: WriteStats) -> None:
        self.levels, self.factor, self.tile, self.quality = levels, factor, tile, quality
        self.background = np.asarray(background, np.uint8)
        self.stats = stats
        blank = np.empty((tile, tile, 3), np.uint8)
        blank[:] = self.background
        self.glass_bytes = encode_jpeg(blank, quality)
        self.spools = [_Spool(open(spool_dir / f"level{k}.jpegs", "w+b")) for k in range(1, len(levels))]
        self.strips: list[np.ndarray | None] = [None]
        self.glass: list[np.ndarray | None] = [None]
        self.rows_filled = [0] * len(levels)
        self.strip_y = [0] * len(levels)  # level-k y of the strip being filled
        for lv in levels[1:]:
            self.strips.append(np.empty((tile, lv.width, 3), np.uint8))
            self.glass.append(np.ones(-(-lv.width // tile), bool))
        for k in range(1, len(levels)):
            self._reset_strip(k)

    def close(self) -> None:
        for s in self.spools:
            s.file.close()

    def _reset_strip(self, k: int) -> None:
        strip = self.strips[k]
        strip[0] = self.background  # type: ignore[index]
        strip[1:] = strip[0]  # type: ignore[index]  # row copies are much faster than a 3-value broadcast
        self.glass[k][:] = True  # type: ignore[index]
        self.rows_filled[k] = 0

    def encode(self, pixels: np.ndarray | None) -> bytes:
        """Bytes of one tile; ``pixels`` (h, w, 3) is padded with glass to the full tile, None is glass."""
        self.stats.tiles += 1
        if pixels is None:
            self.stats.glass_tiles += 1
            return self.glass_bytes
        h, w = pixels.shape[:2]
        if (h, w) != (self.tile, self.tile):
            full = np.empty((self.tile, self.tile, 3), np.uint8)
            full[:] = self.background
            full[:h, :w] = pixels
            pixels = full
        return encode_jpeg(np.ascontiguousarray(pixels), self.quality)

    def push(self, k: int, x: int, y: int, pixels: np.ndarray | None) -> None:
        """Reduce a finished level-k tile at (x, y) (None = glass) into level k+1's strip."""
        n = k + 1
        if n >= len(self.levels):
            return
        f = self.factor
        if pixels is not None:
            small = box_reduce(pixels, f)
            r0 = (y // f) - self.strip_y[n]
            self.strips[n][r0:r0 + small.shape[0], x // f:x // f + small.shape[1]] = small  # type: ignore[index]
            self.glass[n][(x // f) // self.tile] = False  # type: ignore[index]

    def row_done(self, k: int, y: int, h: int) -> None:
        """Level k finished its tile row at y (h rows): flush level k+1's strip when it is full or final."""
        n = k + 1
        if n >= len(self.levels):
            return
        self.rows_filled[n] += -(-h // self.factor)
        last = y + h >= self.levels[k].height
        if self.rows_filled[n] >= self.tile or last:
            self._flush(n)

    def _flush(self, n: int) -> None:
        level = self.levels[n]
        y = self.strip_y[n]
        h = min(self.tile, level.height - y)
        strip, glass = self.strips[n], self.glass[n]
        for ci, x in enumerate(range(0, level.width, self.tile)):
            w = min(self.tile, level.width - x)
            pixels = None if glass[ci] else strip[:h, x:x + w]  # type: ignore[index]
            self.spools[n - 1].append(self.encode(pixels))
            self.push(n, x, y, pixels)
        self.row_done(n, y, h)
        self.strip_y[n] = y + self.tile
        self._reset_strip(n)

    def level0_tiles(self, render: TileRenderer) -> Iterator[bytes]:
        """Render, encode and cascade level 0; yields its encoded tiles in row-major order."""
        level = self.levels[0]
        for y in range(0, level.height, self.tile):
            h = min(self.tile, level.height - y)
            for x in range(0, level.width, self.tile):
                w = min(self.tile, level.width - x)
                pixels = render(x, y, w, h)
                if pixels is not None and (pixels.shape != (h, w, 3) or pixels.dtype != np.uint8):
                    raise ValueError(f"renderer returned {pixels.shape} {pixels.dtype}, expected ({h}, {w}, 3) uint8")
                data = self.encode(pixels)
                self.push(0, x, y, pixels)
                if x + w >= level.width:
                    self.row_done(0, y, h)
                # all work is done before the yield: tifffile closes the iterator after the last tile
                yield data


def write_pyramidal_tiff(path: str | Path, levels: list[Level], mpp: float, render: TileRenderer,
                         background: tuple[int, int, int] = (255, 255, 255), tile_size: int = 512,
                         quality: int = 85, description: str = "") -> WriteStats:
    """Write a pyramidal JPEG TIFF atomically (temporary file, renamed when complete).

    levels: from :func:`pyramid_levels` (each level the previous one reduced by a constant factor);
    mpp: level-0 micrometres per pixel; render: called once per level-0 tile in row-major order;
    background: glass colour of empty tiles and tile padding. BigTIFF is used when the uncompressed
    level 0 exceeds 2 GiB. Spool files of the reduced levels live in a hidden temporary folder beside
    ``path`` (swept by :func:`wsi_mil.atomic.remove_stale_temporaries` if the process is killed).
    """
    import tifffile

    if tile_size % 16 or tile_size <= 0:
        raise ConfigError(f"tile_size: must be a positive multiple of 16, got {tile_size}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"jpeg_quality: must be 1-100, got {quality}")
    if mpp <= 0:
        raise ConfigError(f"mpp: must be > 0, got {mpp}")
    factor = int(round(levels[1].downsample / levels[0].downsample)) if len(levels) > 1 else 2
    if tile_size % factor:
        raise ConfigError(f"tile_size: must be a multiple of the level downsample {factor}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = WriteStats()
    big = levels[0].width * levels[0].height * 3 > 2**31
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}{TMP_MARK}spool-") as spool_dir, \
            atomic_path(path) as tmp:
        pyramid = _Pyramid(levels, factor, tile_size, quality, background, Path(spool_dir), stats)
        try:
            with tifffile.TiffWriter(tmp, bigtiff=big) as tif:
                level0 = pyramid.level0_tiles(render)
                for k, level in enumerate(levels):
                    res = 1e4 / (mpp * level.downsample)  # pixels per centimetre
                    data = level0 if k == 0 else iter(pyramid.spools[k - 1])
                    tif.write(
                        data, shape=(level.height, level.width, 3), dtype=np.uint8,
                        tile=(tile_size, tile_size), photometric="rgb", compression="jpeg",
                        subsampling=JPEG_SUBSAMPLING, subfiletype=1 if k else 0,
                        resolution=(res, res), resolutionunit="CENTIMETER",
                        description=description if k == 0 else None, metadata=None,
                        software="wsi_mil.synth",
                    )
        finally:
            pyramid.close()
        stats.file_bytes = tmp.stat().st_size
    return stats
