"""Per-slide fitting from a patch store: a deterministic sample of tissue tiles, then the method's fit.

The sample: up to :data:`FIT_CHUNKS` storage chunks spread evenly over the store's rows (the tile
grid's order, so over the slide), and in each the tiles with the highest tissue fraction (ties:
the lower row), about :data:`FIT_TILES` tiles in all; reading whole chunks is the store's cheapest
access. Their pixels, at most :data:`MAX_PIXELS` of them (a seeded subsample beyond that), are
what the method fits. The same store always gives the same sample, so the same parameters.

:class:`FitAhead` runs the fits of a run's slides on background threads, in slide order, while
the device embeds the slides before them: a fit costs about a tenth of a second of CPU, which
then overlaps the extraction instead of adding to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wsi_mil.stain.base import FittedStain, StainNormalizer
from wsi_mil.stores import patches
from wsi_mil.stores.patches import PatchStore

FIT_TILES = 64
FIT_CHUNKS = 4
MAX_PIXELS = 1 << 18
SEED = 0


@dataclass
class SlideStain:
    """One slide's fitted transform and how its sample was drawn (recorded in the feature file)."""

    transform: FittedStain
    sample: dict[str, Any]

    def attrs(self) -> dict[str, Any]:
        """The per-slide part of a feature file's attributes: ``stain_params`` and ``stain_sample``."""
        return {"stain_params": self.transform.params(), "stain_sample": self.sample}


def sample_tile_ids(tissue_fraction: NDArray[np.floating[Any]], chunk_ranges: list[tuple[int, int]],
                    n_tiles: int = FIT_TILES, n_chunks: int = FIT_CHUNKS) -> NDArray[np.int64]:
    """Row ids of the fitting sample, ascending: ``n_chunks`` evenly spaced chunks, in each the
    ``ceil(n_tiles / chunks)`` tiles of highest ``tissue_fraction`` (N,)."""
    if not chunk_ranges or n_tiles < 1:
        return np.empty(0, dtype=np.int64)
    picks = np.unique(np.linspace(0, len(chunk_ranges) - 1, min(n_chunks, len(chunk_ranges))).round().astype(int))
    per = -(-n_tiles // len(picks))
    ids: list[int] = []
    for j in picks:
        a, b = chunk_ranges[int(j)]
        tf = np.asarray(tissue_fraction[a:b], dtype=np.float64)
        ids += (a + np.sort(np.argsort(-tf, kind="stable")[:per])).tolist()
    return np.asarray(ids, dtype=np.int64)


def read_sample(store: PatchStore, ids: NDArray[np.int64]) -> NDArray[np.uint8]:
    """Tiles ``ids`` (ascending) of ``store`` as (n, S, S, 3) uint8, one read per chunk touched."""
    out = np.empty((len(ids), store.tile_size, store.tile_size, 3), dtype=np.uint8)
    k = store.chunk_size
    chunk_of = ids // k
    for j in np.unique(chunk_of):
        sel = np.flatnonzero(chunk_of == j)
        a = int(j) * k
        tiles = store.read_tiles(a, min(a + k, store.n_tiles))
        out[sel] = tiles[ids[sel] - a]
    return out


def sample_pixels(tiles: NDArray[np.uint8], max_pixels: int = MAX_PIXELS, seed: int = SEED) -> NDArray[np.uint8]:
    """The pixels of ``tiles`` (..., 3) as (N, 3); beyond ``max_pixels``, a seeded subsample (in order)."""
    flat = np.asarray(tiles).reshape(-1, 3)
    if len(flat) <= max_pixels:
        return flat
    keep = np.sort(np.random.default_rng(seed).choice(len(flat), size=max_pixels, replace=False))
    return flat[keep]


def fit_store(store: PatchStore, normalizer: StainNormalizer, n_tiles: int = FIT_TILES,
              max_pixels: int = MAX_PIXELS) -> SlideStain:
    """Fit ``normalizer`` to one patch store from its sample; errors name the slide and the store.

    Raises :class:`~wsi_mil.stain.base.StainFitError` (too little tissue, degenerate fit) or
    :class:`~wsi_mil.errors.StoreError` (unreadable chunk).
    """
    ids = sample_tile_ids(store.tissue_fraction, store.chunk_ranges(), n_tiles)
    pixels = sample_pixels(read_sample(store, ids), max_pixels)
    transform = normalizer.fit(pixels, where=f"slide '{store.slide_id}' ({store.path})")
    sample = {"tile_ids": ids.tolist(), "n_pixels": int(len(pixels)), "max_pixels": int(max_pixels),
              "seed": SEED, "n_tiles": int(len(ids))}
    return SlideStain(transform, sample)


def fit_store_path(path: str, normalizer: StainNormalizer) -> SlideStain:
    """:func:`fit_store` of the patch store at ``path``."""
    return fit_store(patches.open_patch_store(path), normalizer)


class FitAhead:
    """The stain fits of a run's slides, computed on ``threads`` background threads in order.

    ``store_paths``: one per slide, None for a slide that needs no fit (no tiles).
    :meth:`result` waits for slide ``i``'s fit and returns it, or raises its error.
    """

    def __init__(self, normalizer: StainNormalizer, store_paths: Sequence[str | None], threads: int = 2) -> None:
        wanted = [p for p in store_paths if p is not None]
        self._pool = ThreadPoolExecutor(max(1, min(threads, len(wanted))), thread_name_prefix="wsi_mil-stain-fit")
        self._futures: list[Future[SlideStain] | None] = [
            None if p is None else self._pool.submit(fit_store_path, p, normalizer) for p in store_paths]

    def result(self, i: int) -> SlideStain:
        fut = self._futures[i]
        if fut is None:
            raise ValueError(f"slide {i} has no stain fit (it has no tiles)")
        return fut.result()

    def close(self) -> None:
        """Drop the fits not started yet and wait for the running ones."""
        for fut in self._futures:
            if fut is not None:
                fut.cancel()
        self._pool.shutdown(wait=True)
