"""Tissue detection and the exact-scale tile grid (pure functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_mil.slide import open_slide
from wsi_mil.tiling.config import TissueConfig
from wsi_mil.tiling.grid import make_tile_grid, tissue_fractions
from wsi_mil.tiling.tissue import detect_tissue, pen_mask


def _synthetic_thumbnail() -> np.ndarray:
    """White glass, a pink/purple tissue disc, a green and a blue pen stroke, a black blob."""
    rng = np.random.default_rng(0)
    img = np.full((200, 300, 3), 245, dtype=np.uint8)
    yy, xx = np.mgrid[:200, :300]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 < 60**2
    tissue = np.stack([200 + rng.integers(-20, 20, disc.shape), 120 + rng.integers(-20, 20, disc.shape),
                       180 + rng.integers(-20, 20, disc.shape)], -1).astype(np.uint8)
    img[disc] = tissue[disc]
    img[20:30, 180:290] = (40, 160, 60)  # green pen
    img[170:180, 180:290] = (30, 40, 200)  # blue pen
    img[90:110, 240:260] = (15, 15, 15)  # black ink
    return img


def test_detects_tissue_and_removes_pen_and_background() -> None:
    img = _synthetic_thumbnail()
    mask = detect_tissue(img, mpp=8.0, config=TissueConfig(min_tissue_area_um2=1000))
    yy, xx = np.mgrid[:200, :300]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 < 55**2
    assert mask[disc].mean() > 0.97
    assert not mask[:, 170:].any(), "pen marks and ink must not be tissue"
    assert not mask[:5, :5].any()


def test_pen_mask_spares_he_colours() -> None:
    he = np.array([[[200, 120, 180], [110, 60, 150], [70, 40, 110], [230, 170, 200], [70, 50, 130],
                    [45, 35, 120], [90, 60, 170]]], dtype=np.uint8)
    assert not pen_mask(he).any()
    ink = np.array([[[40, 160, 60], [30, 40, 200], [15, 15, 15]]], dtype=np.uint8)
    assert pen_mask(ink).all()


def test_blank_image_has_no_tissue() -> None:
    assert not detect_tissue(np.full((50, 50, 3), 250, np.uint8), mpp=8.0).any()


def test_real_slide_mask_covers_the_tissue(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        img, ds = s.read_at_mpp(8.0)
    mask = detect_tissue(img, ds * 0.499)
    gray = img.mean(axis=2)
    assert 0.2 < mask.mean() < 0.5
    assert gray[mask].mean() < gray[~mask].mean() - 30


def test_grid_is_exact_in_micrometres() -> None:
    mask = np.ones((100, 100), dtype=bool)
    grid = make_tile_grid((10000, 8000), mpp=0.25, target_mpp=0.5, tile_size=224, stride=224,
                          mask=mask, mask_downsample=100.0, min_tissue_fraction=0.5)
    assert grid.tile_size_level0 == pytest.approx(448.0)
    assert grid.grid_shape == (8000 // 448, 10000 // 448)
    assert (grid.coords[:, 0] + 448 <= 10000).all() and (grid.coords[:, 1] + 448 <= 8000).all()
    # non-integer level-0 tile size: positions are rounded, never drift
    g2 = make_tile_grid((5000, 5000), mpp=0.499, target_mpp=0.5, tile_size=224, stride=224,
                        mask=np.ones((10, 10), bool), mask_downsample=500.0, min_tissue_fraction=0.1)
    xs = np.unique(g2.coords[:, 0])
    assert np.allclose(xs, np.round(np.arange(len(xs)) * 224 * 0.5 / 0.499))


def test_grid_keeps_only_tissue_tiles() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[:, :20] = True  # left half is tissue; mask at 10x downsample of 400x400 px
    grid = make_tile_grid((400, 400), mpp=1.0, target_mpp=1.0, tile_size=100, stride=100,
                          mask=mask, mask_downsample=10.0, min_tissue_fraction=0.5)
    assert sorted(set(grid.coords[:, 0].tolist())) == [0, 100]
    assert len(grid.coords) == 8 and np.allclose(grid.tissue_fraction, 1.0)


def test_tissue_fraction_partial() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, :5] = True
    frac = tissue_fractions(mask, 1.0, np.array([[0, 0], [3, 0], [5, 0]]), 4.0)
    assert np.allclose(frac, [1.0, 0.5, 0.0])


def test_slide_smaller_than_a_tile_has_no_tiles() -> None:
    grid = make_tile_grid((16, 16), 0.5, 0.5, 224, 224, np.ones((2, 2), bool), 8.0, 0.1)
    assert grid.coords.shape == (0, 2)


def test_grid_order_is_banded() -> None:
    grid = make_tile_grid((2000, 500), 1.0, 1.0, 100, 100, np.ones((50, 200), bool), 10.0, 0.5, band_tiles=8)
    xs, ys = grid.coords[:, 0], grid.coords[:, 1]
    assert len(grid.coords) == 100 and len({(x, y) for x, y in grid.coords}) == 100
    first_band = grid.coords[:40]
    assert (first_band[:, 0] < 800).all() and list(first_band[:8, 1]) == [0] * 8
    assert list(ys[:9]) == [0] * 8 + [100] and xs[40] == 800


def test_tissue_mask_matches_synthetic_ground_truth(tmp_path: Path) -> None:
    """On a synthetic slide the detected tissue covers the drawn tissue, lesions included."""
    from skimage.transform import resize

    from wsi_mil.synth import load_lesion_mask, load_tissue_mask, make_slide

    make_slide(tmp_path / "s.tiff", 4096, 4096, mpp=0.5, seed=3, positive=True, lesion_fraction=0.05,
               ground_truth_dir=tmp_path / "ground_truth")
    truth, _ = load_tissue_mask(tmp_path, "s")
    lesion, _ = load_lesion_mask(tmp_path, "s")
    with open_slide(tmp_path / "s.tiff") as s:
        img, ds = s.read_at_mpp(8.0)
    mask = detect_tissue(img, ds * s.mpp)
    found = resize(mask.astype(float), truth.shape, order=0) > 0.5
    assert found[truth].mean() > 0.9, "most tissue is found"
    assert (found & ~truth).sum() < 0.1 * truth.sum(), "little glass is called tissue"
    assert found[resize(lesion.astype(float), truth.shape, order=0) > 0.5].mean() > 0.95, "lesions are tissue"


@pytest.mark.parametrize("method", ["otsu-saturation", "otsu-od"])
def test_strips_give_the_whole_image_mask(cmu_slide: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """Pixel signals are computed in strips of rows (bounded float temporaries): same mask whatever
    the strip height, including strips that do not divide the image."""
    import wsi_mil.tiling.tissue as tissue

    with open_slide(cmu_slide) as s:
        thumb, ds = s.read_at_mpp(2.0)
    cfg = TissueConfig(method=method, mask_mpp=2.0)
    whole = detect_tissue(thumb, ds * s.mpp, cfg)
    assert 0.05 < whole.mean() < 0.95
    for rows in (7, 64):
        monkeypatch.setattr(tissue, "STRIP_ROWS", rows)
        assert np.array_equal(detect_tissue(thumb, ds * s.mpp, cfg), whole)


def test_tissue_fractions_match_a_direct_count() -> None:
    rng = np.random.default_rng(8)
    coords = rng.integers(-50, 900, (200, 2)).astype(np.int64)
    for mask in (rng.random((97, 83)) > 0.4, (rng.random((97, 83)) > 0.7).astype(np.uint8)):
        got = tissue_fractions(mask, 10.0, coords, 64.0)
        for (x, y), f in zip(coords, got, strict=True):
            x0, y0 = min(max(int(np.floor(x / 10)), 0), 83), min(max(int(np.floor(y / 10)), 0), 97)
            x1, y1 = min(max(int(np.ceil((x + 64) / 10)), 0), 83), min(max(int(np.ceil((y + 64) / 10)), 0), 97)
            x1, y1 = max(x1, min(x0 + 1, 83)), max(y1, min(y0 + 1, 97))
            area = max((x1 - x0) * (y1 - y0), 1)
            assert f == np.float32(mask[y0:y1, x0:x1].sum() / area)
