"""Tile loading for extraction: whole storage chunks of patch stores, read ahead in order.

Two loaders yield the same :class:`TileBatch` stream. ``threads`` (the default on a GPU): a
pool of threads in this process decodes chunks (libjpeg-turbo and zstd release the GIL), one
chunk per task, straight into a ring of reusable pinned batch buffers, with no inter-process
copy; on an H100 node the process-based loader was capped at ~11,500 tiles/s (one thread
receiving and pinning ~1.7 GB/s of shared-memory pages), below what ResNet-50 in bf16 consumes.
``processes`` (the default on the CPU): a DataLoader with worker processes, which isolates a
crash inside a codec to one slide.

Each item is a run of consecutive storage chunks of one store, ``[start, stop)`` with at most
``batch_size`` tiles (never less than one chunk), delivered as one ``(n, S, S, 3) uint8`` tensor.
Items follow the slides' order and, within a slide, the row order of the store, and both loaders
return them in that order, so features come out in store order. Decoding stays on uint8;
conversion, resizing and normalisation happen on the device (:mod:`wsi_mil.extract.engine`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import threading
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Dataset

from wsi_mil.errors import StoreError
from wsi_mil.stores import patches  # looked up at call time: tests count the stores opened
from wsi_mil.stores.patches import PatchStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileRange:
    """Tiles ``[start, stop)`` of slide number ``slide`` (an index into the run's slide list).

    ``tile_size``: the side S in px of the store's tiles, from its validated metadata (the
    loader checks it against the store it opens); ``chunks``: the storage chunks ``[a, b)`` that
    make up the range (empty: read it as one piece).
    """

    slide: int
    path: str
    start: int
    stop: int
    tile_size: int
    chunks: tuple[tuple[int, int], ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes of the range's (n, S, S, 3) uint8 tiles."""
        return (self.stop - self.start) * self.tile_size * self.tile_size * 3

    def pieces(self) -> tuple[tuple[int, int], ...]:
        """What one decoding task reads: the storage chunks, or the whole range."""
        return self.chunks or ((self.start, self.stop),)


@dataclass
class TileBatch:
    """What a worker hands back: the tiles of one :class:`TileRange`, or why they failed.

    ``tiles``: (n, S, S, 3) uint8 (pinned when the loader pins memory); ``error``: one line.
    """

    slide: int
    start: int
    stop: int
    tiles: torch.Tensor | None
    error: str = ""

    def pin_memory(self) -> TileBatch:
        """Called by the DataLoader's pinning thread (custom batch types must pin themselves)."""
        if self.tiles is not None:
            self.tiles = self.tiles.pin_memory()
        return self


def plan_ranges(slide: int, path: str | Path, chunk_ranges: Sequence[tuple[int, int]], batch_size: int,
                tile_size: int) -> list[TileRange]:
    """Group consecutive storage chunks into reads of at most ``batch_size`` tiles (>= 1 chunk).

    ``tile_size``: the store's tile side in px (``PatchStore.tile_size``); not positive: a
    :class:`StoreError` naming ``path``.
    """
    if int(tile_size) < 1:
        raise StoreError(f"{path}: no tile size (got {tile_size!r}); the patch store's 'tile_size' attribute "
                         "is missing or invalid: re-run 'wsi-mil tile --overwrite'")
    if int(batch_size) < 1:
        raise ValueError(f"batch size {batch_size}: must be >= 1")
    out: list[TileRange] = []
    group: list[tuple[int, int]] = []
    for a, b in chunk_ranges:
        if group and (b - group[0][0] > batch_size or a != group[-1][1]):
            out.append(TileRange(slide, str(path), group[0][0], group[-1][1], tile_size, tuple(group)))
            group = []
        group.append((int(a), int(b)))
    if group:
        out.append(TileRange(slide, str(path), group[0][0], group[-1][1], tile_size, tuple(group)))
    return out


def largest_item_bytes(ranges: Sequence[TileRange]) -> int:
    """Bytes of the largest item of ``ranges`` (0 for none): what one loader item occupies."""
    return max([r.nbytes for r in ranges] + [0])


class TileRangeDataset(Dataset[TileBatch]):
    """Reads :class:`TileRange` items; each worker keeps its opened stores (one per path)."""

    def __init__(self, ranges: Sequence[TileRange]) -> None:
        self.ranges = list(ranges)
        self._stores: dict[str, PatchStore] = {}

    def __len__(self) -> int:
        return len(self.ranges)

    def _store(self, path: str) -> PatchStore:
        store = self._stores.get(path)
        if store is None:
            self._stores.clear()  # stores are read one after the other: keep one open
            store = self._stores[path] = patches.open_patch_store(path)
        return store

    def __getitem__(self, i: int) -> TileBatch:
        r = self.ranges[i]
        try:
            tiles = self._store(r.path).read_tiles(r.start, r.stop)
            if tiles.shape[0] != r.stop - r.start:
                raise ValueError(f"{r.path}: read {tiles.shape[0]} tiles for rows {r.start}-{r.stop}")
            return TileBatch(r.slide, r.start, r.stop, as_tensor(tiles))
        except Exception as exc:  # a damaged store fails its slide, never the run
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            return TileBatch(r.slide, r.start, r.stop, None, reason)


def as_tensor(tiles: NDArray[np.uint8]) -> torch.Tensor:
    """A (n, S, S, 3) uint8 tensor sharing ``tiles``' memory. zarr may hand back read-only arrays; the pipeline never
    writes to tiles (the device copy is converted out of place), so no copy is made."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(tiles)


def _identity(item: Any) -> Any:
    """The DataLoader's collate function: with ``batch_size=None`` each item is one :class:`TileBatch`."""
    return item


def default_num_workers(device: torch.device) -> int:
    """Loader processes: all cores but one feeding a GPU; one beside a CPU model."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    if device.type == "cuda":
        per_gpu = max(1, (cores - 1) // max(1, torch.cuda.device_count()))
        return per_gpu
    return 1 if cores > 2 else 0


def fit_workers_to_shm(workers: int, prefetch: int, item_bytes: int, shm: str = "/dev/shm") -> int:
    """Loader processes whose in-flight items fit in shared memory (containers often have 64 MB).

    Each worker hands ``prefetch`` items of ``item_bytes`` to the main process through ``shm``;
    with too little room the workers would die with a bus error. Returns ``workers`` or fewer
    (0: read in this process).
    """
    if workers <= 0 or item_bytes <= 0:
        return workers
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return workers
    fit = int(free * 0.8) // (item_bytes * (prefetch + 1))
    if fit < workers:
        log.warning("%s has %.0f MB free: %d loader processes instead of %d (give the container a larger "
                    "--shm-size, or lower --batch-size)", shm, free / 2**20, max(0, fit), workers)
        return max(0, fit)
    return workers


class ThreadedTileLoader:
    """Yields :class:`TileBatch` for ``ranges`` in order; their chunks are decoded by ``threads`` threads.

    Every storage chunk is one task, so the chunks of a batch decode in parallel (the first batch
    is ready after about one chunk's decoding time per thread, not a whole batch's). Batches are
    assembled in a ring of reusable buffers (pinned on CUDA, allocated once): enough for about
    ``prefetch`` chunks per thread in flight, plus the batch being consumed.

    A yielded batch's tiles are valid until the next batch is requested: copy them (a
    ``non_blocking`` device copy is fine) before asking for the next one. On CUDA ``device``,
    a buffer is refilled only after the work queued on the device's current stream at that
    request has run (queue the copy there, or on a stream that one waits for).
    """

    def __init__(self, ranges: Sequence[TileRange], threads: int, device: torch.device | str = "cpu",
                 prefetch: int = 2) -> None:
        self.ranges = list(ranges)
        self.threads = max(1, threads)
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        pieces = max([len(r.pieces()) for r in self.ranges] + [1])
        wanted = -(-self.threads * max(1, prefetch) // pieces) + 1  # ceil(chunks in flight / chunks a batch) + 1
        self.buffers = max(2, min(len(self.ranges), wanted))
        self._lock = threading.Lock()
        self._stores: dict[str, list[Any]] = {}  # path -> [lock, store or None], insertion order

    def _open(self, path: str) -> PatchStore:
        """The loader's handle on ``path``, opened once and shared by its threads (reading is
        thread-safe; opening goes through zarr's one event loop, so once per store, not per thread).
        The last few stores stay open: slides are read one after the other."""
        with self._lock:
            entry = self._stores.get(path)
            if entry is None:
                entry = self._stores[path] = [threading.Lock(), None]
                while len(self._stores) > 4:
                    self._stores.pop(next(iter(self._stores)))
        lock, store = entry
        if store is None:
            with lock:  # the first thread opens it, the others wait for that
                if entry[1] is None:
                    entry[1] = patches.open_patch_store(path)
                store = entry[1]
        return store

    def _read_piece(self, r: TileRange, a: int, b: int, out: NDArray[np.uint8], free: torch.cuda.Event | None) -> str:
        """Decode tiles ``[a, b)`` of ``r`` into ``out`` (the range's rows); '' or the error, one line."""
        try:
            if free is not None:
                free.synchronize()  # the buffer's previous batch has been copied out
            store = self._open(r.path)
            if store.tile_size != out.shape[1]:
                raise ValueError(f"{r.path}: tiles of {store.tile_size} px, expected {out.shape[1]} px")
            store.read_tiles(a, b, out=out[a - r.start: b - r.start])
            return ""
        except Exception as exc:  # a damaged store fails its slide, never the run
            return " ".join(f"{type(exc).__name__}: {exc}".split())

    def __iter__(self) -> Iterator[TileBatch]:
        ring: list[torch.Tensor | None] = [None] * self.buffers
        free: list[Any] = [None] * self.buffers  # event: when the slot's last batch was copied out

        def submit(k: int) -> tuple[TileRange, torch.Tensor, list[Future[str]]]:
            r = self.ranges[k]
            slot = k % self.buffers
            s = r.tile_size
            n = r.stop - r.start
            nbytes = n * s * s * 3
            buf = ring[slot]
            if buf is None or buf.numel() < nbytes:
                if free[slot] is not None:
                    free[slot].synchronize()
                    free[slot] = None
                buf = ring[slot] = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
            tiles = buf[:nbytes].view(n, s, s, 3)
            out = tiles.numpy()
            tasks = [pool.submit(self._read_piece, r, a, b, out, free[slot]) for a, b in r.pieces()]
            return r, tiles, tasks

        with ThreadPoolExecutor(self.threads, thread_name_prefix="wsi_mil-decode") as pool:
            pending: deque[tuple[TileRange, torch.Tensor, list[Future[str]]]] = deque()
            for k in range(min(self.buffers, len(self.ranges))):
                pending.append(submit(k))
            for k in range(len(self.ranges)):
                r, tiles, tasks = pending.popleft()
                errors = [e for e in (t.result() for t in tasks) if e]
                error = errors[0] if errors else ""
                yield TileBatch(r.slide, r.start, r.stop, None if error else tiles, error)
                if self.pin:  # the consumer has queued its copy of this batch: mark when it is done
                    event = torch.cuda.Event(blocking=True)
                    event.record(torch.cuda.current_stream(self.device))
                    free[k % self.buffers] = event
                if k + self.buffers < len(self.ranges):
                    pending.append(submit(k + self.buffers))


def make_loader(ranges: Sequence[TileRange], device: torch.device, num_workers: int | None = None,
                prefetch: int = 2, item_bytes: int = 0,
                mode: str = "auto") -> ThreadedTileLoader | DataLoader[TileBatch]:
    """An in-order loader over ``ranges``: threads (``mode="threads"``, or ``auto`` on CUDA) or a
    DataLoader of ``num_workers`` processes (``processes``, or ``auto`` on the CPU).

    Inside a daemonic process (a Dask worker), which may not start children, processes become an
    in-process read. ``item_bytes`` (the largest item) caps processes to what shared memory holds.
    """
    workers = default_num_workers(device) if num_workers is None else max(0, int(num_workers))
    if mode == "threads" or (mode == "auto" and device.type == "cuda"):
        return ThreadedTileLoader(ranges, max(1, workers), device, prefetch=prefetch)
    if multiprocessing.current_process().daemon:
        workers = 0
    workers = fit_workers_to_shm(workers, prefetch, item_bytes)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(prefetch_factor=prefetch, persistent_workers=False)
    return DataLoader(
        TileRangeDataset(ranges),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_identity,
        pin_memory=device.type == "cuda",
        **kwargs,
    )
