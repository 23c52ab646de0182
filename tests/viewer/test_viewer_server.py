"""The viewer's server without a browser: Deep Zoom tiles equal OpenSlide's DeepZoomGenerator's, score
tiles follow the tile scores, URLs cannot leave the job folder, a damaged slide gives an error page,
the tile cache is bounded, and the command binds 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import http.client
import io
import json

import numpy as np
import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image
from viewer_data import CELL, COLS, H0, RUN, W0, cell_colour, decode_cell, tile_scores

from wsi_mil.cli import main
from wsi_mil.slide import open_slide
from wsi_mil.viewer.app import create_app
from wsi_mil.viewer.cache import ByteLRU, HandleLRU
from wsi_mil.viewer.deepzoom import DeepZoom
from wsi_mil.viewer.job import ViewerError
from wsi_mil.viewer.layer import colour_table
from wsi_mil.viewer.page import OSD_VERSION
from wsi_mil.viewer.server import serve_in_thread


@pytest.fixture(scope="module")
def server(viewer_job):
    app = create_app(viewer_job, cache_mb=4)
    with serve_in_thread(app) as url:
        yield url, app


def get(url: str, path: str) -> tuple[int, bytes, str]:
    """GET ``path`` sent exactly as written (no client-side normalisation of '..' or '%2e')."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("content-type") or ""
    finally:
        conn.close()


@pytest.mark.parametrize("name,mpp", [("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.5)])
def test_deepzoom_tiles_equal_openslide_deepzoom_generator(shared_slides, name, mpp):
    path = shared_slides / name
    dz = DeepZoom(open_slide(path, mpp=mpp))
    ref = DeepZoomGenerator(openslide.OpenSlide(str(path)))
    assert dz.level_dimensions == list(ref.level_dimensions) and dz.level_tiles == list(ref.level_tiles)
    for level in (dz.level_count - 1, dz.level_count - 2, dz.level_count - 5):  # level 0, level 1 (TCGA), resized
        cols, rows = dz.level_tiles[level]
        for col, row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 3)}:  # corners (overlap 0 on a side), inside
            ours = dz.tile(level, col, row)
            theirs = np.asarray(ref.get_tile(level, (col, row)).convert("RGB"))
            assert ours.shape == theirs.shape
            assert np.abs(ours.astype(int) - theirs).max() <= 1, (level, col, row)


def test_tiles_line_up_with_stored_coordinates(server):
    url, _ = server
    status, body, _ = get(url, "/api/slide/s1.json")
    info = json.loads(body)
    assert status == 200 and (info["width"], info["height"]) == (W0, H0) and info["layer"]["class_name"] == "tumor"
    top = info["max_level"]
    for i in (0, 7, 29):  # at full resolution tile (c, r) of 254 px + overlap holds cell pixels at known places
        x, y = info["layer"]["x"][i], info["layer"]["y"][i]
        col, row = (x + CELL // 2) // 254, (y + CELL // 2) // 254
        status, body, ctype = get(url, f"/tiles/s1/{top}/{col}_{row}.jpeg")
        assert status == 200 and ctype == "image/jpeg"
        img = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        ox, oy = col * 254 - (col > 0), row * 254 - (row > 0)
        px = img[y + CELL // 2 - oy, x + CELL // 2 - ox]
        assert decode_cell(px) == (x // CELL, y // CELL)


def test_score_tiles_follow_scores(server):
    url, _ = server
    info = json.loads(get(url, "/api/slide/s1.json")[1])
    lay = info["layer"]
    lut = colour_table("coolwarm")
    status, body, ctype = get(url, f"/overlay/{RUN}/s1/{info['max_level'] - 1}/0_0.png")  # level-0 px / 2
    assert status == 200 and ctype == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(body)))
    assert rgba.shape == (255, 255, 4) and (rgba[..., 3] == 255).all()  # every pixel lies in a scored cell
    coords = np.stack([lay["x"], lay["y"]], 1)
    s = tile_scores(coords)
    for (cx, cy) in ((0, 0), (0, CELL), (CELL, 0), (CELL, CELL)):
        i = int(np.flatnonzero((coords[:, 0] == cx) & (coords[:, 1] == cy))[0])
        t = (s[i] - lay["vmin"]) / (lay["vmax"] - lay["vmin"])
        np.testing.assert_array_equal(rgba[(cy + 100) // 2, (cx + 100) // 2, :3], lut[int(round(t * 255))])
    assert not np.array_equal(rgba[50, 50], rgba[50, (CELL + 100) // 2])  # another score, another colour
    # a coarse level still covers the same level-0 area: the right half holds the high scores (red)
    coarse = np.asarray(Image.open(io.BytesIO(get(url, f"/overlay/{RUN}/s1/{info['max_level'] - 3}/0_0.png")[1])))
    h, w = coarse.shape[:2]
    assert (w, h) == (W0 // 8, H0 // 8)
    assert coarse[h // 2, w - 3, 0] > coarse[h // 2, 2, 0] and coarse[h // 2, w - 3, 2] < coarse[h // 2, 2, 2]
    assert lay["colour_bar"][0]["colour"] != lay["colour_bar"][-1]["colour"]


def test_pages_ground_truth_and_static_files(server):
    url, _ = server
    status, body, _ = get(url, "/")
    assert status == 200 and b'href="/slide/s1?run=r1"' in body and b"/heatmaps/r1/index.html" in body
    status, body, _ = get(url, "/slide/s1")
    assert status == 200 and b"/static/openseadragon/openseadragon.min.js" in body and b"https://" not in body
    status, body, _ = get(url, "/static/openseadragon/openseadragon.min.js")
    assert status == 200 and body.startswith(f"//! openseadragon {OSD_VERSION}\n".encode())
    info = json.loads(get(url, "/api/slide/s1.json")[1])
    assert info["truth"] == [[[300.0, 300.0], [700.0, 300.0], [700.0, 650.0], [300.0, 650.0]]]
    assert get(url, f"/heatmaps/{RUN}/index.html")[0] == 200
    assert get(url, f"/heatmaps/{RUN}/s1/scores.csv")[0] == 200


@pytest.mark.parametrize("path", [
    "/heatmaps/../patches/s1.zarr/zarr.json", "/heatmaps/%2e%2e/patches/s1.zarr/zarr.json",
    "/heatmaps/%2E%2E%2Fpatches%2Fs1.zarr%2Fzarr.json", "/heatmaps/..%2f..%2f..%2fetc%2fpasswd",
    "/heatmaps//etc/passwd", "/heatmaps/%2fetc%2fpasswd", "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/app.py", "/static/..%5c..%5capp.py", "/heatmaps/r1/%252e%252e/%252e%252e/patches",
    "/slide/..%2f..%2fetc%2fpasswd", "/slide/%2e%2e", "/tiles/%2e%2e/0/0_0.jpeg", "/api/slide/..%2fs1.json",
    "/overlay/%2e%2e/s1/0/0_0.png", "/overlay/r1/%2fetc%2fpasswd/0/0_0.png", "//etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
])
def test_urls_cannot_leave_the_job_folder(server, path):
    url, _ = server
    status, body, _ = get(url, path)
    assert status in (400, 404), (path, status)
    assert b"root:" not in body and b'"zarr_format"' not in body and b"create_app" not in body


def test_damaged_slide_gives_an_error_page_and_the_server_keeps_serving(server):
    url, _ = server
    status, body, ctype = get(url, "/slide/broken")
    assert status == 500 and ctype.startswith("text/html")
    assert b"Cannot open slide broken" in body and b"broken.tiff" in body
    status, body, _ = get(url, "/tiles/broken/5/0_0.jpeg")
    assert status == 500 and b"broken.tiff" in body
    assert get(url, "/slide/nope")[0] == 404
    assert get(url, "/tiles/s1/99/0_0.jpeg")[0] == 400  # outside the pyramid
    assert get(url, "/tiles/s1/3/50_50.jpeg")[0] == 400
    assert get(url, "/slide/s1?run=nope")[0] == 404
    assert get(url, "/slide/s1")[0] == 200  # still serving


def test_tile_cache_is_bounded(server):
    url, app = server
    state = app.state.viewer
    info = json.loads(get(url, "/api/slide/s1.json")[1])
    top = info["max_level"]
    for level in range(top - 2, top + 1):
        cols, rows = -(-info["width"] // (254 * 2 ** (top - level))), -(-info["height"] // (254 * 2 ** (top - level)))
        for c in range(cols):
            for r in range(rows):
                assert get(url, f"/tiles/s1/{level}/{c}_{r}.jpeg")[0] == 200
                assert get(url, f"/overlay/{RUN}/s1/{level}/{c}_{r}.png")[0] == 200
    assert 0 < state.cache.nbytes <= state.cache.max_bytes == 4 * 2**20
    hits = state.cache.hits
    get(url, f"/tiles/s1/{top}/0_0.jpeg")
    get(url, f"/tiles/s1/{top}/0_0.jpeg")
    assert state.cache.hits >= hits + 1


def test_caches_drop_least_recent():
    c = ByteLRU(10)
    c.put("a", b"12345")
    c.put("b", b"12345")
    assert c.get("a") == b"12345"  # a is now the most recent
    c.put("c", b"123")
    assert c.get("b") is None and c.get("a") is not None and c.nbytes == 8
    c.put("big", b"x" * 11)  # larger than the cache: not kept
    assert c.get("big") is None and c.nbytes == 8
    h: HandleLRU[int] = HandleLRU(2)
    opened = []
    for k in ("x", "y", "x", "z", "y"):
        h.get_or_open(k, lambda k=k: opened.append(k) or len(opened))
    assert opened == ["x", "y", "z", "y"] and len(h) == 2


def test_bad_job_and_run_are_one_line_errors(viewer_job, tmp_path):
    with pytest.raises(ViewerError, match="no heatmaps of run 'zz'.*runs with heatmaps: r1"):
        create_app(viewer_job, "zz")
    with pytest.raises(ViewerError, match="job folder not found"):
        create_app(tmp_path / "nojob")
    with pytest.raises(ViewerError, match="no complete patch stores"):
        create_app(tmp_path)


def test_cli_binds_localhost_unless_asked(viewer_job, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr("wsi_mil.viewer.server.serve", lambda app, host, port: seen.append((host, port, app)))
    assert main(["view", str(viewer_job), "--port", "0"]) == 0
    assert main(["view", str(viewer_job), "--run", RUN, "--host", "0.0.0.0", "--port", "9999"]) == 0
    assert [(h, p) for h, p, _ in seen] == [("127.0.0.1", 0), ("0.0.0.0", 9999)]
    assert seen[0][2].state.viewer.run == RUN  # the job's only run is shown by default
    out = capsys.readouterr().out
    assert "http://127.0.0.1:0/" in out and "other machines can reach" in out
    assert main(["view", str(viewer_job), "--run", "zz"]) == 2
    assert main(["view", str(viewer_job), "--cache-mb", "0"]) == 2


def test_cell_colours_are_distinct():
    assert len({cell_colour(c, r) for c in range(COLS) for r in range(H0 // CELL)}) == COLS * (H0 // CELL)


def test_score_layer_tiles_equal_score_grid_lookup():
    """Overlay tiles show, at each pixel's level-0 centre, the colour of ScoreGrid.lookup (gaps, offsets, scales)."""
    from wsi_mil.viewer.deepzoom import TileInfo
    from wsi_mil.viewer.layer import ScoreLayer

    rng = np.random.default_rng(0)
    ys, xs = np.meshgrid(np.arange(40), np.arange(3, 50), indexing="ij")
    coords = (np.stack([xs.ravel(), ys.ravel()], 1) * 224 + 7).astype(np.int64)
    coords = coords[rng.random(len(coords)) < 0.7]  # holes in the grid
    layer = ScoreLayer(coords, rng.normal(size=len(coords)).astype(np.float32), np.zeros(len(coords), np.int8),
                       224.0, 224.0, "b")
    seen = []
    for x0, y0, scale in ((0, 0, 1.0), (1000, 500, 4.0), (100, -50, 32.0), (11000, 9000, 0.5), (2800, 1200, 1.0)):
        rgba = layer.tile_rgba(TileInfo((0, 0), 0, (1, 1), (255, 200), (x0, y0), scale))
        x = (x0 + np.arange(255) + 0.5) * scale
        y = (y0 + np.arange(200) + 0.5) * scale
        gx, gy = np.broadcast_arrays(x[None, :], y[:, None])
        ref = layer.grid.lookup(gx, gy)
        inside = np.isfinite(ref)
        seen.append((inside.mean(), np.isnan(ref).any()))
        np.testing.assert_array_equal(rgba[..., 3], np.where(inside, 255, 0))
        np.testing.assert_array_equal(rgba[inside][:, :3], layer.colours(ref[inside]))
    assert seen[0][0] == 0 and all(0 < f < 1 and gaps for f, gaps in seen[1:4])  # off the grid; tiles and holes
