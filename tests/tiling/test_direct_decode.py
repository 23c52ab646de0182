"""Direct JPEG tile decoding: same pixels and coordinates as OpenSlide, fallbacks named, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.errors import ConfigError, StoreError
from wsi_mil.slide import open_slide
from wsi_mil.stores.codecs import encode_tile_chunk
from wsi_mil.stores.patches import PatchStore, PatchStoreWriter, open_patch_store
from wsi_mil.synth import make_slide
from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.direct import DirectJpegLevel, find_jpeg_layout, open_direct_level
from wsi_mil.tiling.grid import make_tile_grid
from wsi_mil.tiling.readers import DecodeOptions, DirectTileReader, OpenSlideTileReader, open_tile_reader
from wsi_mil.tiling.stage import plan_reads


@pytest.fixture(scope="module")
def synth_40x(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generic tiled TIFF (YCbCr 4:2:0 JPEG, 256 px tiles, 2x pyramid) at 0.25 mpp."""
    path = tmp_path_factory.mktemp("direct") / "s40.tiff"
    make_slide(path, 1800, 1500, mpp=0.25, seed=3, positive=True, tile_size=256)
    return path


@pytest.mark.parametrize("which", ["cmu", "synth"])
def test_direct_regions_equal_openslide_bit_for_bit(which: str, cmu_slide: Path, synth_40x: Path,
                                                    random_regions: Callable[..., list[tuple[int, int, int, int]]]) -> None:
    path = cmu_slide if which == "cmu" else synth_40x
    with open_slide(path) as slide:
        checked = 0
        for level in range(slide.level_count):
            direct, why = open_direct_level(slide, level)
            ds = slide.level_downsamples[level]
            if abs(ds - round(ds)) > 1e-9:
                assert direct is None and "not an integer" in why
                continue
            assert direct is not None, why
            w, h = slide.level_dimensions[level]
            with direct:
                for x, y, rw, rh in random_regions(w, h, 12, level):
                    ours = direct.read(x, y, rw, rh)
                    theirs = slide.read_region((x * int(ds), y * int(ds)), level, (rw, rh))
                    assert np.array_equal(ours, theirs), (level, x, y, rw, rh)
            checked += 1
        assert checked >= (1 if which == "cmu" else 2)
    lay, _ = find_jpeg_layout(open_slide(path), 0)
    assert lay is not None and lay.colorspace == ("RGB" if which == "cmu" else "YCbCr")
    assert (lay.tables is not None) == (which == "cmu")  # SVS: shared JPEGTables; tifffile: full streams


def test_other_formats_fall_back_with_a_reason(shared_slides: Path, synth_40x: Path) -> None:
    with open_slide(shared_slides / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.25) as s:  # JPEG 2000 stays on OpenSlide
        assert "not JPEG" in find_jpeg_layout(s, 0)[1]
        assert "not an integer" in find_jpeg_layout(s, 1)[1]
    with open_slide(shared_slides / "boxes.tiff", mpp=1.0) as s:  # Deflate
        assert "not JPEG" in find_jpeg_layout(s, 0)[1]
    with open_slide(shared_slides / "dicom_openslide_boxes") as s:  # DICOM JPEG frames: decoded directly
        plan = plan_reads(s, s.mpp, 8)
        reader = open_tile_reader(s, plan, 8, np.zeros((1, 2), np.int64), DecodeOptions())
        assert isinstance(reader, DirectTileReader), reader.fallback_reason
        direct, why = open_direct_level(s, 0)
        assert direct is not None, why
        with direct:
            assert np.array_equal(direct.read(-3, -2, 20, 20), s.read_region((-3, -2), 0, (20, 20)))
        reader.close()
    with open_slide(shared_slides / "edge_cases" / "unreadable.svs") as s:  # corrupt JPEG: the probe refuses it
        direct, why = open_direct_level(s, 0)
        assert direct is None and "cannot decode" in why
    with open_slide(synth_40x) as s:  # a level read unresampled at corners between its pixels
        plan = plan_reads(s, 0.5, 224)
        assert plan.level == 1 and not plan.resample
        odd = open_tile_reader(s, plan, 224, np.array([[448, 449]], np.int64), DecodeOptions())
        even = open_tile_reader(s, plan, 224, np.array([[448, 448]], np.int64), DecodeOptions())
        assert isinstance(odd, OpenSlideTileReader) and "between the pixels" in odd.fallback_reason
        assert isinstance(even, DirectTileReader)
        asked = open_tile_reader(s, plan, 224, np.array([[448, 448]], np.int64), DecodeOptions(decoder="openslide"))
        assert isinstance(asked, OpenSlideTileReader)
        even.close()


def _shards(store_path: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((store_path / "tiles" / "c").rglob("*")) if p.is_file()]


@pytest.mark.parametrize("target_mpp", [0.499, 0.7])  # native (level read as is) and resampled at level 0
def test_stage_store_is_byte_identical_to_the_openslide_path(cmu_slide: Path, tmp_path: Path, target_mpp: float,
                                                             tile_with: Callable[..., PatchStore]) -> None:
    cfg = TilingConfig(target_mpp=target_mpp, tiles_per_chunk=8, chunks_per_shard=2)
    ref = tile_with(cmu_slide, tmp_path / "a", cfg, decoder="openslide", threads="1")
    new = tile_with(cmu_slide, tmp_path / "b", cfg, threads="3")
    assert ref.attrs["tile_decoder"] == "openslide"
    assert new.attrs["tile_decoder"].startswith("direct-jpeg (simplejpeg")
    assert new.attrs["tile_decode_scale"] == 1 and new.attrs["tile_threads"] == 3
    assert new.n_tiles == ref.n_tiles > 16 and np.array_equal(new.coords, ref.coords)
    assert _shards(new.path) == _shards(ref.path)  # same tiles, same encoder, same bytes
    assert np.array_equal(new.read_tiles(), ref.read_tiles())


def test_each_source_tile_is_decoded_once_and_threads_agree(synth_40x: Path) -> None:
    with open_slide(synth_40x) as s:
        plan = plan_reads(s, 0.25, 224)
        layout, why = find_jpeg_layout(s, 0)
        assert layout is not None, why
        direct = DirectJpegLevel(layout)  # unverified, so nothing decoded yet
        reader = DirectTileReader(direct, plan, 224)
        xs, ys = np.meshgrid(np.arange(0, 1800 - 224, 224), np.arange(0, 1500 - 224, 224))
        coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
        before = direct.tiles_decoded
        assert before == 0
        serial = np.empty((len(coords), 224, 224, 3), np.uint8)
        reader.read_tiles(coords, serial)
        lay = direct.layout
        touched = {(c, r) for x, y in coords for c in range(x // 256, (x + 223) // 256 + 1)
                   for r in range(y // 256, (y + 223) // 256 + 1)}
        assert direct.tiles_decoded - before == len(touched)
        parallel = np.empty_like(serial)
        fresh, _ = open_direct_level(s, 0)
        assert fresh is not None
        r2 = DirectTileReader(fresh, plan, 224)
        bounds = np.linspace(0, len(coords), 5).astype(int)
        parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]  # views: threads fill `parallel`
        threads = [threading.Thread(target=r2.read_tiles, args=(coords[p], parallel[p])) for p in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert np.array_equal(parallel, serial)
        assert fresh.tiles_decoded <= len(touched) + 4 and lay.tiles_across == 8
        reader.close()
        r2.close()


def test_decode_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("DECODER", "THREADS", "REDUCED", "DEVICE"):
        monkeypatch.delenv(f"WSI_MIL_TILE_{k}", raising=False)
    assert DecodeOptions.from_env() == DecodeOptions()
    assert 1 <= DecodeOptions().thread_count() <= 8
    monkeypatch.setenv("WSI_MIL_TILE_THREADS", "3")
    monkeypatch.setenv("WSI_MIL_TILE_REDUCED", "0")
    monkeypatch.setenv("WSI_MIL_TILE_DEVICE", "cuda")
    assert DecodeOptions.from_env() == DecodeOptions("auto", False, 3, "cuda")
    for key, bad in (("THREADS", "many"), ("THREADS", "-1"), ("DECODER", "pil"), ("DEVICE", "tpu"), ("REDUCED", "2")):
        monkeypatch.setenv(f"WSI_MIL_TILE_{key}", bad)
        with pytest.raises(ConfigError, match=f"WSI_MIL_TILE_{key}"):
            DecodeOptions.from_env()
        monkeypatch.delenv(f"WSI_MIL_TILE_{key}")


def test_writer_takes_encoded_chunks_only_whole_until_the_last(tmp_path: Path) -> None:
    tiles = np.random.default_rng(0).integers(0, 255, (10, 16, 16, 3), dtype=np.uint8)
    attrs = {"slide_id": "s", "mpp": 0.5, "target_mpp": 0.5, "tile_size_level0": 16.0}
    extra = (np.zeros((10, 2), np.int64), np.ones(10, np.float32), np.ones((2, 2), np.uint8), 1.0)
    with PatchStoreWriter(tmp_path / "a.zarr", 10, 16, attrs, tiles_per_chunk=4, chunks_per_shard=2) as w:
        w.append(tiles)
        w.close(*extra)
    with PatchStoreWriter(tmp_path / "b.zarr", 10, 16, attrs, tiles_per_chunk=4, chunks_per_shard=2) as w:
        pad = np.full((4, 16, 16, 3), 255, np.uint8)
        with pytest.raises(StoreError, match="only the last may be short"):
            w.append_encoded(encode_tile_chunk(pad, "jpeg"), 3)
        for a in (0, 4, 8):
            part = pad.copy()
            part[: len(tiles[a:a + 4])] = tiles[a:a + 4]
            w.append_encoded(encode_tile_chunk(part, "jpeg"), len(tiles[a:a + 4]))
        w.close(*extra)
    a, b = open_patch_store(tmp_path / "a.zarr"), open_patch_store(tmp_path / "b.zarr")
    assert b.n_tiles == 10 and _shards(a.path) == _shards(b.path)
    assert np.array_equal(a.read_tiles(), b.read_tiles())


def test_decoded_tile_cache_is_bounded(synth_40x: Path) -> None:
    with open_slide(synth_40x) as s:
        layout, _ = find_jpeg_layout(s, 0)
        assert layout is not None
        one_tile = 256 * 256 * 3
        with DirectJpegLevel(layout, cache_bytes=2 * one_tile) as level:
            first = level.read(0, 0, 256, 256).copy()
            level.read(256, 0, 256, 256)
            assert level.tiles_decoded == 2
            level.read(0, 0, 256, 256)  # still cached
            assert level.tiles_decoded == 2
            level.read(512, 0, 256, 256)  # evicts the least recently used tile, (1, 0)
            level.read(0, 0, 256, 256)
            assert level.tiles_decoded == 3
            level.read(256, 0, 256, 256)  # was evicted: decoded again
            assert level.tiles_decoded == 4
            assert np.array_equal(level.read(0, 0, 256, 256), first)


def _band_coords(width: int, height: int, band: int, step: int = 224) -> np.ndarray:
    """Every 224 px tile of a width x height level-0 area, in the stage's order (vertical bands of
    ``band`` tiles, row-major inside a band), as :func:`make_tile_grid` orders them."""
    grid = make_tile_grid((width, height), 0.25, 0.25, step, step, np.ones((1, 1), np.uint8), float(max(width, height)),
                          0.0, band_tiles=band)
    return grid.coords


@pytest.mark.parametrize("planned", [True, False])
def test_planned_cache_decodes_each_source_tile_once_across_bands(synth_40x: Path, planned: bool) -> None:
    """Bands of 2 tiles (448 px) cut the slide's 256 px tiles: the column at a band edge is needed
    again by the next band. With the reads planned, a cache of 12 tiles keeps it (6 rows) and drops
    each tile after its last read; a plain LRU of the same size decodes the edge columns twice."""
    with open_slide(synth_40x) as s:
        plan = plan_reads(s, 0.25, 224)
        layout, _ = find_jpeg_layout(s, 0)
        assert layout is not None and layout.tiles_down == 6 and not plan.resample
        coords = _band_coords(1800, 1500, band=2)
        touched = {(c, r) for x, y in coords for c in range(x // 256, (x + 223) // 256 + 1)
                   for r in range(y // 256, (y + 223) // 256 + 1)}
        level = DirectJpegLevel(layout, cache_bytes=12 * 256 * 256 * 3)
        reader = DirectTileReader(level, plan, 224)
        if planned:
            reader.expect(coords)
        out = np.empty((len(coords), 224, 224, 3), np.uint8)
        for a in range(0, len(coords), 5):  # chunks of 5 tiles, as the stage's chunks
            reader.read_tiles(coords[a:a + 5], out[a:a + 5])
        with open_slide(synth_40x) as ref_slide:
            ref = OpenSlideTileReader(ref_slide, plan, 224)
            for i in range(0, len(coords), 7):
                assert np.array_equal(out[i], ref.read_tile(*(int(v) for v in coords[i])))
        if planned:
            assert level.tiles_decoded == len(touched)
            assert level.cached_bytes == 0  # every tile dropped after its last read
        else:
            assert level.tiles_decoded > len(touched)
        reader.close()


def test_planned_cache_is_bounded_and_reads_outside_the_plan_stay_correct(synth_40x: Path) -> None:
    with open_slide(synth_40x) as s:
        plan = plan_reads(s, 0.25, 224)
        layout, _ = find_jpeg_layout(s, 0)
        assert layout is not None
        coords = _band_coords(1800, 1500, band=8)
        one_tile = 256 * 256 * 3
        with DirectJpegLevel(layout, cache_bytes=3 * one_tile) as level:
            reader = DirectTileReader(level, plan, 224)
            reader.expect(coords[:10])
            seen = 0
            for x, y in coords:  # the plan covers the first 10 tiles only
                tile = reader.read_tile(int(x), int(y))
                assert np.array_equal(tile, s.read_region((int(x), int(y)), 0, (224, 224)))
                seen = max(seen, level.cached_bytes)
            assert seen <= 3 * one_tile


def test_pooled_buffers_are_reused_only_once_unpinned() -> None:
    """A dropped tile's buffer is decoded into again, but never while a read still copies from it."""
    from wsi_mil.tiling.direct import _TileCache

    cache = _TileCache(1 << 30, tiles_across=4)
    cache.expect(1, np.array([2, 1, 1, 1], np.int32), np.array([1, 2, 3, 4], np.int64))  # tile 0 read twice
    given: list[np.ndarray | None] = []

    def decode(key: tuple[int, int, int], buf: np.ndarray | None) -> np.ndarray:
        given.append(buf)
        out = np.empty((8, 8, 3), np.uint8) if buf is None else buf
        out[...] = key[0]
        return out

    a, first = cache.get((0, 0, 1), decode)
    a2, second = cache.get((0, 0, 1), decode)  # its last read: dropped from the cache, pinned twice
    assert a is not None and a2 is a and len(given) == 1 and cache.nbytes == 0
    cache.release(first)
    b, entry_b = cache.get((1, 0, 1), decode)
    assert given[1] is None and b is not a and int(a.max()) == 0  # a is still being copied from
    cache.release(second)
    c, entry_c = cache.get((2, 0, 1), decode)
    assert c is not None and given[2] is a and c is a and int(c.min()) == 2  # a's buffer, free now, decoded into
    assert cache.reused == 1 and cache.nbytes == 0
    cache.release(entry_b)
    cache.release(entry_c)


def _read_in_turns(reader: DirectTileReader, coords: np.ndarray, out: np.ndarray, starts: list[int],
                   lock: threading.Lock) -> None:
    """Read chunks of 3 tiles, taking the next start from ``starts`` until none is left."""
    while True:
        with lock:
            if not starts:
                return
            a = starts.pop(0)
        reader.read_tiles(coords[a:a + 3], out[a:a + 3])


def test_threads_agree_with_planned_reads_and_pooled_buffers(synth_40x: Path) -> None:
    """Planned reads from 4 threads with a small cache (tiles dropped and their buffers reused
    while other threads copy) give the serial pixels, which are OpenSlide's."""
    with open_slide(synth_40x) as s:
        plan = plan_reads(s, 0.25, 224)
        layout, _ = find_jpeg_layout(s, 0)
        assert layout is not None
        coords = _band_coords(1800, 1500, band=2)
        ref = OpenSlideTileReader(s, plan, 224)
        serial = np.stack([ref.read_tile(int(x), int(y)) for x, y in coords])
        for _ in range(3):
            level = DirectJpegLevel(layout, cache_bytes=6 * 256 * 256 * 3)
            reader = DirectTileReader(level, plan, 224)
            reader.expect(coords)
            got = np.zeros_like(serial)
            starts = list(range(0, len(coords), 3))  # chunks of 3 tiles, 4 threads taking them in turn
            lock = threading.Lock()
            threads = [threading.Thread(target=_read_in_turns, args=(reader, coords, got, starts, lock))
                       for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert np.array_equal(got, serial)
            assert level._cache.reused > 0  # noqa: SLF001 (buffers were recycled)
            reader.close()


def test_probe_refuses_a_level_that_disagrees_with_the_reader(synth_40x: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe compares the most detailed tile and the bottom-right corner with the reader: a
    reader that differs in either (colour, or edge clipping) makes the level fall back."""
    from wsi_mil.slide import Slide

    read = Slide.read_region
    with open_slide(synth_40x) as s:
        layout, _ = find_jpeg_layout(s, 0)
        assert layout is not None
        for where in ("detail", "corner"):
            def shifted(self: Slide, loc: tuple[int, int], level: int, size: tuple[int, int],
                        _where: str = where) -> np.ndarray:
                img = read(self, loc, level, size).copy()
                corner = loc[0] + size[0] >= layout.width and loc[1] + size[1] >= layout.height
                if (corner if _where == "corner" else not corner):
                    img[..., 0] = img[..., 0] // 2  # a reader with other colours there
                return img

            monkeypatch.setattr(Slide, "read_region", shifted)
            direct, why = open_direct_level(s, 0)
            assert direct is None and "differ from the reader" in why, (where, why)
        monkeypatch.setattr(Slide, "read_region", read)
        direct, why = open_direct_level(s, 0)
        assert direct is not None, why
        direct.close()
