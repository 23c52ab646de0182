"""Patch stores: round trip, codecs, validation of incomplete and truncated stores."""

from __future__ import annotations

import json
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from wsi_mil.errors import StoreError
from wsi_mil.stores.codecs import decode_jpeg_chunk, encode_jpeg_chunk, read_shard_index, shard_bytes
from wsi_mil.stores.patches import (
    PatchStoreWriter,
    is_complete_patch_store,
    list_patch_stores,
    open_patch_store,
    write_patch_store,
)

ATTRS = dict(slide_id="s", target_mpp=0.5, mpp=0.5, tile_size_level0=32.0, tile_size=32)


def _tiles(n: int, s: int = 32) -> np.ndarray:
    """Smooth, distinct tiles (JPEG-friendly): tile i is a gradient offset by 3*i."""
    yy, xx = np.mgrid[:s, :s]
    base = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1)
    return np.stack([(base + 3 * i) % 256 for i in range(n)]).astype(np.uint8)


@pytest.mark.parametrize("codec", ["jpeg", "zstd"])
def test_round_trip(tmp_path: Path, codec: str) -> None:
    tiles = _tiles(150)
    coords = np.stack([np.arange(150) * 32, np.zeros(150)], 1)
    path = write_patch_store(tmp_path / "s.zarr", tiles, coords, np.linspace(0, 1, 150), np.eye(4), 8.0,
                             ATTRS, codec=codec, tiles_per_chunk=16, chunks_per_shard=4)
    store = open_patch_store(path)
    assert store.n_tiles == 150 and store.tile_size == 32 and store.chunk_size == 16
    assert store.chunk_ranges()[0] == (0, 16) and store.chunk_ranges()[-1] == (144, 150)
    np.testing.assert_array_equal(store.coords, coords)
    assert store.coords.dtype == np.int64
    back = store.read_tiles(10, 40)
    err = np.abs(back.astype(int) - tiles[10:40].astype(int))
    assert err.max() == 0 if codec == "zstd" else err.mean() < 8.0  # saturated gradients, 4:2:0
    # our direct shard reader and zarr's reader agree byte for byte
    np.testing.assert_array_equal(store.read_tiles(16, 32), np.asarray(store._tiles[16:32]))
    np.testing.assert_array_equal(store.read_tiles(144, 150), np.asarray(store._tiles[144:150]))
    picked = store.read_tile_indices(np.array([149, 3]))
    assert np.abs(picked.astype(int) - tiles[[149, 3]].astype(int)).mean() < 8.0
    mask, ds = store.tissue_mask()
    assert ds == 8.0 and mask.shape == (4, 4)
    files = [p for p in path.rglob("*") if p.is_file()]
    assert len(files) < 25, "sharding keeps a store to a handful of files"


@pytest.mark.parametrize("subsampling", ["444", "420"])
def test_jpeg_tiles_decode_independently(tmp_path: Path, subsampling: str) -> None:
    """A tile's pixels do not depend on its neighbours in the chunk (S multiple of 16); with
    4:2:0 only the colour of its first and last pixel rows may (chroma upsampling)."""
    rng = np.random.default_rng(1)
    tiles = _tiles(4)
    tiles[1] = rng.integers(0, 255, tiles[1].shape, dtype=np.uint8)
    kw = dict(jpeg_subsampling=subsampling)
    a = open_patch_store(write_patch_store(tmp_path / "a.zarr", tiles, np.zeros((4, 2)), np.ones(4),
                                           np.ones((1, 1)), 1.0, ATTRS, **kw)).read_tiles()
    tiles[1] = 0
    b = open_patch_store(write_patch_store(tmp_path / "b.zarr", tiles, np.zeros((4, 2)), np.ones(4),
                                           np.ones((1, 1)), 1.0, ATTRS, **kw)).read_tiles()
    if subsampling == "444":
        np.testing.assert_array_equal(a[[0, 2, 3]], b[[0, 2, 3]])
    else:
        np.testing.assert_array_equal(a[[0, 2, 3], 1:-1], b[[0, 2, 3], 1:-1])
        np.testing.assert_array_equal(a[3], b[3])


def test_empty_store_is_valid(tmp_path: Path) -> None:
    path = write_patch_store(tmp_path / "e.zarr", np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0, 2)),
                             np.zeros(0), np.zeros((3, 3)), 8.0, ATTRS)
    store = open_patch_store(path)
    assert store.n_tiles == 0 and store.chunk_ranges() == [] and store.read_tiles().shape == (0, 32, 32, 3)


def test_streaming_writer_and_abort(tmp_path: Path) -> None:
    tiles = _tiles(40)
    with PatchStoreWriter(tmp_path / "w.zarr", 40, 32, ATTRS, tiles_per_chunk=8, chunks_per_shard=2) as w:
        for i in range(0, 40, 7):
            w.append(tiles[i:i + 7])
        w.close(np.zeros((40, 2)), np.ones(40), np.ones((2, 2)), 4.0)
    assert open_patch_store(tmp_path / "w.zarr").n_tiles == 40
    with pytest.raises(RuntimeError):
        with PatchStoreWriter(tmp_path / "x.zarr", 40, 32, ATTRS) as w:
            w.append(tiles[:10])
            raise RuntimeError("killed")
    assert not (tmp_path / "x.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary removed"


def test_wrong_tiles_are_refused(tmp_path: Path) -> None:
    w = PatchStoreWriter(tmp_path / "w.zarr", 2, 32, ATTRS)
    with pytest.raises(StoreError, match=r"w.zarr: tiles must be uint8"):
        w.append(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(StoreError, match="more tiles"):
        w.append(np.zeros((3, 32, 32, 3), np.uint8))
    w.abort()


def test_truncated_and_incomplete_stores_are_named(tmp_path: Path) -> None:
    path = write_patch_store(tmp_path / "t.zarr", _tiles(20), np.zeros((20, 2)), np.ones(20), np.ones((2, 2)),
                             1.0, ATTRS)
    shard = next(p for p in (path / "tiles").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"t.zarr: truncated patch store"):
        open_patch_store(path)
    assert not is_complete_patch_store(path)
    shard.unlink()
    with pytest.raises(StoreError, match=r"t.zarr: truncated patch store: .* is missing"):
        open_patch_store(path)
    with pytest.raises(StoreError, match="patch store not found"):
        open_patch_store(tmp_path / "none.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(StoreError, match=r"junk.zarr: not a zarr v3 patch store"):
        open_patch_store(tmp_path / "junk.zarr")


def test_missing_or_damaged_array_metadata_is_named(tmp_path: Path) -> None:
    path = write_patch_store(tmp_path / "m.zarr", _tiles(4), np.zeros((4, 2)), np.ones(4), np.ones((2, 2)), 1.0, ATTRS)
    meta = path / "coords" / "zarr.json"
    text = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(StoreError, match=r"m.zarr: unreadable metadata of array 'coords'"):
        open_patch_store(path)
    doc = json.loads(text)
    doc["shape"] = [5, 2]
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=r"m.zarr: patch store arrays disagree with n_tiles=4"):
        open_patch_store(path)
    meta.unlink()
    with pytest.raises(StoreError, match=r"m.zarr: patch store has no array 'coords'"):
        open_patch_store(path)


def test_list_patch_stores(tmp_path: Path) -> None:
    (tmp_path / "patches" / "b.zarr").mkdir(parents=True)
    (tmp_path / "patches" / "a.zarr").mkdir()
    (tmp_path / "patches" / ".a.zarr.tmp-1-x").mkdir()
    assert [p.name for p in list_patch_stores(tmp_path)] == ["a.zarr", "b.zarr"]


def _shard_chunks(shard: Path, chunks_per_shard: int) -> list[bytes]:
    data = shard.read_bytes()
    with open(shard, "rb") as f:
        index = read_shard_index(f, chunks_per_shard)
    return [data[int(o):int(o) + int(n)] for o, n in index if int(n) != np.iinfo(np.uint64).max]


def test_streamed_shards_are_the_joined_layout(tmp_path: Path) -> None:
    """Chunks written to the shard file as they come + the index at the end = :func:`shard_bytes`."""
    path = write_patch_store(tmp_path / "s.zarr", _tiles(45), np.zeros((45, 2)), np.ones(45), np.ones((2, 2)), 1.0,
                             ATTRS, tiles_per_chunk=8, chunks_per_shard=4)
    shards = sorted(p for p in (path / "tiles" / "c").rglob("*") if p.is_file())
    assert len(shards) == 2
    for shard in shards:
        chunks = _shard_chunks(shard, 4)
        assert shard.read_bytes() == shard_bytes(chunks, 4)
    assert len(_shard_chunks(shards[1], 4)) == 2  # 45 tiles: 6 chunks, the last shard half full
    store = open_patch_store(path)  # each chunk's bytes as stored, shard by shard
    assert [store.chunk_bytes(j) for j in range(6)] == _shard_chunks(shards[0], 4) + _shard_chunks(shards[1], 4)


def test_chunk_encoder_gives_plain_imagecodecs_bytes_through_its_reused_buffer() -> None:
    """The encoder's per-thread output buffer changes no byte: smooth chunks, noise at quality 100
    (larger than the raw pixels, so larger than the buffer), a smaller image after a larger one,
    and chunks encoded from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    smooth = _tiles(16, 64).reshape(16 * 64, 64, 3)
    noise = rng.integers(0, 256, (256, 64, 3), dtype=np.uint8)
    cases = [(smooth, 90, "420"), (noise, 100, "444"), (smooth[:128], 90, "444"), (noise, 90, "420")]
    for image, quality, sub in cases:
        plain = bytes(imagecodecs.jpeg8_encode(image, level=quality, subsampling=sub))
        assert encode_jpeg_chunk(image, quality, sub) == plain
    assert len(bytes(imagecodecs.jpeg8_encode(noise, level=100, subsampling="444"))) > noise.nbytes
    images = [np.roll(smooth, 7 * i, axis=1) for i in range(24)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda im: encode_jpeg_chunk(im, 90, "420"), images))
    assert got == [bytes(imagecodecs.jpeg8_encode(im, level=90, subsampling="420")) for im in images]


@pytest.mark.parametrize("subsampling", ["420", "444"])
def test_chunk_decoder_gives_imagecodecs_pixels(tmp_path: Path, subsampling: str) -> None:
    """Chunks decode to exactly the pixels imagecodecs (the decoder used before) gives; a damaged
    chunk is an error naming the store."""
    rng = np.random.default_rng(3)
    tiles = np.clip(_tiles(32).astype(int) + rng.integers(-40, 40, (32, 32, 32, 3)), 0, 255).astype(np.uint8)
    path = write_patch_store(tmp_path / "s.zarr", tiles, np.zeros((32, 2)), np.ones(32), np.ones((2, 2)), 1.0,
                             ATTRS, tiles_per_chunk=16, chunks_per_shard=2, jpeg_subsampling=subsampling)
    shard = next(p for p in (path / "tiles" / "c").rglob("*") if p.is_file())
    chunks = _shard_chunks(shard, 2)
    for j, data in enumerate(chunks):
        ref = imagecodecs.jpeg8_decode(data).reshape(16, 32, 32, 3)
        assert np.array_equal(decode_jpeg_chunk(data, (16, 32, 32, 3)), ref)
        out = np.empty((16, 32, 32, 3), np.uint8)
        assert decode_jpeg_chunk(data, (16, 32, 32, 3), out) is out and np.array_equal(out, ref)
        assert np.array_equal(open_patch_store(path).read_tiles(16 * j, 16 * j + 16), ref)
    with pytest.raises(ValueError, match="expected"):
        decode_jpeg_chunk(chunks[0], (8, 32, 32, 3))
    raw = bytearray(shard.read_bytes())
    raw[len(chunks[0]) // 2: len(chunks[0]) // 2 + 64] = b"\xff\x00" * 32  # garbage inside chunk 0's scan
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"s.zarr: cannot decode tiles 0-16"):
        open_patch_store(path).read_tiles(0, 16)
