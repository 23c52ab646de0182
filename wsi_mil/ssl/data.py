"""Tiles for SimCLR: a deterministic, shardable order over patch-store chunks, read ahead in threads.

Patch stores are compressed in chunks of tiles, so reading one random tile decodes a whole chunk.
The order is therefore built from chunks: each epoch the chunks of all stores are shuffled and
dealt to the processes (greedy, balancing tile counts: a DistributedSampler over chunks, so no
process decodes another's tiles); each process cuts its chunks into *shuffle groups* of
``shuffle_chunks`` chunks and shuffles the tiles within each group. A batch therefore mixes tiles
of many slides and places. Everything is a pure function of (seed, epoch): resuming at step k of
an epoch rebuilds the same order and skips k batches without reading them.

Tiles are returned as uint8 (B, S, S, 3) arrays, exactly as stored.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class TileSource(Protocol):
    """What SimCLR needs of a patch store (``wsi_mil.stores.patches.PatchStore`` satisfies it)."""

    @property
    def n_tiles(self) -> int: ...

    def chunk_ranges(self) -> list[tuple[int, int]]: ...

    def read_tiles(self, start: int, stop: int) -> np.ndarray: ...


class ArrayTileSource:
    """An in-memory tile source: tiles (N, S, S, 3) uint8 cut into chunks of ``chunk`` tiles.

    Used by benchmarks and tests, and on machines where patch stores cannot be opened.
    """

    def __init__(self, tiles: np.ndarray, chunk: int = 64) -> None:
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise ValueError(f"tiles must be (N, S, S, 3) uint8, got {tiles.shape} {tiles.dtype}")
        self.tiles = tiles
        self.chunk = int(chunk)

    @property
    def n_tiles(self) -> int:
        return int(self.tiles.shape[0])

    @property
    def tile_size(self) -> int:
        return int(self.tiles.shape[1])

    def chunk_ranges(self) -> list[tuple[int, int]]:
        n = self.n_tiles
        return [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)]

    def read_tiles(self, start: int, stop: int) -> np.ndarray:
        return self.tiles[start:stop]


#: a chunk of tiles: (source index, start, stop)
Chunk = tuple[int, int, int]


def list_chunks(sources: Sequence[TileSource]) -> list[Chunk]:
    """All non-empty chunks of all sources, in source then tile order."""
    return [(i, s, e) for i, src in enumerate(sources) for s, e in src.chunk_ranges() if e > s]


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64), so nearby inputs give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``parts`` (e.g. seed, epoch, step, rank)."""
    g = torch.Generator()
    g.manual_seed(_seed(*parts))
    return g


@dataclass(frozen=True)
class ShuffleGroup:
    """Chunks read together; ``perm`` orders their concatenated tiles (a permutation)."""

    chunks: tuple[Chunk, ...]
    perm: np.ndarray

    @property
    def n_tiles(self) -> int:
        return int(self.perm.shape[0])


def deal_chunks(chunks: Sequence[Chunk], seed: int, epoch: int, world: int) -> list[list[Chunk]]:
    """Shuffle the chunks for ``epoch`` and deal them to ``world`` processes, balancing tiles.

    Each chunk goes to the process with the fewest tiles so far (ties: lowest rank), so loads
    never differ by more than the largest chunk.
    """
    order = torch.randperm(len(chunks), generator=generator(seed, epoch, 1)).tolist()
    shares: list[list[Chunk]] = [[] for _ in range(world)]
    heap = [(0, r) for r in range(world)]
    for i in order:
        load, r = heapq.heappop(heap)
        shares[r].append(chunks[i])
        heapq.heappush(heap, (load + chunks[i][2] - chunks[i][1], r))
    return shares


def rank_groups(
    chunks: Sequence[Chunk], seed: int, epoch: int, rank: int, world: int, shuffle_chunks: int
) -> list[ShuffleGroup]:
    """This process's shuffle groups for ``epoch``, in reading order."""
    mine = deal_chunks(chunks, seed, epoch, world)[rank]
    groups = []
    for j in range(0, len(mine), shuffle_chunks):
        part = tuple(mine[j : j + shuffle_chunks])
        n = sum(e - s for _, s, e in part)
        perm = torch.randperm(n, generator=generator(seed, epoch, 2, rank, j)).numpy()
        groups.append(ShuffleGroup(part, perm))
    return groups


def steps_per_epoch(
    chunks: Sequence[Chunk],
    world: int,
    batch_size: int,
    max_tiles: int | None = None,
) -> int:
    """Steps in every epoch: full batches that every process is sure to get in any epoch.

    Dealing keeps loads within one chunk of each other, so every process gets at least
    ``(total - (world - 1) * largest chunk) / world`` tiles. Fixed for the run (the schedule needs
    it) and identical on every process (DDP needs it).
    """
    total = sum(e - s for _, s, e in chunks)
    largest = max((e - s for _, s, e in chunks), default=0)
    fewest = max(0, (total - (world - 1) * largest) // world)
    if max_tiles is not None:
        fewest = min(fewest, max_tiles)
    return fewest // batch_size


class BatchReader:
    """Batches of tiles (B, S, S, 3) uint8 for one process and one epoch, read ahead in threads.

    ``iter_batches(start_step, n_steps)`` yields batches ``start_step .. n_steps - 1``; the
    shuffle groups they need are decoded by ``threads`` threads, ``prefetch_groups`` groups ahead.
    """

    def __init__(
        self,
        sources: Sequence[TileSource],
        groups: Sequence[ShuffleGroup],
        batch_size: int,
        threads: int = 4,
        prefetch_groups: int = 2,
    ) -> None:
        self.sources = sources
        self.groups = list(groups)
        self.batch_size = int(batch_size)
        self.threads = max(1, int(threads))
        self.prefetch_groups = max(1, int(prefetch_groups))
        self._bounds = np.cumsum([0] + [g.n_tiles for g in self.groups])

    def _read_chunk(self, chunk: Chunk) -> np.ndarray:
        src, s, e = chunk
        tiles = np.asarray(self.sources[src].read_tiles(s, e))
        if tiles.ndim != 4 or tiles.shape[0] != e - s or tiles.dtype != np.uint8:
            raise ValueError(f"source {src} returned {tiles.shape} {tiles.dtype} for tiles [{s}, {e})")
        return tiles

    def iter_batches(self, start_step: int, n_steps: int) -> Iterator[np.ndarray]:
        """Yield batches ``start_step`` .. ``n_steps - 1`` of this epoch."""
        if n_steps <= start_step:
            return
        b = self.batch_size
        if n_steps * b > self._bounds[-1]:
            raise ValueError(f"{n_steps} steps of {b} tiles need more than the {self._bounds[-1]} tiles dealt")
        first = int(np.searchsorted(self._bounds, start_step * b, side="right") - 1)
        last = int(np.searchsorted(self._bounds, n_steps * b - 1, side="right") - 1)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="simclr-read")
        assembler = ThreadPoolExecutor(1, thread_name_prefix="simclr-group")
        pending: dict[int, Future[np.ndarray]] = {}
        loaded: dict[int, np.ndarray] = {}

        def assemble(gi: int, parts: list[Future[np.ndarray]]) -> np.ndarray:
            # concatenation and shuffling run here, off the training thread
            return np.concatenate([f.result() for f in parts], axis=0)[self.groups[gi].perm]

        def request(gi: int) -> None:
            if gi <= last and gi not in pending and gi not in loaded:
                parts = [pool.submit(self._read_chunk, c) for c in self.groups[gi].chunks]
                pending[gi] = assembler.submit(assemble, gi, parts)

        def group_tiles(gi: int) -> np.ndarray:
            if gi not in loaded:
                for ahead in range(gi, gi + self.prefetch_groups + 1):
                    request(ahead)
                loaded[gi] = pending.pop(gi).result()
                for old in [k for k in loaded if k < gi]:
                    del loaded[old]
            return loaded[gi]

        try:
            request(first)
            for step in range(start_step, n_steps):
                lo, hi = step * b, (step + 1) * b
                gi = int(np.searchsorted(self._bounds, lo, side="right") - 1)
                parts = []
                while lo < hi:
                    tiles = group_tiles(gi)
                    off = lo - int(self._bounds[gi])
                    take = min(hi - lo, tiles.shape[0] - off)
                    parts.append(tiles[off : off + take])
                    lo += take
                    gi += 1
                yield parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        finally:
            for fut in pending.values():
                fut.cancel()
            assembler.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
