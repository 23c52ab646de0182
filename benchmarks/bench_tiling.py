"""Tile-stage benchmark: our `tile` stage against a CLAM-style per-tile reader and the codec limit.

For each slide side in ``--sizes`` (default 10k, 30k, 50k px), on the same machine and tiles:

1. tiles/s of our whole tile stage (tissue detection, grid, reading, resampling, encoding,
   writing) vs a CLAM-style baseline that reads every tile with OpenSlide ``read_region`` at
   level 0 and resizes it one by one, one thread: at native scale (0.5 mpp slide tiled at 0.5 mpp;
   target >= 1.5x), for a 40x slide with a 2x pyramid (0.25 mpp -> 0.5 mpp, read from its 0.5 mpp
   level; target >= 4x) and a 40x slide with a 4x pyramid like Aperio's (no 0.5 mpp level: level 0
   decoded at 1/2 in the DCT). Ours runs with 1 thread (the per-core ratio) and with
   ``--threads`` threads (wall), and with the OpenSlide reader (the previous path) for reference;
2. ours vs the decode + encode limit per core: imagecodecs decoding each source tile our tiles
   touch once, plus encoding the store's chunks, on the same tiles (target >= 0.8);
3. store decoding (one thread) vs OpenSlide ``read_region`` of 224 px tiles (target >= 5x);
4. peak memory of the whole stage in a fresh process (flat in slide size).

Usage: python benchmarks/bench_tiling.py [--sizes 10000,30000,50000] [--quick] [--threads N]
       [--cache bench_output]
``--quick``: 10k px only. Synthetic slides (textured from real tissue) are generated once into
--cache and reused. GPU path: ``--device cuda`` adds a run with ``WSI_MIL_TILE_DEVICE=cuda``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CACHE, machine, report, run_isolated, timed  # noqa: E402

ENV_KEYS = ("WSI_MIL_TILE_DECODER", "WSI_MIL_TILE_THREADS", "WSI_MIL_TILE_REDUCED", "WSI_MIL_TILE_DEVICE")


def synthetic_slide(cache: Path, name: str, size: int, mpp: float, level_downsample: int = 2) -> Path:
    """A pyramidal JPEG TIFF (512 px tiles) from wsi_mil.synth (cached)."""
    from wsi_mil.synth import make_slide

    path = cache / f"{name}_{size}.tiff"
    if not path.exists():
        t = time.perf_counter()
        make_slide(path, size, size, mpp=mpp, seed=7, positive=True, level_downsample=level_downsample)
        print(f"generated {path.name} ({size} px @ {mpp} mpp) in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def set_decode_env(**env: str) -> None:
    for k in ENV_KEYS:
        os.environ.pop(k, None)
    os.environ.update({f"WSI_MIL_TILE_{k.upper()}": v for k, v in env.items()})


def tile_stage(slide: Path, job: Path, **env: str) -> tuple[float, float, object]:
    """(wall s, cpu s, the store) of our whole tile stage on one slide, in this process."""
    from wsi_mil.stores.patches import open_patch_store
    from wsi_mil.tiling.config import TilingConfig
    from wsi_mil.tiling.stage import run_tile

    shutil.rmtree(job, ignore_errors=True)
    set_decode_env(**env)
    wall, cpu, rep = timed(lambda: run_tile([slide], job, TilingConfig(), workers=0, progress=False))
    set_decode_env()
    st = rep.statuses[0]
    if st.status != "done":
        raise RuntimeError(st.reason)
    return wall, cpu, open_patch_store(job / "patches" / f"{slide.stem}.zarr")


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


def codec_limit(slide: Path, store) -> dict:  # type: ignore[no-untyped-def]
    """CPU seconds to decode (once each) the source tiles the store's tiles touch, at the scale the
    stage decoded them, and to encode the store's chunks; and the tile path of the stage itself."""
    import imagecodecs

    from wsi_mil.slide import open_slide
    from wsi_mil.stores.codecs import encode_tile_chunk
    from wsi_mil.tiling.direct import DirectJpegLevel, find_jpeg_layout
    from wsi_mil.tiling.regions import tile_window
    from wsi_mil.tiling.stage import plan_reads

    attrs = store.attrs
    with open_slide(slide) as s:
        plan = plan_reads(s, attrs["target_mpp"], attrs["tile_size"])
        layout, why = find_jpeg_layout(s, plan.level)
    if layout is None:
        raise RuntimeError(why)
    scale = int(attrs.get("tile_decode_scale", 1))
    keys: set[tuple[int, int]] = set()
    tw, th = layout.tile_w // scale, layout.tile_h // scale
    for x, y in store.coords:
        w = tile_window(int(x), int(y), plan, scale)
        for r in range(max(w.y, 0) // th, (w.y + w.height - 1) // th + 1):
            for c in range(max(w.x, 0) // tw, (w.x + w.width - 1) // tw + 1):
                if c < layout.tiles_across and r < layout.tiles_down:
                    keys.add((c, r))
    level = DirectJpegLevel(layout, cache_bytes=0)
    blobs = [level.tile_bytes(c, r) for c, r in sorted(keys)]
    t = time.process_time()
    for b in blobs:
        if not b:
            continue
        if scale == 1:
            imagecodecs.jpeg8_decode(b, tables=layout.tables, colorspace=layout.colorspace, outcolorspace="RGB")
        else:
            _pil_scaled(level.jpeg_stream(b), tw, th)
    t_dec = time.process_time() - t
    level.close()
    k = store.attrs["tiles_per_chunk"]
    t_enc = 0.0
    for a, b in store.chunk_ranges():
        tiles = np.full((k, store.tile_size, store.tile_size, 3), 255, np.uint8)
        tiles[: b - a] = store.read_tiles(a, b)
        t = time.process_time()
        encode_tile_chunk(tiles, "jpeg", attrs["jpeg_quality"], attrs["jpeg_subsampling"])
        t_enc += time.process_time() - t
    return dict(source_tiles=len(blobs), decode_s=t_dec, encode_s=t_enc)


def _pil_scaled(data: bytes, w: int, h: int) -> None:
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (w, h))
    im.load()


def tile_path_cpu(slide: Path, store, cache: Path) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds of the stage's tile path alone (read, resample, encode, write), one thread."""
    from wsi_mil.slide import open_slide
    from wsi_mil.stores.patches import PatchStoreWriter
    from wsi_mil.tiling.config import TilingConfig
    from wsi_mil.tiling.readers import DecodeOptions
    from wsi_mil.tiling.stage import _write_tiles, plan_reads

    cfg = TilingConfig()
    out = cache / "tile_path_only.zarr"
    shutil.rmtree(out, ignore_errors=True)
    with open_slide(slide) as s:
        plan = plan_reads(s, cfg.target_mpp, cfg.tile_size)
        coords = store.coords
        with PatchStoreWriter(out, len(coords), cfg.tile_size, {}, cfg.codec, cfg.jpeg_quality,
                              cfg.tiles_per_chunk, cfg.chunks_per_shard, cfg.jpeg_subsampling) as w:
            _, cpu, _ = timed(lambda: _write_tiles(s, plan, coords, w, cfg, DecodeOptions(threads=1)))
            w.close(coords, store.tissue_fraction, *store.tissue_mask())
    shutil.rmtree(out, ignore_errors=True)
    return cpu


def decode_store(store) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """(wall s, cpu s, tiles) to decode every tile of a store, one thread."""
    import zarr

    zarr.config.set({"threading.max_workers": 1})

    def run() -> None:
        for a, b in store.chunk_ranges():
            store.read_tiles(a, b)

    wall, cpu, _ = timed(run)
    return wall, cpu, store.n_tiles


def read_region_rate(slide: Path, coords: np.ndarray, n: int = 2000) -> float:
    """tiles/s per core of a bare OpenSlide read_region(224 px, level 0) per tile, fresh handle."""
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


def bench_size(size: int, cache: Path, threads: int, device: str) -> list[str]:
    """Run every measurement for one slide side; returns the summary lines."""
    slides = {
        "native 0.5 -> 0.5 mpp": synthetic_slide(cache, "native", size, 0.5),
        "40x 0.25 -> 0.5 mpp (2x pyramid)": synthetic_slide(cache, "40x", size, 0.25),
        "40x 0.25 -> 0.5 mpp (4x pyramid)": synthetic_slide(cache, "40x4", size, 0.25, level_downsample=4),
    }
    rows: list[tuple[str, str]] = []
    lim_rows: list[tuple[str, str]] = []
    summary = []
    stores = {}
    for label, slide in slides.items():
        job = cache / f"job_{slide.stem}"
        w1, c1, store = tile_stage(slide, job, threads="1")
        wn, cn, _ = tile_stage(slide, job, threads=str(threads))
        wo, co, _ = tile_stage(slide, job, threads="1", decoder="openslide")
        if device == "cuda":
            wg, _, gstore = tile_stage(slide, job, threads=str(threads), device="cuda")
        store = tile_stage(slide, job, threads="1")[2]  # keep the default store for the checks below
        stores[label] = (slide, store)
        n = store.n_tiles
        bw, bc = clam_style(slide, store.coords, store.tile_size_level0)
        dec = store.attrs.get("tile_decoder", "?").split(" (")[0]
        rows.append((label, f"{n} tiles, level {store.attrs['read_level']}, {dec} | CLAM-style {n / bw:5.0f}/s | "
                            f"ours 1 thread {n / w1:5.0f}/s = {bw / w1:.2f}x (cpu {bc / c1:.2f}x) | "
                            f"{threads} threads {n / wn:5.0f}/s = {bw / wn:.2f}x | "
                            f"openslide reader 1 thread {bw / wo:.2f}x"))
        summary.append(f"{size} {label}: {bw / w1:.2f}x per core, {bw / wn:.2f}x wall ({threads} threads)")
        if device == "cuda":
            rows.append((f"  GPU ({gstore.attrs.get('tile_decoder')})", f"{n / wg:.0f} tiles/s wall"))
        lim = codec_limit(slide, store)
        cpu_tiles = tile_path_cpu(slide, store, cache)
        limit = lim["decode_s"] + lim["encode_s"]
        lim_rows.append((label, f"limit {n / limit:5.0f} tiles/s per core (decode {lim['source_tiles']} source tiles "
                                f"{lim['decode_s']:.1f} s + encode {lim['encode_s']:.1f} s) | ours tile path "
                                f"{n / cpu_tiles:5.0f}/s = {limit / cpu_tiles:.2f} of limit | whole stage "
                                f"{n / c1:5.0f}/s = {limit / c1:.2f}"))
        summary.append(f"{size} {label}: {limit / cpu_tiles:.2f} of the decode+encode limit (tile path), "
                       f"{limit / c1:.2f} (whole stage)")
    report(f"{size} px: tile stage throughput vs CLAM-style (wall, one process each)", rows)
    report(f"{size} px: ours vs the decode + encode limit per core (CPU time, one thread)", lim_rows)

    slide, store = stores["native 0.5 -> 0.5 mpp"]
    rr = read_region_rate(slide, store.coords)
    wall, cpu, n = decode_store(store)
    report(f"{size} px: store decode (one thread) vs read_region", [
        ("OpenSlide read_region 224 px", f"{rr:7.0f} tiles/s per core"),
        ("store jpeg 4:2:0 q90", f"{n / cpu:7.0f} tiles/s per core = {(n / cpu) / rr:.1f}x read_region")])
    summary.append(f"{size} store decode: {(n / cpu) / rr:.1f}x read_region")
    m = peak_memory(slide, cache / f"job_mem_{slide.stem}")
    report(f"{size} px: peak memory (fresh process, whole stage, default threads)",
           [(slide.name, f"peak RSS {m['peak_rss_mb']:.0f} MiB, {m['n_tiles']} tiles")])
    summary.append(f"{size} peak RSS {m['peak_rss_mb']:.0f} MiB")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,30000,50000", help="comma-separated slide sides (px)")
    ap.add_argument("--quick", action="store_true", help="10k px slides only")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads per slide for the wall run")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: also run the GPU path")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
          f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    summary: list[str] = []
    for size in sizes:
        summary += bench_size(size, args.cache, args.threads, args.device)
    print(f"\nload average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    report("summary", [(str(i), line) for i, line in enumerate(summary)])


if __name__ == "__main__":
    main()
