"""Direct tile decoding for pyramid levels stored as tiled JPEG TIFF (Aperio SVS, generic tiled TIFF)
or as DICOM whole-slide JPEG frames (TILED_FULL; layout from :mod:`wsi_mil.tiling.dicom_frames`).

OpenSlide's ``read_region`` decodes the slide's JPEG tiles, paints them into an RGBA surface and
we then drop alpha: a copy and a conversion per read, and a tile cache shared by all reads. Here
the compressed tile bytes are read from the file (``os.pread``: thread-safe, GIL released) at the
offsets tifffile reports, spliced with the level's JPEGTables (and an Adobe marker for TIFF
Photometric RGB: the JPEG holds RGB, as OpenSlide reads it; YCbCr is converted to RGB), decoded
with libjpeg-turbo's TurboJPEG call through simplejpeg (GIL released, so threads decode in
parallel; the pixels of imagecodecs' ``jpeg8_decode`` with the tables, ~5 % faster on 512 px
tiles), and copied into the region buffer.
Each decoded source tile is kept in a small bounded cache so the tiles of our grid that share it
decode it once; given the reads to come (:meth:`DirectJpegLevel.expect`), the cache drops a tile
after its last read and keeps the ones needed again later (e.g. at the edges of the grid's bands).
A dropped tile's pixel buffer, once no read is still copying from it, is decoded into again (a
few are kept per scale): no fresh 0.8 MB array, cold in the CPU caches, per decoded tile.

Reduced-size decoding (``scale`` 2, 4 or 8) decodes in the DCT domain at 1/``scale`` of the level
(libjpeg-turbo's scaled IDCT, through simplejpeg's TurboJPEG call: the pixels Pillow's ``draft``
gives, at ~1.3-3x its speed, without Pillow's file parsing and 4-byte-per-pixel buffer), for tiles
that are shrunk anyway.

Same pixels as OpenSlide at scale 1 (bit for bit on the slides tested) and same coordinates, on
levels whose downsample is an integer: :func:`open_direct_level` checks the layout, then decodes
probe tiles both ways and refuses the level (the caller falls back to the reader) on any
difference (a 256 px square of the level's most detailed tile and the bottom-right corner of the
level). Pixels outside the image are white, as ``Slide.read_region`` gives them.
"""

from __future__ import annotations

import heapq
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import simplejpeg
import tifffile
from numpy.typing import NDArray
from PIL import Image

from wsi_mil.errors import SlideError
from wsi_mil.slide import Slide
from wsi_mil.tiling.dicom_frames import find_dicom_layout
from wsi_mil.tiling.jpeg_layout import JpegTileLayout

#: OpenSlide vendors whose levels are plain, non-overlapping TIFF tile grids
DIRECT_VENDORS = ("aperio", "generic-tiff")
SCALES = (1, 2, 4, 8)
#: an Adobe APP14 segment with transform 0: tells any libjpeg decoder the components are RGB
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
#: largest |difference| (grey levels) allowed between a probe tile decoded here and by the reader
PROBE_MAX_DIFF = 2
#: largest mean |difference| between a reduced decode and the full decode shrunk with a box filter
REDUCED_PROBE_MEAN_DIFF = 3.0
DEFAULT_CACHE_BYTES = 128 << 20
#: decoded-tile buffers kept for reuse per DCT scale (beyond the cache's capacity: 6 MiB of 512 px tiles)
POOL_TILES = 8
#: side (px) of the square of the most detailed tile, and of the level's bottom-right corner,
#: compared with the slide's reader before a level is decoded directly
PROBE_SIDE = 256
EDGE_PROBE_SIDE = 32


def _name(value: object) -> str:
    """A TIFF enum's name (tifffile gives enums, or ints for unknown values)."""
    return str(getattr(value, "name", value))


def find_jpeg_layout(slide: Slide, level: int) -> tuple[JpegTileLayout | None, str]:
    """The tiled-JPEG layout of ``level``, or (None, why the level cannot be decoded directly)."""
    if slide.vendor not in DIRECT_VENDORS + ("dicom",):
        return None, f"vendor {slide.vendor!r} is not a plain TIFF tile grid or DICOM frames"
    ds = slide.level_downsamples[level]
    if abs(ds - round(ds)) > 1e-9:
        return None, f"level {level} downsample {ds:g} is not an integer (OpenSlide interpolates sub-pixel)"
    if slide.vendor == "dicom":
        layout, why = find_dicom_layout(slide, level)
    else:
        layout, why = _tiff_layout(slide, level)
    if layout is None:
        return None, why
    if len(layout.offsets) != layout.tiles_across * layout.tiles_down:
        return None, "tile offsets do not match the tile grid"
    if layout.tile_w % 8 or layout.tile_h % 8:
        return None, f"tile size {layout.tile_w}x{layout.tile_h} is not a multiple of 8"
    return layout, ""


def _tiff_layout(slide: Slide, level: int) -> tuple[JpegTileLayout | None, str]:
    """The JPEG tile layout of ``level`` of a TIFF slide, or (None, why not)."""
    path = Path(slide.path)
    if not path.is_file():
        return None, "not a single TIFF file"
    want = tuple(slide.level_dimensions[level])
    try:
        with tifffile.TiffFile(path) as tf:
            pages = [p for p in tf.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled
                     and (p.imagewidth, p.imagelength) == want]
            if len(pages) != 1:
                return None, f"{len(pages)} tiled TIFF pages of {want[0]}x{want[1]} px"
            p = pages[0]
            if int(p.compression) != 7:
                return None, f"compression {_name(p.compression)} is not JPEG"
            if (int(p.planarconfig) != 1 or p.samplesperpixel != 3 or p.bitspersample != 8
                    or p.imagedepth != 1 or p.tiledepth != 1):
                return None, "not 8-bit contiguous 3-sample tiles"
            photometric = int(p.photometric)
            if photometric not in (2, 6):
                return None, f"photometric {_name(p.photometric)} is neither RGB nor YCbCr"
            return JpegTileLayout(path, int(p.imagewidth), int(p.imagelength), int(p.tilewidth), int(p.tilelength),
                                  np.asarray(p.dataoffsets, dtype=np.int64), np.asarray(p.databytecounts, dtype=np.int64),
                                  p.jpegtables or None, "RGB" if photometric == 2 else "YCbCr"), ""
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        return None, f"tifffile cannot read the layout: {exc}"


DecodeFn = Callable[[tuple[int, int, int], "NDArray[np.uint8] | None"], "NDArray[np.uint8] | None"]
TileKey = tuple[int, int, int]  # (column, row, scale) of a source tile


class _Entry:
    """One cached tile: its (future) pixels, the bytes counted against the capacity, its heap stamp,
    and the reads copying from it now (its buffer is reused only once it is dropped and unpinned)."""

    __slots__ = ("arr", "dropped", "fut", "nbytes", "pins", "scale", "seq")

    def __init__(self, scale: int) -> None:
        self.fut: Future[NDArray[np.uint8] | None] = Future()
        self.nbytes = -1  # -1: not counted (being decoded, or dropped before it was)
        self.seq = 0
        self.scale = scale
        self.pins = 0  # reads given this tile that have not released it yet
        self.dropped = False  # no longer in the cache
        self.arr: NDArray[np.uint8] | None = None  # the decoded pixels, once decoded


class _TileCache:
    """Thread-safe cache of decoded tiles; a tile being decoded by one thread is waited for by others.

    When the reads to come are known (:meth:`expect`: how many reads need each tile and the order
    of the last one), a tile is dropped after its last read, and a cache over capacity evicts the
    tile whose last read comes latest (Belady's choice here: e.g. the column of source tiles at a
    band edge that the next band needs, bottom first), so each source tile is decoded once whenever
    what is still needed fits. Tiles read without a plan are evicted first, least recently used first.

    :meth:`get` pins the tile it returns until :meth:`release`: a dropped tile's buffer goes back
    to a small pool (``POOL_TILES`` per scale) only when no read is still copying from it, and the
    next tile decoded at that scale is decoded into it.
    """

    def __init__(self, capacity_bytes: int, tiles_across: int = 1) -> None:
        self.capacity = int(capacity_bytes)
        self.tiles_across = int(tiles_across)
        self._lock = threading.Lock()
        self._items: dict[TileKey, _Entry] = {}
        self._heap: list[tuple[int, int, int, TileKey]] = []  # (planned, -last read or seq, seq, key)
        #: per scale, per source tile (row-major id): reads still to come, order of the last one (-1: none)
        self._plans: dict[int, tuple[NDArray[np.int32], NDArray[np.int64]]] = {}
        self._seq = 0
        self._bytes = 0
        self._pool: dict[int, list[NDArray[np.uint8]]] = {}  # per scale: buffers free to decode into
        self._shapes: dict[int, tuple[int, ...]] = {}  # per scale: the shape of a decoded tile
        self.decoded = 0  # tiles decoded so far (for benchmarks and tests)
        self.reused = 0  # of which decoded into a pooled buffer

    def expect(self, scale: int, uses: NDArray[np.int32], last: NDArray[np.int64]) -> None:
        """Plan the reads to come at ``scale``: per source tile (row-major id), the number of reads
        and the order of the last one (-1: not read). Replaces an earlier plan for that scale."""
        with self._lock:
            self._plans[scale] = (np.array(uses, dtype=np.int32), np.array(last, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of decoded tiles held now."""
        return self._bytes

    def _last_read(self, key: TileKey) -> int:
        """Order of the tile's last planned read, -1 if none is planned (lock held)."""
        plan = self._plans.get(key[2])
        return -1 if plan is None else int(plan[1][key[1] * self.tiles_across + key[0]])

    def _push(self, key: TileKey, entry: _Entry) -> None:
        """(Re)stamp a counted entry in the eviction heap (lock held)."""
        self._seq += 1
        entry.seq = self._seq
        last = self._last_read(key)
        item = (0, self._seq, self._seq, key) if last < 0 else (1, -last, self._seq, key)
        heapq.heappush(self._heap, item)
        if len(self._heap) > 4 * len(self._items) + 64:  # drop stale stamps: memory stays bounded
            self._heap = [it for it in self._heap if (e := self._items.get(it[3])) is not None and e.seq == it[2]]
            heapq.heapify(self._heap)

    def _drop(self, key: TileKey, entry: _Entry) -> None:
        """Remove an entry from the cache (lock held); its buffer is reused once it is unpinned."""
        if self._items.get(key) is entry:
            del self._items[key]
            if entry.nbytes >= 0:
                self._bytes -= entry.nbytes
            entry.nbytes = -1
            entry.dropped = True
            self._recycle(entry)

    def _recycle(self, entry: _Entry) -> None:
        """Put a dropped, unpinned entry's buffer in the pool of its scale (lock held)."""
        arr = entry.arr
        if arr is None or entry.pins or not entry.dropped:
            return
        entry.arr = None
        pool = self._pool.setdefault(entry.scale, [])
        if len(pool) < POOL_TILES and arr.shape == self._shapes.get(entry.scale) and arr.flags.c_contiguous \
                and arr.flags.writeable:
            pool.append(arr)

    def _give_back(self, scale: int, buf: NDArray[np.uint8] | None) -> None:
        """Return an unused pooled buffer (lock held)."""
        if buf is not None:
            self._pool.setdefault(scale, []).append(buf)

    def release(self, entry: _Entry) -> None:
        """The read given ``entry``'s tile by :meth:`get` has finished copying from it."""
        with self._lock:
            entry.pins -= 1
            self._recycle(entry)

    def _evict(self) -> None:
        """Evict counted tiles until the cache fits its capacity (lock held)."""
        while self._bytes > self.capacity and self._heap:
            _, _, seq, key = heapq.heappop(self._heap)
            entry = self._items.get(key)
            if entry is not None and entry.seq == seq and entry.nbytes >= 0:
                self._drop(key, entry)

    def get(self, key: TileKey, decode: DecodeFn) -> tuple[NDArray[np.uint8] | None, _Entry]:
        """(the tile's pixels, its entry): decoded once, by the first read that asks (``decode(key,
        buffer)``, into a pooled ``buffer`` of the scale's tile shape when one is free, else None);
        the others wait for it. Call :meth:`release` with the entry when done with the pixels."""
        buf = None
        with self._lock:
            entry = self._items.get(key)
            owner = entry is None
            if entry is None:
                entry = self._items[key] = _Entry(key[2])
                pool = self._pool.get(key[2])
                buf = pool.pop() if pool else None
            entry.pins += 1
            plan = self._plans.get(key[2])
            i = key[1] * self.tiles_across + key[0]
            if plan is not None and plan[0][i] > 0:
                plan[0][i] -= 1
                if plan[0][i] == 0:  # its last planned read: nothing needs it after this one
                    plan[1][i] = -1
                    self._drop(key, entry)
            elif entry.nbytes >= 0:
                self._push(key, entry)  # least recently used order for unplanned reads
        if not owner:
            return entry.fut.result(), entry
        try:
            arr = decode(key, buf)
        except BaseException as exc:
            with self._lock:
                entry.pins -= 1
                self._drop(key, entry)
                self._give_back(key[2], buf)
            entry.fut.set_exception(exc)
            raise
        with self._lock:
            if arr is not buf:  # decoded elsewhere (an absent tile, or a decoder that refused it)
                self._give_back(key[2], buf)
            self.decoded += 1
            self.reused += buf is not None and arr is buf
            if arr is not None:
                entry.arr = arr
                self._shapes.setdefault(key[2], arr.shape)
            if self._items.get(key) is entry:  # still wanted: count it, evict if over capacity
                entry.nbytes = _nbytes(arr)
                self._bytes += entry.nbytes
                self._push(key, entry)
                self._evict()
        entry.fut.set_result(arr)
        return arr, entry


def _nbytes(arr: NDArray[np.uint8] | None) -> int:
    return 0 if arr is None else int(arr.nbytes)


class DirectJpegLevel:
    """Reads regions of one tiled-JPEG pyramid level straight from the file. Thread-safe."""

    def __init__(self, layout: JpegTileLayout, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.layout = layout
        self._fd = os.open(layout.path, os.O_RDONLY)
        self._cache = _TileCache(cache_bytes, layout.tiles_across)
        if layout.tables is not None and layout.tables[-2:] == b"\xff\xd9":
            self._splice_head = layout.tables[:-2]  # SOI + tables, then the tile without its SOI
        else:
            self._splice_head = b"\xff\xd8"
        self._rgb = layout.colorspace == "RGB"
        if self._rgb:
            self._splice_head = b"\xff\xd8" + ADOBE_RGB + self._splice_head[2:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DirectJpegLevel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect(self, windows: NDArray[np.int64], scale: int = 1) -> None:
        """Plan the reads to come: ``windows`` (M, 4) int64 (x, y, w, h) at 1/``scale``, in the order
        :meth:`read` will be called with them. Lets the cache drop each source tile after its last
        read and keep the ones still needed; reads outside the plan stay correct, only slower."""
        lay = self.layout
        tw, th = lay.tile_w // scale, lay.tile_h // scale
        iw, ih = math.ceil(lay.width / scale), math.ceil(lay.height / scale)
        win = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
        x0, y0 = np.maximum(win[:, 0], 0), np.maximum(win[:, 1], 0)
        x1, y1 = np.minimum(win[:, 0] + win[:, 2], iw), np.minimum(win[:, 1] + win[:, 3], ih)
        ok = (x0 < x1) & (y0 < y1)
        c0, c1, r0, r1 = x0 // tw, (x1 - 1) // tw, y0 // th, (y1 - 1) // th
        order = np.arange(len(win), dtype=np.int64)
        ids, when = [], []
        span_r = int((r1 - r0)[ok].max(initial=-1)) + 1
        span_c = int((c1 - c0)[ok].max(initial=-1)) + 1
        for dr in range(span_r):
            for dc in range(span_c):
                m = ok & (r0 + dr <= r1) & (c0 + dc <= c1)
                ids.append((r0[m] + dr) * lay.tiles_across + c0[m] + dc)
                when.append(order[m])
        n = lay.tiles_across * lay.tiles_down
        uses = np.zeros(n, dtype=np.int32)
        last = np.full(n, -1, dtype=np.int64)
        if ids:
            all_ids, all_when = np.concatenate(ids), np.concatenate(when)
            np.add.at(uses, all_ids, 1)
            np.maximum.at(last, all_ids, all_when)
        self._cache.expect(scale, uses, last)

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded tiles held in the cache now (at most its capacity)."""
        return self._cache.nbytes

    @property
    def tiles_decoded(self) -> int:
        """Source tiles decoded so far (each at most once while it stays in the cache)."""
        return self._cache.decoded

    def tile_bytes(self, col: int, row: int) -> bytes:
        """The compressed bytes of tile (col, row) as stored (b'' for a tile that is absent)."""
        lay = self.layout
        i = row * lay.tiles_across + col
        n = int(lay.bytecounts[i])
        if n == 0:
            return b""
        data = os.pread(self._fd, n, int(lay.offsets[i]))
        if len(data) != n:
            raise SlideError(f"{lay.path}: tile {col},{row} is truncated ({len(data)} of {n} bytes); the file is damaged")
        return data

    def jpeg_stream(self, data: bytes) -> bytes:
        """A stand-alone JPEG of one tile's bytes: tables spliced in, Adobe RGB marker for RGB data.

        For RGB data a JFIF segment right after SOI is dropped: libjpeg reads JFIF as YCbCr whatever
        the Adobe marker says, while the readers decode the level as its container (TIFF Photometric,
        DICOM Photometric Interpretation) declares it.
        """
        if self._rgb and data[2:4] == b"\xff\xe0" and len(data) > 6:
            return self._splice_head + data[4 + int.from_bytes(data[4:6], "big"):]
        return self._splice_head + data[2:]

    def _decode(self, key: tuple[int, int, int], out: NDArray[np.uint8] | None = None) -> NDArray[np.uint8] | None:
        """Tile (col, row) decoded at 1/scale: (tile_h/scale, tile_w/scale, 3) uint8, into ``out``
        (C-contiguous, that shape) when given; None for an absent tile."""
        col, row, scale = key
        data = self.tile_bytes(col, row)
        if not data:
            return None
        lay = self.layout
        shape = (lay.tile_h // scale, lay.tile_w // scale, 3)
        if out is not None:
            try:
                if self._decode_bytes(data, scale, shape, out).shape == shape:
                    return out
            except Exception:  # noqa: S110 (decoded again below, which names what is wrong)
                pass
        try:
            arr = self._decode_bytes(data, scale, shape)
        except Exception as exc:  # a decoder error on damaged data becomes a slide error
            raise SlideError(f"{lay.path}: cannot decode JPEG tile {col},{row}: {exc}") from exc
        if arr.shape != shape:
            raise SlideError(f"{lay.path}: JPEG tile {col},{row} decodes to {arr.shape}, expected {shape}")
        return arr

    def _decode_bytes(self, data: bytes, scale: int, shape: tuple[int, int, int],
                      out: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
        """One tile's bytes decoded at 1/``scale`` (expected ``shape``; 1: full size, otherwise
        libjpeg-turbo's scaled IDCT), into ``out`` when given. Decoder errors raise as they are."""
        return decode_scaled(self.jpeg_stream(data), scale, shape[1], shape[0], out)

    def read(self, x: int, y: int, w: int, h: int, scale: int = 1,
             out: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
        """(h, w, 3) uint8 RGB of the level decoded at 1/``scale``, top-left (x, y) in those pixels.

        Pixels outside the image (or in absent tiles) are white.
        """
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale}")
        lay = self.layout
        tw, th = lay.tile_w // scale, lay.tile_h // scale
        iw, ih = math.ceil(lay.width / scale), math.ceil(lay.height / scale)
        if out is None:
            out = np.empty((h, w, 3), dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
        if x0 >= x1 or y0 >= y1:
            out[...] = 255
            return out
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            out[...] = 255
        for r in range(y0 // th, (y1 - 1) // th + 1):
            ty0, ty1 = max(y0, r * th), min(y1, (r + 1) * th)
            for c in range(x0 // tw, (x1 - 1) // tw + 1):
                tx0, tx1 = max(x0, c * tw), min(x1, (c + 1) * tw)
                tile, entry = self._cache.get((c, r, scale), self._decode)
                dst = out[ty0 - y:ty1 - y, tx0 - x:tx1 - x]
                try:
                    if tile is None:
                        dst[...] = 255
                    else:
                        dst[...] = tile[ty0 - r * th:ty1 - r * th, tx0 - c * tw:tx1 - c * tw]
                finally:
                    self._cache.release(entry)
        return out


def decode_scaled(stream: bytes, scale: int, width: int, height: int,
                  out: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
    """(height, width, 3) uint8 RGB of a stand-alone JPEG decoded at 1/``scale`` in the DCT (1: full size; into
    the C-contiguous buffer ``out`` when given: the result is then a view of it).

    ``width`` x ``height`` is the image size divided by ``scale`` (libjpeg-turbo's scaled IDCT,
    the same pixels as Pillow's ``draft``; the GIL is released while decoding). Warnings such as
    extraneous bytes after the image are ignored, as the full-size decoder and Pillow ignore them;
    errors raise.
    """
    return simplejpeg.decode_jpeg(stream, "RGB", min_factor=scale, min_height=height, min_width=width,
                                  strict=False, buffer=out)


def _detailed_tile(layout: JpegTileLayout) -> tuple[int, int] | None:
    """(column, row) of the tile with the most compressed bytes (the most detail, usually tissue:
    the strictest tile to check, and one the stage then reads), None if no tile has data."""
    if not layout.bytecounts.size or int(layout.bytecounts.max()) <= 0:
        return None
    i = int(np.argmax(layout.bytecounts))
    return i % layout.tiles_across, i // layout.tiles_across


def _probe_windows(layout: JpegTileLayout) -> list[tuple[int, int, int, int]]:
    """Windows (x, y, w, h) of level pixels to compare with the reader: the top-left ``PROBE_SIDE``
    px square of the most detailed tile (colour space, tables, offsets) and the level's bottom-right
    ``EDGE_PROBE_SIDE`` px corner inside the image (the last, partial tile's clipping), if present."""
    out = []
    tile = _detailed_tile(layout)
    if tile is not None:
        x, y = tile[0] * layout.tile_w, tile[1] * layout.tile_h
        out.append((x, y, min(PROBE_SIDE, layout.tile_w, layout.width - x),
                    min(PROBE_SIDE, layout.tile_h, layout.height - y)))
    if layout.bytecounts[-1] > 0:
        x = max(layout.width - EDGE_PROBE_SIDE, (layout.tiles_across - 1) * layout.tile_w)
        y = max(layout.height - EDGE_PROBE_SIDE, (layout.tiles_down - 1) * layout.tile_h)
        if (x, y, layout.width - x, layout.height - y) not in out:
            out.append((x, y, layout.width - x, layout.height - y))
    return out


def verify_against_reader(direct: DirectJpegLevel, slide: Slide, level: int) -> str:
    """'' when probe windows (:func:`_probe_windows`) decode here as the slide's reader decodes
    them (within ``PROBE_MAX_DIFF``), else why not."""
    lay = direct.layout
    ds = int(round(slide.level_downsamples[level]))
    probes = _probe_windows(lay)
    if not probes:
        return "no tile with data to check against the reader"
    for x, y, w, h in probes:
        ours = direct.read(x, y, w, h)
        theirs = slide.read_region((x * ds, y * ds), level, (w, h))
        if np.array_equal(ours, theirs):
            continue
        diff = int(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).max())
        if diff > PROBE_MAX_DIFF:
            return (f"level {level} pixels {x},{y} ({w}x{h} px) differ from the reader by up to {diff} "
                    "grey levels")
    return ""


def verify_reduced(direct: DirectJpegLevel, scale: int) -> str:
    """'' when a tile decoded at 1/``scale`` matches its full decode shrunk by a box filter."""
    lay = direct.layout
    tile = _detailed_tile(lay)
    if tile is None:
        return "no tile with data to check"
    c, r = tile
    full = direct.read(c * lay.tile_w, r * lay.tile_h, lay.tile_w, lay.tile_h)
    small = direct.read(c * lay.tile_w // scale, r * lay.tile_h // scale, lay.tile_w // scale, lay.tile_h // scale, scale)
    ref = np.asarray(Image.fromarray(full).resize((small.shape[1], small.shape[0]), Image.Resampling.BOX))
    err = float(np.abs(small.astype(np.int16) - ref.astype(np.int16)).mean())
    if err > REDUCED_PROBE_MEAN_DIFF:
        return f"decoding at 1/{scale} differs from full decoding by {err:.1f} grey levels on average"
    return ""


def open_direct_level(slide: Slide, level: int, cache_bytes: int = DEFAULT_CACHE_BYTES) -> tuple[DirectJpegLevel | None, str]:
    """A verified direct decoder for ``level`` of ``slide``, or (None, why the reader must be used)."""
    layout, why = find_jpeg_layout(slide, level)
    if layout is None:
        return None, why
    direct = DirectJpegLevel(layout, cache_bytes)
    try:
        why = verify_against_reader(direct, slide, level)
    except SlideError as exc:
        why = str(exc)
    if why:
        direct.close()
        return None, why
    return direct, ""
