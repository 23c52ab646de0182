"""Tile loading for extraction: whole storage chunks of patch stores, read ahead in order.

Two loaders yield the same :class:`TileBatch` stream. ``threads`` (the default on a GPU): a
pool of threads in this process decodes chunks (libjpeg-turbo and zstd release the GIL) straight
into pinned host buffers, with no inter-process copy; on an H100 node the process-based loader
was capped at ~11,500 tiles/s (one thread receiving and pinning ~1.7 GB/s of shared-memory
pages), below what ResNet-50 in bf16 consumes. ``processes`` (the default on the CPU): a
DataLoader with worker processes, which isolates a crash inside a codec to one slide.

Each dataset item is a run of consecutive storage chunks of one store, ``[start, stop)`` with
at most ``batch_size`` tiles (never less than one chunk), decoded in a worker process into one
``(n, S, S, 3) uint8`` tensor. Items follow the slides' order and, within a slide, the row order
of the store, and the DataLoader returns them in that order, so features come out in store order.
Decoding stays on uint8 in the workers; conversion, resizing and normalisation happen on the
device (:mod:`wsi_mil.extract.engine`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileRange:
    """Tiles ``[start, stop)`` of slide number ``slide`` (an index into the run's slide list)."""

    slide: int
    path: str
    start: int
    stop: int


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


def plan_ranges(slide: int, path: str | Path, chunk_ranges: Sequence[tuple[int, int]], batch_size: int) -> list[TileRange]:
    """Group consecutive storage chunks into reads of at most ``batch_size`` tiles (>= 1 chunk)."""
    out: list[TileRange] = []
    start = stop = None
    for a, b in chunk_ranges:
        if start is None:
            start, stop = a, b
        elif b - start <= batch_size and a == stop:
            stop = b
        else:
            out.append(TileRange(slide, str(path), start, stop))
            start, stop = a, b
    if start is not None:
        out.append(TileRange(slide, str(path), start, stop))
    return out


class TileRangeDataset(Dataset):
    """Reads :class:`TileRange` items; each worker keeps its opened stores (one per path)."""

    def __init__(self, ranges: Sequence[TileRange]) -> None:
        self.ranges = list(ranges)
        self._stores: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.ranges)

    def _store(self, path: str) -> Any:
        store = self._stores.get(path)
        if store is None:
            from wsi_mil.stores.patches import open_patch_store

            self._stores.clear()  # stores are read one after the other: keep one open
            store = self._stores[path] = open_patch_store(path)
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


def as_tensor(tiles: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``tiles``' memory. zarr may hand back read-only arrays; the pipeline never
    writes to tiles (the device copy is converted out of place), so no copy is made."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(tiles)


def _identity(item: TileBatch) -> TileBatch:
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
    """Yields :class:`TileBatch` for ``ranges`` in order, decoded by ``threads`` threads.

    At most ``prefetch`` x ``threads`` items are in flight; tiles land in pinned memory on CUDA.
    """

    def __init__(self, ranges: Sequence[TileRange], threads: int, pin: bool, prefetch: int = 2) -> None:
        self.ranges = list(ranges)
        self.threads = max(1, threads)
        self.pin = pin
        self.window = self.threads * max(1, prefetch)
        self._local = threading.local()

    def _read(self, r: TileRange) -> TileBatch:
        try:
            stores = getattr(self._local, "stores", None)
            if stores is None:
                stores = self._local.stores = {}
            store = stores.get(r.path)
            if store is None:
                from wsi_mil.stores.patches import open_patch_store

                stores.clear()
                store = stores[r.path] = open_patch_store(r.path)
            s = store.tile_size
            out = torch.empty((r.stop - r.start, s, s, 3), dtype=torch.uint8, pin_memory=self.pin)
            store.read_tiles(r.start, r.stop, out=out.numpy())  # decoded straight into (pinned) memory
            return TileBatch(r.slide, r.start, r.stop, out)
        except Exception as exc:  # a damaged store fails its slide, never the run
            return TileBatch(r.slide, r.start, r.stop, None, " ".join(f"{type(exc).__name__}: {exc}".split()))

    def __iter__(self):  # type: ignore[no-untyped-def]
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads, thread_name_prefix="wsi_mil-decode") as pool:
            pending: deque = deque()
            items = iter(self.ranges)
            for r in items:
                pending.append(pool.submit(self._read, r))
                if len(pending) >= self.window:
                    break
            while pending:
                batch = pending.popleft().result()
                nxt = next(items, None)
                if nxt is not None:
                    pending.append(pool.submit(self._read, nxt))
                yield batch


def make_loader(ranges: Sequence[TileRange], device: torch.device, num_workers: int | None = None,
                prefetch: int = 2, item_bytes: int = 0, mode: str = "auto") -> Any:
    """An in-order loader over ``ranges``: threads (``mode="threads"``, or ``auto`` on CUDA) or a
    DataLoader of ``num_workers`` processes (``processes``, or ``auto`` on the CPU).

    Inside a daemonic process (a Dask worker), which may not start children, processes become an
    in-process read. ``item_bytes`` (the largest item) caps processes to what shared memory holds.
    """
    workers = default_num_workers(device) if num_workers is None else max(0, int(num_workers))
    if mode == "threads" or (mode == "auto" and device.type == "cuda"):
        return ThreadedTileLoader(ranges, max(1, workers), pin=device.type == "cuda", prefetch=prefetch)
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
