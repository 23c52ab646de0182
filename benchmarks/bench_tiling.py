"""Tile-stage benchmark: our `tile` stage against a CLAM-style per-tile reader, in one run.

Prints, on the same machine and the same tiles:
1. tiles/s of our tile stage (tissue detection, resampling, encoding, writing included) vs a
   baseline that reads every tile with OpenSlide ``read_region`` at level 0 and resizes it one by
   one (CLAM's patch reader), both in one process: at the slide's native scale (0.5 mpp slide
   tiled at 0.5 mpp; target ratio >= 0.7) and for a 40x slide (0.25 mpp) tiled at 0.5 mpp
   (target >= 1.5);
2. decode throughput of our patch store (tiles/s per core) vs OpenSlide ``read_region`` per
   tile (target >= 5x), and bytes per tile, for each codec (JPEG 4:4:4 / 4:2:0, lossless zstd);
3. peak memory of the tile stage for two slide sizes (target < 1.5 GB, flat in slide size).

Usage: python benchmarks/bench_tiling.py [--size 50000] [--cache bench_output] [--quick]
Synthetic slides are generated once (textured from real tissue) and reused from --cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CACHE, machine, report, run_isolated, timed  # noqa: E402


def synthetic_slide(cache: Path, name: str, width: int, height: int, mpp: float) -> Path:
    """A pyramidal JPEG TIFF from wsi_mil.synth (cached)."""
    from wsi_mil.synth import make_slide

    path = cache / f"{name}.tiff"
    if not path.exists():
        t = time.perf_counter()
        make_slide(path, width, height, mpp=mpp, seed=7, positive=True)
        print(f"generated {path.name} ({width}x{height} @ {mpp} mpp) in {time.perf_counter() - t:.0f} s")
    return path


def tile_stage(slide: Path, job: Path, codec: str = "jpeg", subsampling: str = "420") -> tuple[float, float, int]:
    """(wall s, cpu s, n tiles) of our tile stage on one slide, in this process."""
    import shutil

    from wsi_mil.tiling.config import TilingConfig
    from wsi_mil.tiling.stage import run_tile

    shutil.rmtree(job, ignore_errors=True)
    cfg = TilingConfig(codec=codec, jpeg_subsampling=subsampling)
    wall, cpu, rep = timed(lambda: run_tile([slide], job, cfg, workers=0, progress=False))
    st = rep.statuses[0]
    if st.status != "done":
        raise RuntimeError(st.reason)
    return wall, cpu, st.n_tiles


def clam_style(slide: Path, coords: np.ndarray, size0: float, tile: int = 224) -> tuple[float, float]:
    """(wall s, cpu s): read_region at level 0 + per-tile resize, like CLAM's Whole_Slide_Bag_FP."""
    import openslide

    osr = openslide.OpenSlide(str(slide))
    n0 = int(round(size0))

    def run() -> None:
        for x, y in coords:
            img = osr.read_region((int(x), int(y)), 0, (n0, n0)).convert("RGB")
            if n0 != tile:
                img = img.resize((tile, tile))
            np.asarray(img)

    wall, cpu, _ = timed(run)
    osr.close()
    return wall, cpu


def decode_store(store_path: Path) -> tuple[float, float, int, float]:
    """(wall s, cpu s, tiles, bytes per tile) to decode every tile of a store, one thread."""
    import zarr

    from wsi_mil.stores.common import path_size
    from wsi_mil.stores.patches import open_patch_store

    zarr.config.set({"threading.max_workers": 1})
    store = open_patch_store(store_path)

    def run() -> None:
        for a, b in store.chunk_ranges():
            store.read_tiles(a, b)

    wall, cpu, _ = timed(run)
    return wall, cpu, store.n_tiles, path_size(store_path) / max(store.n_tiles, 1)


def read_region_rate(slide: Path, coords: np.ndarray, n: int = 2000) -> float:
    """tiles/s of a bare OpenSlide read_region(224 px, level 0) per tile, fresh handle."""
    import openslide

    osr = openslide.OpenSlide(str(slide))
    sel = coords[:: max(1, len(coords) // n)][:n]
    t = time.process_time()
    for x, y in sel:
        osr.read_region((int(x), int(y)), 0, (224, 224))
    dt = time.process_time() - t
    osr.close()
    return len(sel) / dt


def peak_memory(slide: Path, job: Path) -> dict:
    code = (
        "from wsi_mil.tiling.config import TilingConfig\nfrom wsi_mil.tiling.stage import run_tile\n"
        f"rep = run_tile([{str(slide)!r}], {str(job)!r}, TilingConfig(), workers=0, overwrite=True, progress=False)\n"
        "RESULT = {'n_tiles': rep.statuses[0].n_tiles, 'status': rep.statuses[0].status}\n"
    )
    return run_isolated(code, env={"OMP_NUM_THREADS": "1"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=50_000, help="level-0 side of the throughput slides (px)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--quick", action="store_true", help="small slides (10k px) for a smoke run")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    size = 10_000 if args.quick else args.size
    print(f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    native = synthetic_slide(cache, f"native_{size}", size, size, 0.5)
    forty = synthetic_slide(cache, f"40x_{size}", size, size, 0.25)

    from wsi_mil.stores.patches import open_patch_store

    rows = []
    results = {}
    for label, slide in (("native 0.5 mpp -> 0.5 mpp", native), ("40x 0.25 mpp -> 0.5 mpp", forty)):
        job = cache / f"job_{slide.stem}"
        wall, cpu, n = tile_stage(slide, job)
        store = open_patch_store(job / "patches" / f"{slide.stem}.zarr")
        bw, bc = clam_style(slide, store.coords, store.tile_size_level0)
        ratio = (n / wall) / (n / bw)
        results[label] = ratio
        rows.append((label, f"ours {n / wall:7.0f} tiles/s ({n} tiles, read level {store.attrs['read_level']}) | "
                            f"CLAM-style {n / bw:7.0f} tiles/s | ratio {ratio:.2f} (wall), {bc / cpu:.2f} (cpu)"))
    report("tile stage throughput, one process each", rows)

    job = cache / f"job_{native.stem}"
    coords = open_patch_store(job / "patches" / f"{native.stem}.zarr").coords
    rr = read_region_rate(native, coords)
    rows = [("OpenSlide read_region 224 px", f"{rr:7.0f} tiles/s per core")]
    for codec, sub in (("jpeg", "444"), ("jpeg", "420"), ("zstd", "444")):
        cjob = cache / f"job_codec_{codec}{sub}"
        tile_stage(native, cjob, codec, sub)
        wall, cpu, n, bpt = decode_store(cjob / "patches" / f"{native.stem}.zarr")
        name = f"store {codec}" + (f" {sub} q90" if codec == "jpeg" else " (lossless)")
        rows.append((name, f"{n / cpu:7.0f} tiles/s per core ({n / wall:.0f} wall) | {bpt / 1024:5.1f} KiB/tile | "
                           f"{(n / cpu) / rr:.1f}x read_region"))
    report("decode throughput (one thread)", rows)

    small = synthetic_slide(cache, "mem_25k", 25_000, 25_000 if not args.quick else 5_000, 0.5)
    large = synthetic_slide(cache, "mem_100k", 100_000 if not args.quick else 20_000, 20_000 if not args.quick else 5_000, 0.5)
    rows = []
    for slide in (small, large):
        m = peak_memory(slide, cache / f"job_mem_{slide.stem}")
        from wsi_mil.slide import open_slide

        with open_slide(slide) as s:
            w, h = s.dimensions
        rows.append((f"{w} x {h} px", f"peak RSS {m['peak_rss_mb']:.0f} MiB, {m['n_tiles']} tiles"))
    report("tile stage peak memory (fresh process)", rows)


if __name__ == "__main__":
    main()
