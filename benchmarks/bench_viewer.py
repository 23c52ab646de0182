"""Viewer benchmark: Deep Zoom tile latency over a scripted zoom/pan sequence, against OpenSlide's
``openslide.deepzoom.DeepZoomGenerator`` serving the same tiles without the score overlay, in one run.

The sequence is what OpenSeadragon asks for in a 1280 x 800 px window: the whole slide, then zooming
in by factors of two on a point of the tissue down to full resolution, then panning at full
resolution by half a window in four directions and back. Each view's visible tiles are listed once.

Measured per tile, cold (no cache), alternating the two servers tile by tile so that load on the
machine hits both alike:

- baseline: ``DeepZoomGenerator(OpenSlide(path)).get_tile`` + JPEG encoding (quality 80);
- ours: ``wsi_mil.viewer.deepzoom.DeepZoom`` over ``wsi_mil.slide.open_slide`` + the same JPEG encoding;
- ours, overlay: the score tile at the same address (RGBA PNG), from a 256 px score grid;
- ours over HTTP: the whole sequence (image + overlay tile per address) requested from the running
  viewer (uvicorn, keep-alive connection), its tile cache on, sequence played twice (zoom out again).

Prints median and p95 of each, the ratios ours / baseline, and peak RSS of this process.

Usage: python benchmarks/bench_viewer.py [--slide PATH] [--mpp 0.5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import machine, peak_rss_mb, report  # noqa: E402

DEFAULT_SLIDE = HERE.parent.parent / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
WINDOW = (1280, 800)


def view_tiles(dz, level: int, centre0: tuple[float, float]) -> list[tuple[int, int, int]]:
    """Tiles of Deep Zoom ``level`` visible in a WINDOW centred on level-0 ``centre0``."""
    s = dz.scale(level)
    cx, cy = centre0[0] / s, centre0[1] / s
    cols, rows = dz.level_tiles[level]
    t = dz.tile_size
    c0, c1 = max(0, int((cx - WINDOW[0] / 2) // t)), min(cols - 1, int((cx + WINDOW[0] / 2) // t))
    r0, r1 = max(0, int((cy - WINDOW[1] / 2) // t)), min(rows - 1, int((cy + WINDOW[1] / 2) // t))
    return [(level, c, r) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def sequence(dz) -> list[tuple[int, int, int]]:
    """The scripted zoom/pan sequence: unique tile addresses in request order."""
    top = dz.level_count - 1
    fit = max(0, top - math.ceil(math.log2(max(dz.width / WINDOW[0], dz.height / WINDOW[1], 1))))
    centre = (dz.width * 0.45, dz.height * 0.55)
    views = [(lv, centre) for lv in range(fit, top + 1)]
    step = (WINDOW[0] / 2, WINDOW[1] / 2)
    for dx, dy in ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (0, 0)):
        views.append((top, (centre[0] + dx * step[0], centre[1] + dy * step[1])))
    seen: dict[tuple[int, int, int], None] = {}
    for lv, c in views:
        for a in view_tiles(dz, lv, c):
            seen.setdefault(a, None)
    return list(seen)


def jpeg(img) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def stats(ms: list[float]) -> tuple[float, float]:
    a = np.asarray(ms)
    return float(np.median(a)), float(np.percentile(a, 95))


def make_job(root: Path, slide: Path, mpp: float, w0: int, h0: int) -> Path:
    """A job folder with one patch store over the whole slide and a heatmap run of random scores."""
    from wsi_mil.heatmaps.render import SlideArrays, render_slide
    from wsi_mil.jobdir import heatmaps_dir, patch_store_path
    from wsi_mil.stores.patches import write_patch_store

    size = 256
    ys, xs = np.meshgrid(np.arange(h0 // size), np.arange(w0 // size), indexing="ij")
    coords = (np.stack([xs.ravel(), ys.ravel()], 1) * size).astype(np.int64)
    n = len(coords)
    attrs = dict(slide_id="s", slide_path=str(slide), mpp=mpp, mpp_source="override", level0_width=w0, level0_height=h0,
                 target_mpp=mpp * 4, tile_size=64, stride=64, tile_size_level0=float(size), stride_level0=float(size),
                 tile_size_um=64 * mpp * 4)
    job = root / "job"
    write_patch_store(patch_store_path(job, "s"), np.full((n, 64, 64, 3), 200, np.uint8), coords, np.ones(n, np.float32),
                      np.ones((h0 // 64, w0 // 64), np.uint8), 64.0, attrs, codec="zstd")
    s = np.random.default_rng(0).normal(size=n).astype(np.float32)
    arrays = SlideArrays("s", coords, np.stack([-s, s], 1), np.zeros((n, 2), np.int8), ["a", "b"], w0, h0, mpp,
                         float(size), float(size), probs=np.array([0.4, 0.6]))
    folder = heatmaps_dir(job, "bench") / "s"
    meta = render_slide(folder, arrays, 1)
    (folder / "slide.json").write_text(json.dumps(meta))  # as the heatmap stage writes it
    return job


def http_latency(job: Path, addrs: list[tuple[int, int, int]]) -> list[float]:
    from wsi_mil.viewer.app import create_app
    from wsi_mil.viewer.server import serve_in_thread

    app = create_app(job, "bench", cache_mb=128)
    out = []
    with serve_in_thread(app) as url:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for lv, c, r in addrs + addrs[::-1]:  # zoom in and pan, then back out: the way back is cached
            for path in (f"/tiles/s/{lv}/{c}_{r}.jpeg", f"/overlay/bench/s/{lv}/{c}_{r}.png"):
                t0 = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                out.append((time.perf_counter() - t0) * 1e3)
                if resp.status != 200:
                    raise RuntimeError(f"{path}: HTTP {resp.status}")
        conn.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    ap.add_argument("--mpp", type=float, default=0.5, help="level-0 µm/px (the TCGA file has no mpp metadata)")
    ap.add_argument("--repeat", type=int, default=3, help="times each tile is measured (cold each time)")
    args = ap.parse_args()

    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    from wsi_mil.slide import open_slide
    from wsi_mil.viewer.deepzoom import DeepZoom
    from wsi_mil.viewer.job import load_layer

    dz = DeepZoom(open_slide(args.slide, mpp=args.mpp))
    ref = DeepZoomGenerator(openslide.OpenSlide(str(args.slide)))
    addrs = sequence(dz)
    with tempfile.TemporaryDirectory() as tmp:
        job = make_job(Path(tmp), args.slide, args.mpp, dz.width, dz.height)
        layer = load_layer(job, "bench", "s")
        if layer is None:
            raise SystemExit(f"{job}: no score layer written")
        from wsi_mil.viewer.app import _encode

        base, ours, ovl = [], [], []
        for _ in range(args.repeat):
            for lv, c, r in addrs:
                t0 = time.perf_counter()
                jpeg(ref.get_tile(lv, (c, r)))
                t1 = time.perf_counter()
                jpeg(dz.tile(lv, c, r))
                t2 = time.perf_counter()
                _encode(layer.tile_rgba(dz.tile_info(lv, c, r)), "png")
                t3 = time.perf_counter()
                base.append((t1 - t0) * 1e3)
                ours.append((t2 - t1) * 1e3)
                ovl.append((t3 - t2) * 1e3)
        served = http_latency(job, addrs)
    (bm, bp), (om, op), (vm, vp), (hm, hp) = stats(base), stats(ours), stats(ovl), stats(served)
    report(f"viewer tiles: {args.slide.name} ({dz.width} x {dz.height} px, {dz.level_count} Deep Zoom levels), "
           f"{len(addrs)} tiles in the zoom/pan sequence, x{args.repeat}", [
               ("machine", machine()),
               ("DeepZoomGenerator + JPEG (baseline)", f"median {bm:.2f} ms, p95 {bp:.2f} ms"),
               ("ours: image tile + JPEG", f"median {om:.2f} ms, p95 {op:.2f} ms  (ratio to baseline: median "
                                           f"{om / bm:.2f}, p95 {op / bp:.2f})"),
               ("ours: score overlay tile (PNG)", f"median {vm:.2f} ms, p95 {vp:.2f} ms"),
               ("ours: image + overlay tile", f"median {om + vm:.2f} ms  (ratio to baseline {(om + vm) / bm:.2f})"),
               ("ours over HTTP, cache on (2x seq.)", f"median {hm:.2f} ms, p95 {hp:.2f} ms per request "
                                                      f"({len(served)} requests)"),
               ("peak RSS", f"{peak_rss_mb():.0f} MiB"),
           ])


if __name__ == "__main__":
    main()
