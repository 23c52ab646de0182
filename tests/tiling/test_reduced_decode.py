"""Reduced-size (DCT-scaled) decoding: when it is used, and its error against full decoding + resampling."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mil.slide import open_slide
from wsi_mil.synth import make_slide
from wsi_mil.tiling.direct import decode_scaled, open_direct_level, verify_reduced
from wsi_mil.tiling.readers import DecodeOptions, DirectTileReader, open_tile_reader
from wsi_mil.tiling.regions import (
    ReadPlan,
    Window,
    exact_offset,
    read_windows,
    reduced_scale,
    resample_window,
    tile_window,
    tile_windows,
)
from wsi_mil.tiling.stage import plan_reads

#: stated error bounds (docs/tile.md): mean |reduced - full decode + box resample| per channel, grey levels
BOUND_VS_FULL = {"synth-40x-420": 2.0, "cmu-20x-444": 4.5}
#: and the reduced tiles are no further from the exact area average than the full path is, plus this
BOUND_VS_AREA_EXCESS = 1.0


@pytest.fixture(scope="module")
def synth_40x4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.25 mpp generic tiled TIFF (YCbCr 4:2:0) with a 4x pyramid, like Aperio's: no 0.5 mpp level."""
    path = tmp_path_factory.mktemp("reduced") / "a40.tiff"
    make_slide(path, 2048, 1536, mpp=0.25, seed=5, positive=True, tile_size=256, level_downsample=4)
    return path


def test_reduced_scale_choice() -> None:
    assert reduced_scale(ReadPlan(0, 1.0, 224.0, False), 224) == 1  # no resampling: nothing to reduce
    assert reduced_scale(ReadPlan(0, 1.0, 448.0, True), 224) == 2
    assert reduced_scale(ReadPlan(0, 1.0, 447.6, True), 224) == 2  # within half a pixel
    assert reduced_scale(ReadPlan(0, 1.0, 446.0, True), 224) == 1  # would enlarge by > half a pixel
    assert reduced_scale(ReadPlan(0, 1.0, 1800.0, True), 224) == 8
    assert reduced_scale(ReadPlan(0, 1.0, 900.0, True), 224) == 4
    assert reduced_scale(ReadPlan(0, 1.0, 1800.0, True), 224, allowed=(2,)) == 2


def _area_average(img: np.ndarray, box: tuple[float, float, float, float], n: int) -> np.ndarray:
    """Exact area average of ``img`` over ``box`` onto an n x n grid (float, the ideal shrink)."""
    x0, y0, x1, y1 = box

    def weights(length: int, origin: float, extent: float) -> np.ndarray:
        step = extent / n
        edges = origin + step * np.arange(n + 1)
        k = np.arange(length)
        w = np.clip(np.minimum(edges[1:, None], k + 1) - np.maximum(edges[:-1, None], k), 0, None)
        return w / w.sum(1, keepdims=True)

    wy, wx = weights(img.shape[0], y0, y1 - y0), weights(img.shape[1], x0, x1 - x0)
    return np.stack([wy @ img[..., c].astype(float) @ wx.T for c in range(3)], axis=-1)


def _errors(path: Path, target_mpp: float, n: int, seed: int) -> tuple[int, float, float, float]:
    """(scale, mean |reduced - full|, mean |full - area|, mean |reduced - area|) over n random tiles."""
    with open_slide(path) as s:
        plan = plan_reads(s, target_mpp, 224)
        direct, why = open_direct_level(s, plan.level)
        assert direct is not None, why
        scale = reduced_scale(plan, 224)
        assert scale > 1 and verify_reduced(direct, scale) == ""
        full, red = DirectTileReader(direct, plan, 224, 1), DirectTileReader(direct, plan, 224, scale)
        rng = np.random.default_rng(seed)
        span = int(np.ceil(plan.region_size * plan.level_downsample)) + 2
        e_full, e_fa, e_ra = [], [], []
        for _ in range(n):
            x = int(rng.integers(0, s.dimensions[0] - span))
            y = int(rng.integers(0, s.dimensions[1] - span))
            a, b = full.read_tile(x, y).astype(float), red.read_tile(x, y).astype(float)
            win = tile_window(x, y, plan)
            ideal = _area_average(direct.read(win.x, win.y, win.width, win.height), win.box, 224)
            e_full.append(np.abs(a - b).mean())
            e_fa.append(np.abs(a - ideal).mean())
            e_ra.append(np.abs(b - ideal).mean())
        direct.close()
    return scale, float(np.mean(e_full)), float(np.mean(e_fa)), float(np.mean(e_ra))


@pytest.mark.parametrize("case", ["synth-40x-420", "cmu-20x-444"])
def test_reduced_decode_stays_within_the_stated_error(case: str, synth_40x4: Path, cmu_slide: Path) -> None:
    path, target = (synth_40x4, 0.5) if case == "synth-40x-420" else (cmu_slide, 1.0)
    scale, vs_full, full_area, red_area = _errors(path, target, 10, seed=1)
    assert scale == 2
    assert vs_full <= BOUND_VS_FULL[case], (vs_full, full_area, red_area)
    assert red_area <= full_area + BOUND_VS_AREA_EXCESS, (vs_full, full_area, red_area)


def test_stage_uses_reduced_decoding_only_when_asked(synth_40x4: Path) -> None:
    with open_slide(synth_40x4) as s:
        plan = plan_reads(s, 0.5, 224)
        assert plan.level == 0 and plan.resample and plan.region_size == 448
        coords = np.array([[448, 448]], np.int64)
        on = open_tile_reader(s, plan, 224, coords, DecodeOptions(reduced=True))
        off = open_tile_reader(s, plan, 224, coords, DecodeOptions(reduced=False))
        assert on.name == "direct-jpeg-1/2" and on.scale == 2
        assert off.name == "direct-jpeg" and off.scale == 1
        a, b = np.empty((1, 224, 224, 3), np.uint8), np.empty((1, 224, 224, 3), np.uint8)
        on.read_tiles(coords, a)
        off.read_tiles(coords, b)
        assert 0 < np.abs(a.astype(int) - b).mean() <= BOUND_VS_FULL["synth-40x-420"]
        on.close()
        off.close()


@pytest.mark.parametrize("case", ["synth-40x-420", "cmu-20x-444"])
def test_scaled_decoding_gives_pillow_drafts_pixels(case: str, synth_40x4: Path, cmu_slide: Path) -> None:
    """The TurboJPEG scaled decode gives the pixels Pillow's ``draft`` gave (the decoder used before),
    so stores cut with reduced-size decoding keep their bytes."""
    path = synth_40x4 if case == "synth-40x-420" else cmu_slide
    with open_slide(path) as s:
        direct, why = open_direct_level(s, 0)
        assert direct is not None, why
        lay = direct.layout
        rng = np.random.default_rng(2)
        for _ in range(4):
            c, r = int(rng.integers(0, lay.tiles_across)), int(rng.integers(0, lay.tiles_down))
            stream = direct.jpeg_stream(direct.tile_bytes(c, r))
            for scale in (2, 4, 8):
                w, h = lay.tile_w // scale, lay.tile_h // scale
                im = Image.open(io.BytesIO(stream))
                im.draft("RGB", (w, h))
                ref = np.asarray(im.convert("RGB"))
                assert ref.shape == (h, w, 3)
                assert np.array_equal(decode_scaled(stream, scale, w, h), ref), (c, r, scale)
        direct.close()


def test_vectorised_windows_match_tile_window() -> None:
    rng = np.random.default_rng(4)
    coords = rng.integers(0, 200_000, (500, 2)).astype(np.int64)
    for plan in (ReadPlan(0, 1.0, 448.0, True), ReadPlan(1, 4.000183, 111.87, True), ReadPlan(2, 16.0, 224.3, True),
                 ReadPlan(0, 1.0, 297.61, True)):
        for scale in (1, 2, 4):
            got = tile_windows(coords, plan, scale)
            want = [tile_window(int(x), int(y), plan, scale) for x, y in coords]
            assert got.tolist() == [[w.x, w.y, w.width, w.height] for w in want]


@pytest.mark.parametrize("box", [(0.0, 0.0, 224.0, 224.0), (1.0, 2.0, 225.0, 226.0), (0.5, 0.0, 224.5, 224.0),
                                 (1.0, 1.0, 224.0, 224.0)])
def test_exact_crop_is_what_pillow_gives(box: tuple[float, float, float, float]) -> None:
    """A whole-pixel box as wide as the tile is a crop: exactly Pillow's output (bicubic and box)."""
    region = np.random.default_rng(6).integers(0, 256, (227, 228, 3), dtype=np.uint8)
    win = Window(0, 0, 228, 227, box)
    at = exact_offset(win, 224)
    exact = box[2] - box[0] == 224 and box[0] == int(box[0]) and box[1] == int(box[1])
    assert (at is not None) == exact
    if at is not None:
        crop = region[at[1]:at[1] + 224, at[0]:at[0] + 224]  # what the reader reads in place of the window
        for filt in (Image.Resampling.BICUBIC, Image.Resampling.BOX):
            assert np.array_equal(crop, resample_window(region, win, 224, filt))


def test_read_windows_are_the_windows_the_reader_reads(synth_40x4: Path) -> None:
    """The plan (and the benchmark's limit) counts the source tiles the reader really reads: the
    tile itself when it is a whole-pixel crop at the DCT scale, else its resampling window."""
    with open_slide(synth_40x4) as s:
        for target, want_scale in ((0.5, 2), (0.3, 1)):  # 448 level px at 1/2 (crops), 268.8 px (resampled)
            plan = plan_reads(s, target, 224)
            direct, why = open_direct_level(s, plan.level)
            assert direct is not None, why
            scale = reduced_scale(plan, 224)
            assert scale == want_scale
            reader = DirectTileReader(direct, plan, 224, scale)
            coords = np.array([[0, 0], [448, 896], [451, 3], [1000, 302], [1344, 0]], np.int64)  # odd: between pixels at 1/2
            seen: list[tuple[int, int, int, int]] = []
            read = direct.read

            def record(x: int, y: int, w: int, h: int, sc: int = 1, out: np.ndarray | None = None,
                       _seen: list = seen, _read=read) -> np.ndarray:  # type: ignore[no-untyped-def, type-arg]
                _seen.append((x, y, w, h))
                return _read(x, y, w, h, sc, out)

            direct.read = record  # type: ignore[method-assign, assignment]
            for x, y in coords:
                reader.read_tile(int(x), int(y))
            assert read_windows(coords, plan, 224, scale).tolist() == [list(w) for w in seen]
            exact = [w[2] == 224 for w in seen]
            assert exact == ([True, True, False, True, True] if scale == 2 else [False] * 5)
            reader.close()
