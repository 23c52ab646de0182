"""Tile readers for the tile stage: batches of level-0 coordinates -> (k, S, S, 3) uint8 tiles.

:func:`open_tile_reader` picks, per slide, the fastest reader that gives the stage's pixels:

- ``direct-jpeg``: the level is a tiled JPEG TIFF (:mod:`wsi_mil.tiling.direct`); same pixels as
  OpenSlide, optionally decoded at 1/2, 1/4 or 1/8 (``direct-jpeg-1/s``) when tiles are shrunk;
- ``gpu``: the same compressed tiles decoded with nvJPEG on a CUDA device
  (:mod:`wsi_mil.tiling.gpu`), only when asked for (``WSI_MIL_TILE_DEVICE=cuda``) and present;
- ``openslide``: the slide's own reader (``Slide.read_region``) for everything else (JPEG 2000,
  Deflate, NDPI, MRXS, DICOM, non-integer level downsamples, ...).

Readers are thread-safe: the stage calls :meth:`TileReader.read_tiles` from several threads.
Options come from :class:`DecodeOptions` (environment variables, so Dask workers inherit them
and the tiling config, recorded in every store, stays as it was).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import simplejpeg
from numpy.typing import NDArray
from PIL import Image

from wsi_mil.errors import ConfigError
from wsi_mil.slide import Slide
from wsi_mil.tiling.direct import DirectJpegLevel, open_direct_level, verify_reduced
from wsi_mil.tiling.regions import ReadPlan, exact_offset, read_windows, reduced_scale, resample_window, tile_window

ENV_DECODER = "WSI_MIL_TILE_DECODER"  # auto (default) | openslide
ENV_REDUCED = "WSI_MIL_TILE_REDUCED"  # 1 (default) | 0
ENV_THREADS = "WSI_MIL_TILE_THREADS"  # threads per slide; default: the cores this process may use, at most 8
ENV_DEVICE = "WSI_MIL_TILE_DEVICE"  # cpu (default) | cuda


@dataclass(frozen=True)
class DecodeOptions:
    """How the tile stage decodes a slide (none of this changes the tiling parameters)."""

    decoder: str = "auto"  # "auto": direct JPEG decoding where possible; "openslide": always the reader
    reduced: bool = True  # decode at 1/2, 1/4, 1/8 in the DCT when tiles are shrunk by that much
    threads: int = 0  # threads per slide; 0: the cores this process may use (at most 8)
    device: str = "cpu"  # "cuda": nvJPEG decoding, resampling and encoding on the GPU when present

    @classmethod
    def from_env(cls) -> DecodeOptions:
        """Options from ``WSI_MIL_TILE_DECODER`` / ``_REDUCED`` / ``_THREADS`` / ``_DEVICE``."""
        env = os.environ
        decoder = env.get(ENV_DECODER, "auto").strip().lower() or "auto"
        if decoder not in ("auto", "openslide"):
            raise ConfigError(f"{ENV_DECODER}={decoder!r}: choose 'auto' or 'openslide'")
        reduced = env.get(ENV_REDUCED, "1").strip().lower()
        if reduced not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"{ENV_REDUCED}={reduced!r}: choose 1 or 0")
        raw = env.get(ENV_THREADS, "0").strip() or "0"
        try:
            threads = int(raw)
        except ValueError:
            raise ConfigError(f"{ENV_THREADS}={raw!r}: give a whole number of threads (0: one per core)") from None
        if threads < 0:
            raise ConfigError(f"{ENV_THREADS}={raw!r}: give 0 (one per core) or more threads")
        device = env.get(ENV_DEVICE, "cpu").strip().lower() or "cpu"
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"{ENV_DEVICE}={device!r}: choose 'cpu' or 'cuda'")
        return cls(decoder, reduced in ("1", "true", "yes"), threads, device)

    def thread_count(self) -> int:
        """Threads per slide to use."""
        if self.threads:
            return self.threads
        return max(1, min(8, len(os.sched_getaffinity(0))))


class TileReader(Protocol):
    """Reads tiles of one slide; thread-safe."""

    name: str  # recorded in the store as ``tile_decoder``
    scale: int  # DCT reduction used (1: full decoding)
    fallback_reason: str  # why a faster reader was not used ('' if none was possible/asked)
    thread_safe: bool  # whether read_tiles may be called from several threads at once

    def read_tiles(self, coords: NDArray[np.int64], out: NDArray[np.uint8]) -> None:
        """Fill ``out`` (k, S, S, 3) with the tiles whose level-0 top-left corners are ``coords`` (k, 2)."""

    def close(self) -> None:
        """Release files and devices."""


class OpenSlideTileReader:
    """Tiles through ``Slide.read_region`` (OpenSlide releases the GIL while it decodes)."""

    name = "openslide"
    scale = 1

    def __init__(self, slide: Slide, plan: ReadPlan, tile_size: int, fallback_reason: str = "") -> None:
        self.slide, self.plan, self.tile_size = slide, plan, tile_size
        self.fallback_reason = fallback_reason
        #: OpenSlide handles are thread-safe; the tiffslide fallback reader is not relied on to be
        self.thread_safe = not slide.reader.startswith("tiffslide")

    def read_tile(self, x: int, y: int) -> NDArray[np.uint8]:
        """One tile (S, S, 3) uint8 whose top-left corner is level-0 (x, y)."""
        plan, s = self.plan, self.tile_size
        if not plan.resample:
            return self.slide.read_region((x, y), plan.level, (s, s))
        win = tile_window(x, y, plan)
        ds = plan.level_downsample
        region = self.slide.read_region((int(round(win.x * ds)), int(round(win.y * ds))), plan.level,
                                        (win.width, win.height))
        return resample_window(region, win, s)

    def read_tiles(self, coords: NDArray[np.int64], out: NDArray[np.uint8]) -> None:
        for i, (x, y) in enumerate(coords):
            out[i] = self.read_tile(int(x), int(y))

    def close(self) -> None:
        pass


class DirectTileReader:
    """Tiles decoded straight from a tiled-JPEG level, at 1/``scale`` when ``scale`` > 1."""

    def __init__(self, level: DirectJpegLevel, plan: ReadPlan, tile_size: int, scale: int = 1) -> None:
        self.level, self.plan, self.tile_size, self.scale = level, plan, tile_size, scale
        self.name = "direct-jpeg" if scale == 1 else f"direct-jpeg-1/{scale}"
        self.fallback_reason = ""
        self.thread_safe = True
        self._ds = int(round(plan.level_downsample))
        self._shrink = Image.Resampling.BOX if scale == 1 else Image.Resampling.BICUBIC

    def read_tile(self, x: int, y: int, out: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
        """One tile (S, S, 3) uint8 whose top-left corner is level-0 (x, y)."""
        s = self.tile_size
        if not self.plan.resample:
            return self.level.read(x // self._ds, y // self._ds, s, s, out=out)
        win = tile_window(x, y, self.plan, self.scale)
        at = exact_offset(win, s)  # e.g. 448 level px decoded at 1/2 on even corners: read the tile as is
        if at is not None:
            return self.level.read(win.x + at[0], win.y + at[1], s, s, self.scale, out=out)
        region = self.level.read(win.x, win.y, win.width, win.height, self.scale)
        tile = resample_window(region, win, s, self._shrink)
        if out is not None:
            out[...] = tile
            return out
        return tile

    def expect(self, coords: NDArray[np.int64]) -> None:
        """Plan the reads of ``coords`` (N, 2), in this order, so the level's cache drops each source
        tile after its last read and keeps those still needed (see :meth:`DirectJpegLevel.expect`)."""
        self.level.expect(read_windows(coords, self.plan, self.tile_size, self.scale), self.scale)

    def read_tiles(self, coords: NDArray[np.int64], out: NDArray[np.uint8]) -> None:
        for i, (x, y) in enumerate(coords.tolist()):
            self.read_tile(x, y, out[i])

    def close(self) -> None:
        self.level.close()


def _aligned(coords: NDArray[np.int64], ds: int) -> bool:
    return bool(ds == 1 or len(coords) == 0 or not np.any(coords % ds))


def open_tile_reader(slide: Slide, plan: ReadPlan, tile_size: int, coords: NDArray[np.int64],
                     options: DecodeOptions | None = None) -> TileReader:
    """The reader for this slide: GPU if asked and present, direct JPEG where exact, else OpenSlide.

    ``coords`` (N, 2) are the level-0 corners to be read: a level read without resampling is
    decoded directly only if every corner falls on a pixel of that level (OpenSlide interpolates
    between pixels otherwise, and the store must keep its pixels).
    """
    opts = options or DecodeOptions.from_env()
    if opts.decoder == "openslide":
        return OpenSlideTileReader(slide, plan, tile_size, "decoder 'openslide' asked for")
    direct, why = open_direct_level(slide, plan.level)
    if direct is not None and not plan.resample and not _aligned(coords, int(round(plan.level_downsample))):
        direct.close()
        direct, why = None, f"tile corners fall between the pixels of level {plan.level}"
    if direct is None:
        return OpenSlideTileReader(slide, plan, tile_size, why)
    scale = reduced_scale(plan, tile_size) if opts.reduced else 1
    while scale > 1 and verify_reduced(direct, scale):
        scale //= 2
    if opts.device == "cuda":
        from wsi_mil.tiling.gpu import open_gpu_reader  # torch: only when the GPU path is asked for

        gpu, gpu_why = open_gpu_reader(direct, plan, tile_size)
        if gpu is not None:
            return gpu
        reader = DirectTileReader(direct, plan, tile_size, scale)
        reader.fallback_reason = gpu_why
    else:
        reader = DirectTileReader(direct, plan, tile_size, scale)
    reader.expect(coords)
    return reader


def decoder_version(scale: int = 1) -> str:
    """The JPEG libraries used by the direct reader at DCT ``scale`` (recorded in stores)."""
    text = f"simplejpeg {simplejpeg.__version__} (libjpeg-turbo TurboJPEG)"
    return text if scale == 1 else f"{text} at 1/{scale}"
