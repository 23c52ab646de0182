"""Tile order for SimCLR: chunk dealing across processes, shuffle groups, resumable batches."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_mil.ssl.data import (
    ArrayTileSource,
    BatchReader,
    deal_chunks,
    list_chunks,
    rank_groups,
    steps_per_epoch,
)


def id_tiles(n: int, offset: int) -> np.ndarray:
    """Tiles whose pixels encode a global id: (id // 256, id % 256, 7)."""
    ids = np.arange(offset, offset + n)
    t = np.zeros((n, 4, 4, 3), dtype=np.uint8)
    t[..., 0] = (ids // 256)[:, None, None]
    t[..., 1] = (ids % 256)[:, None, None]
    t[..., 2] = 7
    return t


def decode(batch: np.ndarray) -> list[int]:
    return [int(b[0, 0, 0]) * 256 + int(b[0, 0, 1]) for b in batch]


@pytest.fixture()
def sources() -> list[ArrayTileSource]:
    sizes = [50, 17, 130, 64]
    offs = np.cumsum([0] + sizes)
    return [ArrayTileSource(id_tiles(n, int(o)), chunk=16) for n, o in zip(sizes, offs)]


def test_chunks_are_dealt_once_and_balanced(sources: list[ArrayTileSource]) -> None:
    chunks = list_chunks(sources)
    assert sum(e - s for _, s, e in chunks) == 261
    for world in (1, 2, 3):
        shares = deal_chunks(chunks, seed=0, epoch=1, world=world)
        flat = sorted(c for share in shares for c in share)
        assert flat == sorted(chunks)
        loads = [sum(e - s for _, s, e in share) for share in shares]
        assert max(loads) - min(loads) <= 16
    assert deal_chunks(chunks, 0, 1, 2) == deal_chunks(chunks, 0, 1, 2)
    assert deal_chunks(chunks, 0, 1, 2) != deal_chunks(chunks, 0, 2, 2)


def test_one_epoch_reads_each_tile_at_most_once_in_shuffled_order(sources: list[ArrayTileSource]) -> None:
    chunks = list_chunks(sources)
    groups = rank_groups(chunks, seed=3, epoch=0, rank=0, world=1, shuffle_chunks=4)
    for g in groups:
        assert sorted(g.perm.tolist()) == list(range(g.n_tiles))
    spe = steps_per_epoch(chunks, 1, batch_size=20)
    assert spe == 261 // 20
    batches = list(BatchReader(sources, groups, 20, threads=2).iter_batches(0, spe))
    assert len(batches) == spe and all(b.shape == (20, 4, 4, 3) and b.dtype == np.uint8 for b in batches)
    ids = [i for b in batches for i in decode(b)]
    assert len(set(ids)) == len(ids) == spe * 20
    assert ids != sorted(ids)
    # a batch mixes several slides
    bounds = np.cumsum([0, 50, 17, 130, 64])
    assert max(len(set(np.searchsorted(bounds, decode(b), side="right"))) for b in batches) >= 2


def test_resuming_mid_epoch_gives_the_same_batches(sources: list[ArrayTileSource]) -> None:
    chunks = list_chunks(sources)
    groups = rank_groups(chunks, seed=1, epoch=2, rank=0, world=1, shuffle_chunks=3)
    full = list(BatchReader(sources, groups, 24, threads=3).iter_batches(0, 10))
    tail = list(BatchReader(sources, groups, 24, threads=1).iter_batches(6, 10))
    assert len(tail) == 4
    for a, b in zip(full[6:], tail):
        assert np.array_equal(a, b)


def test_processes_get_disjoint_tiles(sources: list[ArrayTileSource]) -> None:
    chunks = list_chunks(sources)
    spe = steps_per_epoch(chunks, 2, batch_size=16)
    assert spe >= 1
    seen = []
    for rank in range(2):
        groups = rank_groups(chunks, 0, 0, rank, 2, shuffle_chunks=2)
        seen.append({i for b in BatchReader(sources, groups, 16).iter_batches(0, spe) for i in decode(b)})
    assert not seen[0] & seen[1]


def test_max_tiles_caps_steps(sources: list[ArrayTileSource]) -> None:
    chunks = list_chunks(sources)
    assert steps_per_epoch(chunks, 1, batch_size=10, max_tiles=35) == 3
    assert steps_per_epoch(chunks, 1, batch_size=300) == 0


def test_steps_fit_every_process_in_every_epoch(sources: list[ArrayTileSource]) -> None:
    chunks = list_chunks(sources)
    for world in (2, 3, 5):
        spe = steps_per_epoch(chunks, world, batch_size=7)
        assert spe >= 1
        for epoch in range(20):
            for share in deal_chunks(chunks, 4, epoch, world):
                assert sum(e - s for _, s, e in share) >= spe * 7


def test_bad_source_output_is_reported() -> None:
    class Broken(ArrayTileSource):
        def read_tiles(self, start: int, stop: int) -> np.ndarray:
            return np.zeros((1, 4, 4, 3), dtype=np.uint8)

    src = [Broken(id_tiles(32, 0), chunk=16)]
    groups = rank_groups(list_chunks(src), 0, 0, 0, 1, 4)
    with pytest.raises(ValueError, match="returned"):
        list(BatchReader(src, groups, 8).iter_batches(0, 2))
