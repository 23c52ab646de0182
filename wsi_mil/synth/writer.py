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

import itertools
import multiprocessing
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
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

    return bytes(imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR",
                                          subsampling=JPEG_SUBSAMPLING))


def encode_tile(pixels: np.ndarray, tile: int, quality: int, background: np.ndarray) -> bytes:
    """JPEG bytes of an (h, w, 3) uint8 tile padded with ``background`` to ``tile`` x ``tile``."""
    h, w = pixels.shape[:2]
    if (h, w) != (tile, tile):
        full = np.empty((tile, tile, 3), np.uint8)
        full[:] = background
        full[:h, :w] = pixels
        pixels = full
    return encode_jpeg(np.ascontiguousarray(pixels), quality)


def _checked(pixels: np.ndarray | None, h: int, w: int) -> np.ndarray | None:
    if pixels is not None and (pixels.shape != (h, w, 3) or pixels.dtype != np.uint8):
        raise ValueError(f"renderer returned {pixels.shape} {pixels.dtype}, expected ({h}, {w}, 3) uint8")
    return pixels


#: the level-0 renderer of forked row workers (set in the parent just before the workers fork)
_ROW_RENDERER: TileRenderer | None = None


def _render_row(y: int, h: int, width: int, tile: int, quality: int, factor: int,
                background: np.ndarray) -> list[tuple[bytes | None, np.ndarray | None]]:
    """In a worker: render and encode one row of level-0 tiles; (JPEG bytes, tile reduced by ``factor``)
    per tile, (None, None) for glass."""
    out: list[tuple[bytes | None, np.ndarray | None]] = []
    for x in range(0, width, tile):
        w = min(tile, width - x)
        pixels = _checked(_ROW_RENDERER(x, y, w, h), h, w)  # type: ignore[misc]
        if pixels is None:
            out.append((None, None))
        else:
            out.append((encode_tile(pixels, tile, quality, background), box_reduce(pixels, factor)))
    return out


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

    def encode(self, pixels: np.ndarray | None, encoded: bytes | None = None) -> bytes:
        """Bytes of one tile (``encoded`` when already encoded); ``pixels`` (h, w, 3) is padded with glass
        to the full tile; a tile with neither is glass."""
        self.stats.tiles += 1
        if encoded is not None:
            return encoded
        if pixels is None:
            self.stats.glass_tiles += 1
            return self.glass_bytes
        return encode_tile(pixels, self.tile, self.quality, self.background)

    def push(self, k: int, x: int, y: int, pixels: np.ndarray | None, small: np.ndarray | None = None) -> None:
        """Reduce a finished level-k tile at (x, y) (None = glass; ``small``: already reduced) into level
        k+1's strip."""
        n = k + 1
        if n >= len(self.levels):
            return
        f = self.factor
        if small is None and pixels is not None:
            small = box_reduce(pixels, f)
        if small is not None:
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
                pixels = _checked(render(x, y, w, h), h, w)
                data = self.encode(pixels)
                self.push(0, x, y, pixels)
                if x + w >= level.width:
                    self.row_done(0, y, h)
                # all work is done before the yield: tifffile closes the iterator after the last tile
                yield data

    def level0_tiles_parallel(self, render: TileRenderer, workers: int) -> Iterator[bytes]:
        """As :meth:`level0_tiles`, rows of tiles rendered, encoded and reduced by ``workers`` forked
        processes (at most two rows per worker in flight, so memory stays bounded); same bytes."""
        global _ROW_RENDERER
        level = self.levels[0]
        rows = iter(range(0, level.height, self.tile))
        _ROW_RENDERER = render
        ctx = multiprocessing.get_context("fork")
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                def submit(y: int) -> tuple[int, Future]:
                    h = min(self.tile, level.height - y)
                    return y, pool.submit(_render_row, y, h, level.width, self.tile, self.quality,
                                          self.factor, self.background)

                pending = deque(submit(y) for y in itertools.islice(rows, 2 * workers))
                while pending:
                    y, fut = pending.popleft()
                    row = fut.result()
                    nxt = next(rows, None)
                    if nxt is not None:
                        pending.append(submit(nxt))
                    h = min(self.tile, level.height - y)
                    for x, (data, small) in zip(range(0, level.width, self.tile), row):
                        data = self.encode(None, data)
                        self.push(0, x, y, None, small)
                        if x + self.tile >= level.width:
                            self.row_done(0, y, h)
                        yield data
        finally:
            _ROW_RENDERER = None


def can_fork_workers() -> bool:
    """True where row workers can be forked (POSIX, and not inside a daemonic process such as a Dask
    worker, which may not have children)."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def write_pyramidal_tiff(path: str | Path, levels: list[Level], mpp: float, render: TileRenderer,
                         background: tuple[int, int, int] = (255, 255, 255), tile_size: int = 512,
                         quality: int = 85, description: str = "", workers: int = 1) -> WriteStats:
    """Write a pyramidal JPEG TIFF atomically (temporary file, renamed when complete).

    levels: from :func:`pyramid_levels` (each level the previous one reduced by a constant factor);
    mpp: level-0 micrometres per pixel; render: called once per level-0 tile in row-major order;
    background: glass colour of empty tiles and tile padding; workers > 1: level-0 rows are rendered by
    that many forked processes (where :func:`can_fork_workers`; the file is the same, byte for byte).
    BigTIFF is used when the uncompressed
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
                if workers > 1 and can_fork_workers():
                    level0 = pyramid.level0_tiles_parallel(render, workers)
                else:
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
