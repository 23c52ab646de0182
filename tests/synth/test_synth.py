"""Synthetic cohorts: slides OpenSlide reads, ground truth aligned with pixels, determinism, a task that
needs learning, bounded memory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from scipy import ndimage as ndi

from wsi_mil.errors import ConfigError, StoreError
from wsi_mil.synth import (
    lesion_fraction,
    load_ground_truth,
    load_lesion_mask,
    load_lesion_polygons,
    load_tissue_mask,
    make_cohort,
    make_slide,
    read_cohort_manifest,
    render,
)
from wsi_mil.synth.render import SlideRenderer, SlideSpec
from wsi_mil.synth.shapes import polygon_area, rasterize_polygons


def _labels(cohort: Path) -> dict[str, int]:
    with open(cohort / "labels.csv", newline="") as f:
        return {r["slide_id"]: int(r["label"]) for r in csv.DictReader(f)}


def _rgb(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    w, h = slide.level_dimensions[level]
    return np.asarray(slide.read_region((0, 0), level, (w, h)).convert("RGB"))


def _od_sum(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) float32 optical density summed over R, G, B (dark = high)."""
    return -np.log((rgb.astype(np.float32) + 1) / 256).sum(axis=-1)


def test_cohort_layout_and_labels(synth_cohort: Path) -> None:
    labels = _labels(synth_cohort)
    assert list(labels) == [f"slide_{i:03d}" for i in range(8)]
    assert sorted(labels.values()) == [0, 0, 0, 0, 1, 1, 1, 1]
    header = (synth_cohort / "labels.csv").read_text().splitlines()[0]
    assert header == "slide_id,label,case_id"
    manifest = read_cohort_manifest(synth_cohort)
    assert [s["slide_id"] for s in manifest["slides"]] == list(labels)
    for sid, label in labels.items():
        meta = load_ground_truth(synth_cohort, sid)
        assert meta["label"] == label
        mask, ds = load_lesion_mask(synth_cohort, sid)
        assert ds == 4.0 and mask.shape == (768, 768)
        polys = load_lesion_polygons(synth_cohort, sid)
        grid = np.arange(0, 3072 - 224 + 1, 224)
        tiles = lesion_fraction(mask, ds, np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2), 224)
        if label:
            assert 1 <= len(polys) <= 12 and mask.any()
            assert 0.04 <= meta["lesion_fraction"] <= 0.08 + 1e-6
            assert (tiles >= 0.5).sum() >= 2  # what the fixture promises: several lesion tiles
        else:
            assert polys == [] and not mask.any() and meta["lesion_fraction"] == 0.0
            assert not tiles.any()
    leftovers = [p.name for p in synth_cohort.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def test_slides_open_with_openslide(synth_cohort: Path) -> None:
    for sid in _labels(synth_cohort):
        with openslide.OpenSlide(str(synth_cohort / f"{sid}.tiff")) as s:
            assert s.dimensions == (3072, 3072)
            assert s.level_count == 4
            assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0, 8.0))
            assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5, abs=1e-6)
            assert float(s.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5, abs=1e-6)
            assert s.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
            assert s.properties["tiff.ResolutionUnit"] == "centimeter"
            # every level is the level above it reduced 2x (up to JPEG error)
            l2 = _rgb(s, 2).astype(np.float32)
            l3 = _rgb(s, 3).astype(np.float32)
            down = l2.reshape(384, 2, 384, 2, 3).mean(axis=(1, 3))
            tissue = l3.mean(axis=-1) < 220
            err = np.abs(down - l3)[tissue].mean()
            shifted = np.abs(np.roll(down, 1, axis=1) - l3)[tissue].mean()  # what 1 px misregistration costs
            assert err < 9.0 and err < shifted / 2


def test_tissue_on_glass_matches_tissue_mask(synth_cohort: Path) -> None:
    sid = "slide_000"
    with openslide.OpenSlide(str(synth_cohort / f"{sid}.tiff")) as s:
        rgb = _rgb(s, 2)  # downsample 4 == mask downsample
    tissue, ds = load_tissue_mask(synth_cohort, sid)
    assert ds == 4.0 and rgb.shape[:2] == tissue.shape
    assert 0.15 < tissue.mean() < 0.75
    brightness = rgb.astype(np.float32).mean(axis=-1)
    inner = ndi.binary_erosion(tissue, iterations=4)
    outer = ~ndi.binary_dilation(tissue, iterations=8)  # the ragged border reaches ~6 mask px out
    glass = brightness[outer]
    assert glass.std() < 2.0 and glass.mean() > 225  # plain glass
    assert np.median(brightness[inner]) < glass.mean() - 40  # stained tissue


def test_ground_truth_lines_up_with_pixels(synth_cohort: Path, tmp_path: Path) -> None:
    """The same slide rendered without lesion texture differs from the cohort slide exactly inside the mask,
    and pixels inside the mask have more nuclear (dark) area than normal tissue."""
    manifest = read_cohort_manifest(synth_cohort)
    entry = next(e for e in manifest["slides"] if e["label"] == 1)
    sid = entry["slide_id"]
    plain = make_slide(tmp_path / "plain.tiff", 3072, 3072, 0.5, entry["seed"], True, (0.04, 0.08),
                       lesion_texture=False)
    mask, ds = load_lesion_mask(synth_cohort, sid)
    assert np.array_equal(plain.mask, mask)  # same seed, same lesions
    with openslide.OpenSlide(str(synth_cohort / f"{sid}.tiff")) as a, \
            openslide.OpenSlide(str(tmp_path / "plain.tiff")) as b:
        img, ref = _rgb(a, 2), _rgb(b, 2)  # level 2 = downsample 4 = the mask grid
    diff = np.abs(img.astype(np.int16) - ref.astype(np.int16)).max(axis=-1)
    changed = ndi.binary_opening(diff > 12, iterations=1)
    inter = (changed & mask).sum()
    union = (changed | mask).sum()
    assert inter / union > 0.75
    # nothing changes away from the lesions (beyond the border cross-fade and one JPEG block)
    far = ~ndi.binary_dilation(mask, iterations=14)
    assert diff[far].max() <= 12
    # lesion-textured: inside the mask, far more pixels are as dark as the darkest (nuclear) tenth of the
    # same places without lesions
    core = ndi.binary_erosion(mask, iterations=3)
    assert core.sum() > 50
    od_img, od_ref = _od_sum(img)[core], _od_sum(ref)[core]
    dark = np.percentile(od_ref, 90)
    assert (od_img > dark).mean() > 0.25


def test_renderer_draws_any_level_without_the_file(synth_cohort: Path) -> None:
    """Rendering a reduced level straight from the slide's description matches the written pyramid."""
    entry = read_cohort_manifest(synth_cohort)["slides"][1]
    spec = SlideSpec.draw(3072, 3072, 0.5, entry["seed"], bool(entry["label"]), (0.04, 0.08))
    thumb = SlideRenderer(spec)(0, 0, 384, 384, downsample=8.0)
    with openslide.OpenSlide(str(synth_cohort / f"{entry['slide_id']}.tiff")) as s:
        level3 = _rgb(s, 3)
    assert thumb is not None and thumb.shape == level3.shape
    diff = np.abs(thumb.astype(np.float32) - level3.astype(np.float32)).mean(axis=-1)
    assert np.median(diff) < 6.0 and diff.mean() < 15.0


def test_polygons_match_mask_and_lie_in_tissue(synth_cohort: Path) -> None:
    for sid, label in _labels(synth_cohort).items():
        if not label:
            continue
        polys = load_lesion_polygons(synth_cohort, sid)
        meta = load_ground_truth(synth_cohort, sid)
        assert sum(polygon_area(p) for p in polys) == pytest.approx(meta["lesion_area_px"], rel=1e-3)
        mask, ds = load_lesion_mask(synth_cohort, sid)
        tissue, _ = load_tissue_mask(synth_cohort, sid)
        # re-rasterising the GeoJSON polygons gives the mask back
        again = rasterize_polygons(polys, 3072, 3072, ds)
        assert (again != mask).mean() < 0.002
        assert not (mask & ~tissue).any()
        doc = json.loads((synth_cohort / "ground_truth" / f"{sid}.geojson").read_text())
        assert doc["properties"]["mask_downsample"] == ds
        assert all(f["geometry"]["type"] == "Polygon" for f in doc["features"])


def test_colour_statistic_separates_lesions_but_not_perfectly(synth_cohort: Path) -> None:
    """Tile-level AUC of simple colour statistics (mean R, G, B, mean OD per channel, mean total OD) of
    224 px tiles (stride 112) that are all lesion vs no lesion: well above chance, below perfect."""
    from sklearn.metrics import roc_auc_score

    size, half = 224, 112  # level-0 px; statistics are taken on level 1 (0.5 mpp -> 1 mpp), 56 px blocks
    stats, labels = [], []
    od_lut = -np.log((np.arange(256, dtype=np.float32) + 1) / 256)
    for sid in _labels(synth_cohort):
        mask, ds = load_lesion_mask(synth_cohort, sid)
        tissue, _ = load_tissue_mask(synth_cohort, sid)
        with openslide.OpenSlide(str(synth_cohort / f"{sid}.tiff")) as s:
            rgb = _rgb(s, 1)
        b = half // 2
        n = rgb.shape[0] // b
        rgb = rgb[:n * b, :n * b]
        blocks = np.concatenate([rgb.reshape(n, b, n, b, 3).mean(axis=(1, 3)),
                                 od_lut[rgb].reshape(n, b, n, b, 3).mean(axis=(1, 3))], axis=-1)
        tiles = (blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]) / 4  # 224 px tiles
        grid = np.arange(n - 1) * half
        coords = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)  # (x, y), row-major like tiles
        les = lesion_fraction(mask, ds, coords, size)
        tis = lesion_fraction(tissue, ds, coords, size)
        keep = (tis > 0.9) & ((les >= 0.5) | (les == 0))
        feats = tiles.reshape(-1, 6)[keep]
        stats.append(np.concatenate([feats, feats[:, 3:].sum(axis=1, keepdims=True)], axis=1))
        labels.append((les[keep] >= 0.5).astype(int))
    y = np.concatenate(labels)
    x = np.concatenate(stats)
    assert y.sum() >= 12 and (1 - y).sum() >= 100
    aucs = [roc_auc_score(y, col) for col in x.T]
    best = max(max(a, 1 - a) for a in aucs)
    assert 0.65 < best < 0.97, aucs


def test_stain_varies_between_slides(synth_cohort: Path) -> None:
    means = []
    for sid in _labels(synth_cohort):
        tissue, _ = load_tissue_mask(synth_cohort, sid)
        with openslide.OpenSlide(str(synth_cohort / f"{sid}.tiff")) as s:
            rgb = _rgb(s, 2)
        means.append(rgb[tissue].mean(axis=0))
    spread = np.array(means).std(axis=0)
    assert spread.max() > 3.0  # grey levels, between slides


def test_make_slide_is_deterministic(tmp_path: Path) -> None:
    a = make_slide(tmp_path / "a" / "s.tiff", 1024, 768, 0.5, 5, True, 0.05)
    b = make_slide(tmp_path / "b" / "s.tiff", 1024, 768, 0.5, 5, True, 0.05)
    c = make_slide(tmp_path / "c" / "s.tiff", 1024, 768, 0.5, 6, True, 0.05)
    assert (tmp_path / "a" / "s.tiff").read_bytes() == (tmp_path / "b" / "s.tiff").read_bytes()
    assert np.array_equal(a.mask, b.mask) and a.lesion_area == b.lesion_area
    assert (tmp_path / "a" / "s.tiff").read_bytes() != (tmp_path / "c" / "s.tiff").read_bytes()
    assert not np.array_equal(a.mask, c.mask)
    assert a.lesion_fraction == pytest.approx(0.05, rel=1e-6)


def test_make_slide_with_row_workers_writes_the_same_bytes(tmp_path: Path) -> None:
    for factor, tiles in ((2, 9 + 4 + 1), (4, 9 + 1)):
        a, b = tmp_path / f"a{factor}" / "s.tiff", tmp_path / f"b{factor}" / "s.tiff"
        one = make_slide(a, 1300, 1100, 0.5, 9, True, 0.04, level_downsample=factor)
        two = make_slide(b, 1300, 1100, 0.5, 9, True, 0.04, level_downsample=factor, workers=2)
        assert a.read_bytes() == b.read_bytes()
        assert one.params["glass_tiles"] == two.params["glass_tiles"] and one.params["tiles_written"] == tiles
        with openslide.OpenSlide(str(b)) as s:
            assert s.level_downsamples == pytest.approx(one.level_downsamples, rel=2e-3)
            assert s.level_downsamples[1] == pytest.approx(factor, rel=2e-3)


def test_make_cohort_is_deterministic_parallel_and_resumable(tmp_path: Path) -> None:
    kw = dict(size=(768, 768), lesion_fraction=(0.03, 0.05), seed=3)
    one = make_cohort(tmp_path / "one", 3, **kw)
    two = make_cohort(tmp_path / "two", 3, workers=2, **kw)  # Dask tasks give the same bytes
    for name in ("labels.csv", "slide_000.tiff", "slide_002.tiff", "ground_truth/slide_001.geojson",
                 "ground_truth/slide_001_mask.png"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    before = (one / "slide_001.tiff").stat().st_mtime_ns
    make_cohort(one, 3, **kw)  # complete slides are kept
    assert (one / "slide_001.tiff").stat().st_mtime_ns == before
    other = make_cohort(tmp_path / "three", 3, size=(768, 768), lesion_fraction=(0.03, 0.05), seed=4)
    assert (one / "slide_000.tiff").read_bytes() != (other / "slide_000.tiff").read_bytes()


def test_killed_generation_leaves_no_complete_slide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = render.SlideRenderer.__call__

    def dying(self, x, y, w, h):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, x, y, w, h)

    monkeypatch.setattr(render.SlideRenderer, "__call__", dying)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):  # slide_000 has 4 tiles: dies inside slide_001
        make_cohort(out, 2, size=(1024, 1024), seed=1)
    assert [p.name for p in out.glob("*.tiff")] == ["slide_000.tiff"]
    assert not (out / "labels.csv").exists() and not (out / "ground_truth" / "slide_001.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    done = (out / "slide_000.tiff").stat().st_mtime_ns
    monkeypatch.setattr(render.SlideRenderer, "__call__", original)
    make_cohort(out, 2, size=(1024, 1024), seed=1)
    assert sorted(p.name for p in out.glob("*.tiff")) == ["slide_000.tiff", "slide_001.tiff"]
    assert (out / "slide_000.tiff").stat().st_mtime_ns == done  # kept, not redone
    assert sorted(_labels(out).values()) == [0, 1]


def test_40x_slide_has_a_half_micron_level(tmp_path: Path) -> None:
    truth = make_slide(tmp_path / "s40.tiff", 2048, 1536, 0.25, 1, True, 0.03)
    with openslide.OpenSlide(str(tmp_path / "s40.tiff")) as s:
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25, abs=1e-6)
        assert s.level_downsamples[1] == pytest.approx(2.0)
        assert s.level_dimensions[1] == (1024, 768)
        assert s.level_count == len(truth.level_dimensions) == 3  # 2048, 1024, 512 px wide
    assert truth.mask_downsample == 4.0 and truth.mask.any()


def test_bad_parameters_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="positive_fraction"):
        make_cohort(tmp_path, 2, positive_fraction=1.5)
    with pytest.raises(ConfigError, match="lesion_fraction"):
        make_cohort(tmp_path, 2, lesion_fraction=(0.2, 0.1))
    with pytest.raises(ConfigError, match="size"):
        make_slide(tmp_path / "x.tiff", 100, 100)
    with pytest.raises(ConfigError, match="tile_size"):
        make_slide(tmp_path / "x.tiff", 512, 512, tile_size=500)
    with pytest.raises(ConfigError, match="lesion"):
        make_slide(tmp_path / "x.tiff", 512, 512, 0.5, 0, True, 0.45)  # cannot fit in so little tissue


def test_lesion_fraction_is_exact() -> None:
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:4] = True  # level-0 px [20, 40) x [10, 30) at downsample 10
    coords = np.array([[20, 10], [10, 0], [0, 0], [25, 15], [50, 30], [-20, -20], [200, 200]])
    got = lesion_fraction(mask, 10.0, coords, 20.0)
    want = [1.0, 0.25, 0.0, 0.5625, 0.0, 0.0, 0.0]
    assert got.dtype == np.float32 and got.shape == (7,)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # brute force at level 0 for random tiles
    rng = np.random.default_rng(0)
    big = rng.random((20, 30)) > 0.6
    full = np.kron(big, np.ones((4, 4), bool))
    xy = rng.integers(0, 100, size=(50, 2))
    brute = [full[y:y + 17, x:x + 17].sum() / 17**2 for x, y in xy]
    np.testing.assert_allclose(lesion_fraction(big, 4.0, xy, 17.0), brute, atol=1e-5)
    assert lesion_fraction(big, 4.0, np.zeros((0, 2), np.int64), 17.0).shape == (0,)
    with pytest.raises(ConfigError):
        lesion_fraction(big, 4.0, np.zeros((3, 3)), 17.0)


def test_missing_ground_truth_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="slide_404"):
        load_lesion_mask(tmp_path, "slide_404")
    with pytest.raises(StoreError, match="cohort.json"):
        read_cohort_manifest(tmp_path)


_MEMORY_PROBE = r"""
import resource, sys
from wsi_mil.synth import make_slide
from wsi_mil.synth.texture import load_sample
load_sample()
make_slide(sys.argv[1] + "/warm.tiff", 1024, 1024, 0.5, 1, True, 0.03)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
make_slide(sys.argv[1] + "/big.tiff", int(sys.argv[2]), int(sys.argv[2]), 0.5, 2, True, 0.02)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base * 1024, peak * 1024)
"""


def test_memory_stays_bounded_for_a_larger_slide(tmp_path: Path) -> None:
    """A 6144 x 6144 slide (108 MiB as raw RGB) adds far less than its raw size to peak memory (the
    100k x 100k figure is in BENCHMARKS.md, from benchmarks/bench_synth.py)."""
    side = 6144
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path), str(side)],
                         capture_output=True, text=True, check=True)
    base, peak = (int(v) for v in out.stdout.split())
    raw = side * side * 3
    assert peak - base < 0.35 * raw, (base, peak)
    with openslide.OpenSlide(str(tmp_path / "big.tiff")) as s:
        assert s.dimensions == (side, side) and s.level_count == 5  # 6144 ... 384 px
