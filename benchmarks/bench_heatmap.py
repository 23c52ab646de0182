"""Heatmap benchmark: all five per-slide outputs of a 150,000 x 100,000 px slide, against a naive
renderer measured in the same run.

Ours (``wsi_mil.heatmaps.render.render_slide`` + the stage's thumbnail reader): a tile-resolution
score grid, overlay.png over a thumbnail read from the slide's pyramid, streaming GeoJSON,
OME-TIFF written tile by tile, montage, scores.csv. Targets: < 10 s and < 2 GB peak RSS per slide
on one core.

Naive baseline (what a straightforward script does): paint every tile into a level-0 float32
score image, build the pyramid by decimating full arrays and write them with tifffile, draw the
overlay with one matplotlib Rectangle per tile, build the GeoJSON as a list of dicts and
``json.dump`` it, write the CSV row by row. It cannot run at full size (the level-0 score image
alone is 60 GB), so it runs on a slide ``--naive-scale`` times smaller in each dimension and is
extrapolated: image work x scale^2 (pixels), per-tile work x scale^2 (tiles), memory of the
level-0 image x scale^2.

Each measurement runs in a fresh interpreter pinned to one core (OMP_NUM_THREADS=1) and reports
its own peak RSS.

Usage: python benchmarks/bench_heatmap.py [--width 150000 --height 100000] [--tile 224]
       [--naive-scale 10] [--cache bench_output] [--keep]
The synthetic pyramidal slide (glass with a few tissue blobs, ``wsi_mil.synth.writer``) is
written once to --cache and reused.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import DEFAULT_CACHE, machine, report, run_isolated  # noqa: E402

MPP = 0.25
BLOBS = ((0.30, 0.40, 0.05), (0.65, 0.55, 0.06), (0.45, 0.75, 0.04))  # (x, y, radius) as shares of width


def write_bench_slide(path: Path, width: int, height: int) -> Path:
    """A pyramidal JPEG TIFF: glass with a few pink blobs (glass tiles are encoded once)."""
    from wsi_mil.synth.writer import pyramid_levels, write_pyramidal_tiff

    if path.is_file():
        return path
    levels = pyramid_levels(width, height, 2, min_size=1024)
    blobs = [(bx * width, by * height, r * width) for bx, by, r in BLOBS]

    def render(x: int, y: int, w: int, h: int):  # level-0 tile; the writer box-reduces the levels
        if not any(x + w > cx - r and x < cx + r and y + h > cy - r and y < cy + r for cx, cy, r in blobs):
            return None
        yy, xx = np.mgrid[y:y + h, x:x + w].astype(np.float64)
        inside = np.zeros((h, w), bool)
        for cx, cy, r in blobs:
            inside |= (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        if not inside.any():
            return None
        img = np.full((h, w, 3), 255, np.uint8)
        img[inside] = (205, 130, 190)
        return img

    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramidal_tiff(path, levels, MPP, render, tile_size=512)
    return path


def synthetic_scores(width: int, height: int, tile0: float, seed: int = 0):
    """Tiles on the whole slide grid with a smooth score field + noise; WELDON-like selection.

    Returns coords (N, 2) int64, tile_scores (N, 2) float32, selected (N, 2) int8, tissue mask
    (h, w) uint8 at downsample 64.
    """
    cols, rows = int(width // tile0), int(height // tile0)
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    coords = np.stack([np.round(xs.ravel() * tile0), np.round(ys.ravel() * tile0)], 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    cx, cy = coords[:, 0] / width, coords[:, 1] / height
    s = (3 * np.exp(-((cx - 0.65) ** 2 + (cy - 0.55) ** 2) / 0.01) - 1 + 0.3 * rng.normal(size=len(coords)))
    s = s.astype(np.float32)
    sel = np.zeros(len(coords), np.int8)
    order = np.argsort(s)
    sel[order[-10:]] = 1
    sel[order[:10]] = -1
    ds = 64.0
    mh, mw = math.ceil(height / ds), math.ceil(width / ds)
    my, mx = np.mgrid[0:mh, 0:mw].astype(np.float64) * ds
    mask = np.zeros((mh, mw), np.uint8)
    for bx, by, r in BLOBS:
        mask[(mx - bx * width) ** 2 + (my - by * height) ** 2 < (r * width) ** 2] = 1
    return (coords, np.stack([-s, s], 1), np.stack([np.zeros_like(sel), sel], 1), mask, ds)


def run_ours(slide: str, out: str, width: int, height: int, tile0: float) -> dict:
    """Our per-slide work: thumbnail from the slide + all five outputs. Timed without input synthesis."""
    from wsi_mil.heatmaps import render as R
    from wsi_mil.heatmaps.stage import read_thumbnail

    coords, scores, selected, mask, ds = synthetic_scores(width, height, tile0)
    tiles = np.random.default_rng(1).integers(0, 255, (16, 224, 224, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    c0 = time.process_time()
    thumb = read_thumbnail(slide, MPP, 2048)
    t_thumb = time.perf_counter() - t0
    a = R.SlideArrays("bench", coords, scores, selected, ["normal", "tumor"], width, height, MPP, tile0,
                      thumbnail=thumb, tissue_mask=mask, mask_downsample=ds, probs=np.array([0.1, 0.9]),
                      label="tumor", read_tiles=lambda idx: tiles[: len(idx)])
    timings = {}
    for name in ("render_overlay_png", "write_tiles_geojson", "write_score_ometiff", "render_montage_png",
                 "write_scores_csv"):
        fn = getattr(R, name)

        def wrap(*args, _fn=fn, _name=name, **kw):
            s = time.perf_counter()
            r = _fn(*args, **kw)
            timings[_name] = time.perf_counter() - s
            return r

        setattr(R, name, wrap)
    R.render_slide(out, a, 1)  # looks the five writers up in R: the timed wrappers
    wall = time.perf_counter() - t0
    sizes = {p.name: p.stat().st_size for p in Path(out).iterdir()}
    return {"wall_s": wall, "cpu_s": time.process_time() - c0, "thumbnail_s": t_thumb, "parts_s": timings,
            "n_tiles": int(len(coords)), "bytes": sizes}


def run_naive(out: str, width: int, height: int, tile0: float) -> dict:
    """The naive renderer on a (smaller) slide: level-0 score image, per-tile patches, dict GeoJSON."""
    import csv

    import matplotlib
    import tifffile
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    coords, scores, selected, mask, ds = synthetic_scores(width, height, tile0)
    s = scores[:, 1]
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    t = {}
    t0 = time.perf_counter()
    c0 = time.process_time()
    # 1. level-0 score image + pyramid from full arrays
    s0 = time.perf_counter()
    img = np.full((height, width), np.nan, np.float32)
    size = int(round(tile0))
    for (x, y), v in zip(coords, s):
        img[y:y + size, x:x + size] = v
    with tifffile.TiffWriter(out_p / "naive.ome.tif", bigtiff=True, ome=True) as tif:
        levels = [img]
        while max(levels[-1].shape) > 256:
            levels.append(levels[-1][::2, ::2].copy())
        tif.write(levels[0], tile=(256, 256), compression="zlib", subifds=len(levels) - 1,
                  metadata={"axes": "YX", "PhysicalSizeX": MPP, "PhysicalSizeY": MPP})
        for lv in levels[1:]:
            tif.write(lv, tile=(256, 256), compression="zlib", subfiletype=1)
    del img, levels
    t["image_s"] = time.perf_counter() - s0
    # 2. overlay: one patch per tile
    s0 = time.perf_counter()
    fig = Figure(figsize=(12, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    norm = matplotlib.colors.Normalize(float(s.min()), float(s.max()))
    cmap = matplotlib.colormaps["coolwarm"]
    for (x, y), v in zip(coords, s):
        ax.add_patch(Rectangle((x, y), tile0, tile0, facecolor=cmap(norm(v)), alpha=0.5, edgecolor="none"))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    fig.savefig(out_p / "naive.png")
    t["overlay_s"] = time.perf_counter() - s0
    # 3. GeoJSON as dicts
    s0 = time.perf_counter()
    feats = []
    for i, ((x, y), v) in enumerate(zip(coords.tolist(), s.tolist())):
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[
            [x, y], [x + tile0, y], [x + tile0, y + tile0], [x, y + tile0], [x, y]]]},
            "properties": {"objectType": "tile", "classification": {"name": "tumor", "color": [200, 0, 0]},
                           "measurements": {"score": v, "selected": int(selected[i, 1]), "tile id": i}}})
    with open(out_p / "naive.geojson", "w") as f:
        json.dump({"type": "FeatureCollection", "features": feats}, f)
    del feats
    t["geojson_s"] = time.perf_counter() - s0
    # 4. CSV row by row
    s0 = time.perf_counter()
    with open(out_p / "naive.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tile_id", "x", "y", "score_normal", "score_tumor"])
        for i in range(len(coords)):
            w.writerow([i, int(coords[i, 0]), int(coords[i, 1]), float(scores[i, 0]), float(scores[i, 1])])
    t["csv_s"] = time.perf_counter() - s0
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "parts_s": t,
            "n_tiles": int(len(coords))}


def write_bench_features(path: Path, run_dir: Path, n: int, dim: int) -> None:
    """A float16 feature file of ``n`` tiles x ``dim`` and a WELDON run that reads it (scoring inputs)."""
    import torch

    from wsi_mil.mil.modelrun import save_model_run
    from wsi_mil.mil.registry import create_head
    from wsi_mil.stores.features import write_feature_file

    if not path.is_file():
        rng = np.random.default_rng(0)
        feats = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
        coords = np.zeros((n, 2), np.int64)
        write_feature_file(path, feats, coords, {"encoder_id": "bench", "slide_id": "bench"})
        del feats
    if not run_dir.is_dir():
        torch.manual_seed(0)
        head = create_head("weldon", dim, 2, k_top=10, k_bottom=10)
        save_model_run(run_dir, head, {"head": "weldon", "head_options": {"k_top": 10, "k_bottom": 10},
                                       "class_names": ["normal", "tumor"], "encoder_id": "bench",
                                       "embed_dim": dim}, {})


def run_scoring(features: str, run_dir: str) -> dict:
    """The stage's scoring step for one slide: read the whole feature file, ``predict_bag``."""
    from wsi_mil.mil import load_model_run
    from wsi_mil.stores.features import read_feature_file

    run = load_model_run(run_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    feats = read_feature_file(Path(features), run.encoder_id, run.embed_dim).features  # float32 via HDF5
    pred = run.predict_bag(feats, overwrite_input=True)  # as the stage: no second copy of the bag
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "n_tiles": int(pred.tile_scores.shape[0]), "dim": int(feats.shape[1])}


def run_stage_path(features: str, run_dir: str, slide: str, out: str, width: int, height: int, tile0: float) -> dict:
    """Scoring then drawing in one process, as the stage does for one slide (whole-slide peak RSS)."""
    scoring = run_scoring(features, run_dir)
    drawing = run_ours(slide, out, width, height, tile0)
    return {"scoring": scoring, "drawing": drawing, "cpu_s": scoring["cpu_s"] + drawing["cpu_s"],
            "wall_s": scoring["wall_s"] + drawing["wall_s"]}


def isolated(call: str) -> dict:
    code = (
        "import os, sys\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        f"sys.path.insert(0, {str(HERE)!r}); sys.path.insert(0, {str(HERE.parent)!r})\n"
        "import bench_heatmap as B\n"
        f"RESULT = B.{call}\n"
    )
    return run_isolated(code, env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=150_000)
    ap.add_argument("--height", type=int, default=100_000)
    ap.add_argument("--tile", type=float, default=224.0, help="tile side in level-0 px (224 -> ~300k tiles)")
    ap.add_argument("--naive-scale", type=int, default=10, help="the baseline runs on a slide this many times smaller per side")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--keep", action="store_true", help="keep the outputs in --cache")
    ap.add_argument("--features-dim", type=int, default=384,
                    help="also time reading a float16 feature file of that width + predict_bag (0: skip)")
    args = ap.parse_args()

    cache = args.cache / "heatmap"
    slide = cache / f"bench_{args.width}x{args.height}.tiff"
    t0 = time.perf_counter()
    write_bench_slide(slide, args.width, args.height)
    print(f"slide {slide} ({slide.stat().st_size / 2**20:.0f} MiB) ready in {time.perf_counter() - t0:.1f} s")
    out = cache / "ours"
    shutil.rmtree(out, ignore_errors=True)
    ours = isolated(f"run_ours({str(slide)!r}, {str(out)!r}, {args.width}, {args.height}, {args.tile})")
    k = args.naive_scale
    nw, nh = args.width // k, args.height // k
    naive = isolated(f"run_naive({str(cache / 'naive')!r}, {nw}, {nh}, {args.tile})")
    factor = (args.width * args.height) / (nw * nh)
    naive_full_cpu = naive["cpu_s"] * factor
    naive_image_gb = args.width * args.height * 4 / 1e9
    report(f"heatmap: {args.width} x {args.height} px slide, {ours['n_tiles']} tiles, one core", [
        ("machine", machine()),
        ("ours: cpu / wall", f"{ours['cpu_s']:.2f} s / {ours['wall_s']:.2f} s (target < 10 s; wall includes "
                             "waiting for a shared core)"),
        ("ours: thumbnail read (wall)", f"{ours['thumbnail_s']:.2f} s"),
        *[(f"ours: {k2} (wall)", f"{v:.2f} s") for k2, v in ours["parts_s"].items()],
        ("ours: peak RSS", f"{ours['peak_rss_mb']:.0f} MiB (target < 2048)"),
        ("ours: output sizes", ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in sorted(ours["bytes"].items()))),
        (f"naive at 1/{k} per side", f"cpu {naive['cpu_s']:.2f} s (wall {naive['wall_s']:.2f} s), {naive['n_tiles']} "
                                      f"tiles, peak RSS {naive['peak_rss_mb']:.0f} MiB; parts (wall) "
                                      + ", ".join(f"{a} {b:.2f}" for a, b in naive["parts_s"].items())),
        (f"naive extrapolated x{factor:.0f}", f"cpu {naive_full_cpu:.0f} s; level-0 score image alone "
                                              f"{naive_image_gb:.0f} GB"),
        ("speed-up (naive / ours, cpu)", f"{naive_full_cpu / ours['cpu_s']:.0f}x"),
        ("memory ratio (naive / ours)", f"{naive_image_gb * 1e9 / 2**20 / ours['peak_rss_mb']:.0f}x "
                                        "(naive level-0 image vs our whole-process peak RSS)"),
    ])
    scoring = None
    if args.features_dim:
        fpath = cache / f"bench_{ours['n_tiles']}x{args.features_dim}.h5"
        rdir = cache / f"run_{args.features_dim}"
        write_bench_features(fpath, rdir, ours["n_tiles"], args.features_dim)
        shutil.rmtree(out, ignore_errors=True)
        scoring = isolated(f"run_stage_path({str(fpath)!r}, {str(rdir)!r}, {str(slide)!r}, {str(out)!r}, "
                           f"{args.width}, {args.height}, {args.tile})")
        sc = scoring["scoring"]
        report("whole per-slide path: read features + predict_bag, then draw (one process)", [
            ("read features + predict_bag", f"cpu {sc['cpu_s']:.2f} s (wall {sc['wall_s']:.2f} s), "
                                            f"{sc['n_tiles']} tiles x {sc['dim']} (float16 file, WELDON)"),
            ("scoring + drawing", f"cpu {scoring['cpu_s']:.2f} s (wall {scoring['wall_s']:.2f} s)"),
            ("peak RSS", f"{scoring['peak_rss_mb']:.0f} MiB (torch import alone is ~680 MiB here; target < 2048)"),
        ])
    print(json.dumps({"ours": ours, "naive": naive, "naive_extrapolated_cpu_s": naive_full_cpu,
                      "scoring": scoring}))
    if not args.keep:
        shutil.rmtree(cache / "ours", ignore_errors=True)
        shutil.rmtree(cache / "naive", ignore_errors=True)


if __name__ == "__main__":
    main()
