"""Heatmap rendering core on synthetic arrays: every output is opened with its reader and checked."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from wsi_mil.errors import WsiMilError
from wsi_mil.heatmaps.geojson import tile_class_names, write_tiles_geojson
from wsi_mil.heatmaps.montage import CAPTION_PX, HEADING_PX, PAD, montage_size, render_montage_png, top_bottom_indices
from wsi_mil.heatmaps.ometiff import level_shapes, write_score_ometiff
from wsi_mil.heatmaps.overlay import OverlayOptions, overlay_layout, render_overlay_png
from wsi_mil.heatmaps.render import OUTPUTS, RenderOptions, SlideArrays, choose_class, render_slide
from wsi_mil.heatmaps.scoremap import build_score_grid, stride_level0
from wsi_mil.heatmaps.table import column_names, read_scores_csv, write_scores_csv

W0, H0 = 6000, 4000
MPP = 0.5
SIZE0 = 224.0


def grid_tiles(step: float = SIZE0, offset: int = 0, keep=None) -> np.ndarray:
    """Tile corners on a regular grid (rounded like the tiler), optionally filtered by keep(x, y)."""
    cols = int((W0 - SIZE0 - offset) // step) + 1
    rows = int((H0 - SIZE0 - offset) // step) + 1
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    coords = np.stack([np.round(offset + xs.ravel() * step), np.round(offset + ys.ravel() * step)], 1).astype(np.int64)
    if keep is not None:
        coords = coords[keep(coords[:, 0], coords[:, 1])]
    return coords


def blob(x, y):
    return (x - 3000) ** 2 / 2500**2 + (y - 2000) ** 2 / 1600**2 < 1


@pytest.fixture()
def tiles():
    rng = np.random.default_rng(0)
    coords = grid_tiles(keep=blob)
    n = len(coords)
    scores = rng.normal(size=n).astype(np.float32)
    # a known hot spot: highest scores on the right of the blob
    hot = coords[:, 0] > 4500
    scores[hot] += 5
    selected = np.zeros(n, np.int8)
    selected[np.argsort(-scores)[:5]] = 1
    selected[np.argsort(scores)[:5]] = -1
    return coords, scores, selected


# --- score grid -----------------------------------------------------------------------------------

def test_score_grid_places_every_tile_and_lookup_returns_its_score(tiles):
    coords, scores, _ = tiles
    g = build_score_grid(coords, scores, SIZE0)
    assert g.values.dtype == np.float32
    assert np.isfinite(g.values).sum() == len(coords)
    centre = coords + SIZE0 / 2
    np.testing.assert_array_equal(g.lookup(centre[:, 0], centre[:, 1]), scores)
    assert np.isnan(g.lookup(np.array([5.0]), np.array([5.0])))[0]  # background corner
    # memory is per grid cell, not per slide pixel
    assert g.values.size <= (W0 // SIZE0 + 1) * (H0 // SIZE0 + 1)


def test_score_grid_with_non_integer_step_and_offset_grid():
    step = 224.45  # 224 px at 0.5 mpp on a 0.499 mpp scan: coordinates are rounded
    coords = grid_tiles(step=step, offset=37)
    scores = np.arange(len(coords), dtype=np.float32)
    g = build_score_grid(coords, scores, step, step)
    assert np.isfinite(g.values).sum() == len(coords)
    c = coords + step / 2
    np.testing.assert_array_equal(g.lookup(c[:, 0], c[:, 1]), scores)


def test_score_grid_empty_and_bad_input():
    g = build_score_grid(np.zeros((0, 2)), np.zeros(0), SIZE0)
    assert g.shape == (0, 0)
    assert np.isnan(g.lookup(np.array([10.0]), np.array([10.0])))[0]
    with pytest.raises(WsiMilError, match="scores must have shape"):
        build_score_grid(np.zeros((3, 2)), np.zeros(4), SIZE0)
    with pytest.raises(WsiMilError, match="positive"):
        build_score_grid(np.zeros((3, 2)), np.zeros(3), 0)


def test_stride_level0_from_store_attributes():
    assert stride_level0({"tile_size_level0": 448.0, "stride_level0": 224.0}) == 224.0
    assert stride_level0({"tile_size_level0": 448.0, "stride": 112, "tile_size": 224}) == 224.0
    assert stride_level0({"tile_size_level0": 448.0}) == 448.0


# --- OME-TIFF -------------------------------------------------------------------------------------

def _ome_pixels(xml: str) -> dict:
    root = ET.fromstring(xml)
    pix = root.find(".//{*}Pixels")
    return dict(pix.attrib)


@pytest.mark.parametrize("ppt", [1, 16])
def test_ometiff_levels_physical_size_values_and_alignment(tmp_path, tiles, ppt):
    import tifffile

    coords, scores, _ = tiles
    g = build_score_grid(coords, scores, SIZE0)
    path = write_score_ometiff(tmp_path / "overlay.ome.tif", g, W0, H0, MPP, pixels_per_tile=ppt)
    d = SIZE0 / ppt
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        levels = series.levels
        expected = level_shapes(W0, H0, d)
        assert [lv.shape for lv in levels] == [(h, w) for h, w, _ in expected]
        assert len(levels) == (2 if ppt == 16 else 1)  # 429 x 286 px -> 215 x 143 (one TIFF tile)
        page = tif.pages[0]
        assert page.is_tiled and page.compression != 1  # tiled and compressed
        assert len(page.subifds or []) == len(levels) - 1  # reduced levels as SubIFDs
        px = _ome_pixels(tif.ome_metadata)
        assert float(px["PhysicalSizeX"]) == pytest.approx(d * MPP)
        assert float(px["PhysicalSizeY"]) == pytest.approx(d * MPP)
        assert px["PhysicalSizeXUnit"] == "µm"
        base = levels[0].asarray()
        assert base.dtype == np.float32
        # alignment: pixel (x, y) * pixel size (µm) / mpp = level-0 position; values = scores, unscaled
        size_um = float(px["PhysicalSizeX"])
        for i in range(0, len(coords), 7):
            cx, cy = coords[i] + SIZE0 / 2  # tile centre, level 0
            x, y = int(cx * MPP / size_um), int(cy * MPP / size_um)
            assert base[y, x] == scores[i]
            # the pixel's level-0 box lies inside tile i
            x0, y0 = x * size_um / MPP, y * size_um / MPP
            assert coords[i, 0] - 1 <= x0 and x0 + d <= coords[i, 0] + SIZE0 + 1
            assert coords[i, 1] - 1 <= y0 and y0 + d <= coords[i, 1] + SIZE0 + 1
        assert np.isnan(base[0, 0])  # background is NaN
        assert np.isfinite(base).sum() == pytest.approx(len(coords) * ppt * ppt, rel=0.02)
        # a reduced level holds the same scores at twice the pixel size
        if len(levels) > 1:
            lv1 = levels[1].asarray()
            i = int(np.argmax(scores))
            cx, cy = coords[i] + SIZE0 / 2
            assert lv1[int(cy / (2 * d)), int(cx / (2 * d))] == scores[i]


def test_level_shapes_of_a_large_slide():
    lv = level_shapes(150_000, 100_000, 56.0)
    assert lv[0] == (1786, 2679, 56.0)
    assert [d for _, _, d in lv] == [56.0 * 2**k for k in range(len(lv))]
    assert max(lv[-1][:2]) <= 256 < max(lv[-2][:2])


def test_ometiff_no_tissue_is_all_nan(tmp_path):
    import tifffile

    g = build_score_grid(np.zeros((0, 2)), np.zeros(0), SIZE0)
    path = write_score_ometiff(tmp_path / "o.ome.tif", g, W0, H0, MPP)
    with tifffile.TiffFile(path) as tif:
        assert np.isnan(tif.series[0].levels[0].asarray()).all()


# --- GeoJSON (QuPath) -----------------------------------------------------------------------------

QUPATH_OBJECT_TYPES = {"annotation", "detection", "tile", "cell", "tmaCore", "tma_core", "root"}


def validate_qupath_geojson(doc: dict) -> None:
    """The structure QuPath's GeoJSON import reads (qupath-core PathObjectTypeAdapters, v0.4+)."""
    assert doc["type"] == "FeatureCollection" and isinstance(doc["features"], list)
    for f in doc["features"]:
        assert f["type"] == "Feature"
        geom = f["geometry"]
        assert geom["type"] == "Polygon"
        rings = geom["coordinates"]
        assert len(rings) >= 1
        for ring in rings:
            assert len(ring) >= 4 and ring[0] == ring[-1]  # closed linear ring
            assert all(len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in ring)
        props = f["properties"]
        assert props["objectType"] in QUPATH_OBJECT_TYPES
        cls = props["classification"]
        assert isinstance(cls["name"], str) and cls["name"]
        assert len(cls["color"]) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in cls["color"])
        meas = props["measurements"]
        assert isinstance(meas, dict)  # flat name -> number (QuPath reads Map<String, Double>)
        assert all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                   for k, v in meas.items())


def test_geojson_matches_qupath_structure_and_scores(tmp_path, tiles):
    coords, scores, selected = tiles
    other = -scores
    path = write_tiles_geojson(tmp_path / "tiles.geojson", coords, scores, selected, SIZE0, "tumor",
                               {"score normal": other})
    doc = json.loads(path.read_text())
    validate_qupath_geojson(doc)
    feats = doc["features"]
    assert len(feats) == len(coords)
    top, bottom, plain = tile_class_names("tumor")
    for i, f in enumerate(feats):
        m = f["properties"]["measurements"]
        assert m["tile id"] == i
        assert np.float32(m["score"]) == scores[i]  # float32 round-trips exactly
        assert np.float32(m["score normal"]) == other[i]
        assert m["selected"] == selected[i]
        x, y = coords[i]
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == [x, y] and ring[2] == [x + 224, y + 224]
        name = f["properties"]["classification"]["name"]
        assert name == {1: top, -1: bottom, 0: plain}[int(selected[i])]
    assert sum(f["properties"]["classification"]["name"] == top for f in feats) == 5


def test_geojson_empty_and_fractional_tile_size(tmp_path):
    p = write_tiles_geojson(tmp_path / "e.geojson", np.zeros((0, 2)), np.zeros(0), np.zeros(0), SIZE0, "t")
    doc = json.loads(p.read_text())
    validate_qupath_geojson(doc)
    assert doc["features"] == []
    p = write_tiles_geojson(tmp_path / "f.geojson", np.array([[10, 20]]), np.array([0.5]), np.array([0]),
                            224.45, "t")
    doc = json.loads(p.read_text())
    validate_qupath_geojson(doc)
    assert doc["features"][0]["geometry"]["coordinates"][0][2] == [234.45, 244.45]


def test_geojson_leaves_out_non_finite_measurements(tmp_path):
    coords = np.array([[0, 0], [224, 0], [448, 0]])
    p = write_tiles_geojson(tmp_path / "n.geojson", coords, np.array([1.5, np.nan, -2.0]), np.array([1, 0, -1]),
                            SIZE0, "t", {"score other": np.array([0.25, 0.5, np.inf])})
    doc = json.loads(p.read_text())
    validate_qupath_geojson(doc)
    meas = [f["properties"]["measurements"] for f in doc["features"]]
    assert meas[0] == {"score": 1.5, "score other": 0.25, "selected": 1, "tile id": 0}
    assert meas[1] == {"score other": 0.5, "selected": 0, "tile id": 1}
    assert meas[2] == {"score": -2, "selected": -1, "tile id": 2}
    assert doc["features"][1]["geometry"]["coordinates"][0][2] == [448, 224]


def test_geojson_refuses_mismatched_arrays(tmp_path):
    with pytest.raises(WsiMilError, match="selected"):
        write_tiles_geojson(tmp_path / "x.geojson", np.zeros((3, 2)), np.zeros(3), np.zeros(2), SIZE0, "t")
    assert not (tmp_path / "x.geojson").exists()


# --- scores.csv -----------------------------------------------------------------------------------

def test_scores_csv_round_trip(tmp_path, tiles):
    coords, scores, selected = tiles
    ts = np.stack([-scores, scores], 1)
    sel = np.stack([np.zeros_like(selected), selected], 1)
    path = write_scores_csv(tmp_path / "scores.csv", coords, ts, sel, ["normal", "tumor"], SIZE0)
    assert path.read_text().splitlines()[0] == ",".join(column_names(["normal", "tumor"]))
    back = read_scores_csv(path)
    np.testing.assert_array_equal(back["tile_id"], np.arange(len(coords)))
    np.testing.assert_array_equal(back["x"], coords[:, 0])
    np.testing.assert_array_equal(back["y"], coords[:, 1])
    np.testing.assert_allclose(back["score_tumor"], scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(back["selected_tumor"], selected)
    assert set(back["size"]) == {224.0}


# --- overlay.png ----------------------------------------------------------------------------------

def _thumb() -> np.ndarray:
    h, w = 400, 600
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 250, np.uint8)
    img[blob(xx * 10.0, yy * 10.0)] = (200, 150, 200)  # pink tissue
    return img


def test_overlay_png_size_colours_and_alignment(tmp_path, tiles):
    coords, scores, selected = tiles
    g = build_score_grid(coords, scores, SIZE0)
    mask = blob(*np.mgrid[0:400, 0:600][::-1] * 10.0).astype(np.uint8)
    opts = OverlayOptions("slide-1", "class shown: tumor", "tile score (tumor)", width_px=900)
    lay = render_overlay_png(tmp_path / "overlay.png", g, W0, H0, _thumb(), coords, selected, opts, mask, 10.0)
    assert lay == overlay_layout(W0, H0, 900)
    with Image.open(tmp_path / "overlay.png") as im:
        assert im.format == "PNG"
        assert im.size == (lay.width, lay.height) == (900, lay.height)
        assert lay.height == 64 + round((900 - 24 - 120) * H0 / W0) + 34
        rgb = np.asarray(im.convert("RGB")).astype(int)
    # hot tiles (score high) are red-ish, cold tiles blue-ish, background stays light
    hot = [i for i in np.argsort(-scores)[:40] if selected[i] == 0][:10]
    cold = [i for i in np.argsort(scores)[:40] if selected[i] == 0][:10]
    for group, sign in ((hot, 1), (cold, -1)):
        for i in group:
            px, py = lay.to_png(*(coords[i] + SIZE0 / 2))
            r, _, b = rgb[int(py), int(px)]
            assert sign * (r - b) > 20, (i, r, b)
    bx, by = lay.to_png(150, 150)
    assert rgb[int(by), int(bx)].min() > 200
    # a selected top tile carries the green mark on its edge
    i = int(np.flatnonzero(selected == 1)[0])
    x0, y0 = lay.to_png(*coords[i])
    x1, y1 = lay.to_png(*(coords[i] + SIZE0))
    edge = rgb[int(y0) - 1:int(y1) + 2, int(x0) - 1:int(x1) + 2].reshape(-1, 3)
    assert ((edge[:, 1] > 150) & (edge[:, 0] < 100) & (edge[:, 2] < 100)).any()


def test_overlay_without_thumbnail_or_tiles(tmp_path):
    g = build_score_grid(np.zeros((0, 2)), np.zeros(0), SIZE0)
    lay = render_overlay_png(tmp_path / "o.png", g, W0, H0, None, np.zeros((0, 2)), np.zeros(0),
                             OverlayOptions("s", "x", "score", message="no tissue detected"))
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (lay.width, lay.height)


def test_overlay_layout_caps_tall_slides():
    lay = overlay_layout(1000, 100000, 1200)
    assert lay.map_height == 1600 and lay.width == 1200 and lay.map_width < 100


# --- top_tiles.png --------------------------------------------------------------------------------

def test_top_bottom_indices():
    s = np.array([0.1, 5, -3, 2, np.nan, -1])
    top, bottom = top_bottom_indices(s, 2)
    assert list(top) == [1, 3] and list(bottom) == [2, 5]
    top, bottom = top_bottom_indices(s, 8)  # fewer than 2k tiles: disjoint halves
    assert set(top).isdisjoint(bottom) and len(top) + len(bottom) == 5


def test_montage_reads_the_right_tiles(tmp_path):
    n, s = 30, 32
    pix = np.zeros((n, s, s, 3), np.uint8)
    pix[..., 0] = np.arange(n)[:, None, None] * 8  # tile i has red = 8 i
    scores = np.arange(n, dtype=np.float32)
    asked = []

    def read(idx):
        asked.append(list(idx))
        return pix[np.asarray(idx)]

    top, bottom = render_montage_png(tmp_path / "t.png", read, scores, np.zeros(n), "tumor", k=4, cell=40)
    assert list(top) == [29, 28, 27, 26] and list(bottom) == [0, 1, 2, 3]
    assert len(asked) == 1  # one batched read
    with Image.open(tmp_path / "t.png") as im:
        assert im.size == montage_size(4, 40)
        rgb = np.asarray(im.convert("RGB"))
    first = rgb[PAD + HEADING_PX + 20, PAD + 20]
    assert abs(int(first[0]) - 29 * 8) <= 2


@pytest.mark.parametrize("cell", [40, 96, 160])
def test_montage_captions_stay_under_their_tile(tmp_path, cell):
    """Captions of long ids, long scores and selection marks never reach into the neighbour's column."""
    n, k = 400_000, 8
    scores = np.linspace(-0.000123456, 12345.678, n).astype(np.float32)
    sel = np.zeros(n, np.int8)
    sel[-k:], sel[:k] = 1, -1  # every shown tile carries a mark
    render_montage_png(tmp_path / "t.png", None, scores, sel, "tumor", k=k, cell=cell)
    with Image.open(tmp_path / "t.png") as im:
        rgb = np.asarray(im.convert("L")).astype(int)
    for row in range(2):
        y0 = PAD + row * (HEADING_PX + cell + CAPTION_PX + PAD) + HEADING_PX + cell
        band = rgb[y0:y0 + CAPTION_PX]
        assert (band < 128).any()  # captions are drawn
        for j in range(k - 1):  # the gap between tile j and tile j + 1 stays white
            gap = band[:, PAD + j * (cell + PAD) + cell:PAD + (j + 1) * (cell + PAD)]
            assert (gap > 200).all(), (cell, row, j)


# --- the whole slide ------------------------------------------------------------------------------

def test_render_slide_writes_all_outputs(tmp_path, tiles):
    coords, scores, selected = tiles
    n = len(coords)
    a = SlideArrays("s1", coords, np.stack([-scores, scores], 1), np.stack([np.zeros(n), selected], 1),
                    ["normal", "tumor"], W0, H0, MPP, SIZE0, thumbnail=_thumb(),
                    probs=np.array([0.2, 0.8]), label="tumor",
                    read_tiles=lambda idx: np.full((len(idx), 16, 16, 3), 128, np.uint8))
    summary = render_slide(tmp_path / "s1", a, choose_class(a.class_names, None, a.probs), RenderOptions())
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == sorted(OUTPUTS)
    assert summary["class_shown"] == "tumor" and summary["predicted"] == "tumor"
    assert summary["probability"] == pytest.approx(0.8) and summary["n_tiles"] == n
    assert summary["n_selected_top"] == 5 and summary["overlay_tiff"]["pixel_size_um"] == pytest.approx(56 * MPP)
    json.dumps(summary)  # JSON-able


def test_render_slide_no_tissue(tmp_path):
    a = SlideArrays("empty", np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"], W0, H0, MPP, SIZE0)
    summary = render_slide(tmp_path / "e", a, 1)
    assert summary["n_tiles"] == 0 and re.search("no tissue", summary["notes"][0])
    assert read_scores_csv(tmp_path / "e" / "scores.csv")["tile_id"].size == 0


def test_choose_class():
    assert choose_class(["neg", "pos"], None, None) == 1
    assert choose_class(["a", "b", "c"], None, np.array([0.1, 0.2, 0.7])) == 2
    assert choose_class(["a", "b", "c"], "a", np.array([0.1, 0.2, 0.7])) == 0
    with pytest.raises(WsiMilError, match="choose one of a, b, c"):
        choose_class(["a", "b", "c"], "z", None)
