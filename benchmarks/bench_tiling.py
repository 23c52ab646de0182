"""Tile-stage benchmark: our `tile` stage against a CLAM-style per-tile reader and the codec limit.

For each slide side in ``--sizes`` (default 10k, 30k, 50k px), on the same machine and tiles:

1. tiles/s of our whole tile stage (tissue detection, grid, reading, resampling, encoding,
   writing) vs a CLAM-style baseline that reads every tile with OpenSlide ``read_region`` at
   level 0 and resizes it one by one, one thread: at native scale (0.5 mpp slide tiled at 0.5 mpp;
   target >= 1.5x), for a 40x slide with a 2x pyramid (0.25 mpp -> 0.5 mpp, read from its 0.5 mpp
   level; target >= 4x) and a 40x slide with a 4x pyramid like Aperio's (no 0.5 mpp level: level 0
   decoded at 1/2 in the DCT; target >= 4x). Ours runs with 1 thread (the per-core ratio, wall and
   CPU) and with ``--threads`` threads (wall); ``--reference`` adds the OpenSlide reader (the
   previous path);
2. ours vs the decode + encode limit per core, on the same tiles (target >= 0.8; short pairs of
   measurements are repeated and their medians compared, see ``REPEAT_S``): decoding each
   source tile our tiles touch once with imagecodecs (libjpeg-turbo; at the DCT scale the stage
   used, through the same TurboJPEG call, when it decodes reduced), plus encoding the store's
   chunks with imagecodecs; for reduced decoding also against imagecodecs at full size;
3. store decoding (one thread, chunk by chunk into a reused buffer as extraction's loader does)
   vs OpenSlide ``read_region`` of 224 px tiles, the grid's first 2,000 in order, turned into an RGB
   array as a loader must (target >= 5x; the bare RGBA read is shown beside it);
4. peak memory of the whole stage in a fresh process (flat in slide size).

Usage: python benchmarks/bench_tiling.py [--sizes 10000,30000,50000] [--quick] [--threads N]
       [--reference] [--device cuda] [--cache /tmp/wsi_mil_bench_tiling]
``--quick``: 10k px only. ``--gpu-only --device cuda``: only the GPU path against ours on the CPU
with ``--threads`` threads, per size (for a short GPU session). Synthetic slides (textured from real tissue) are generated once into
--cache and reused. GPU path: ``--device cuda`` adds a run with ``WSI_MIL_TILE_DEVICE=cuda``
(whole-stage tiles/s with nvJPEG decoding). The last table is the summary over all sizes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from wsi_mil.stores.patches import PatchStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, report, run_isolated, timed  # noqa: E402

A = TypeVar("A")
B = TypeVar("B")

DEFAULT_CACHE = Path("/tmp/wsi_mil_bench_tiling")  # slides of 30k-50k px: 0.1-0.7 GB each, kept between runs

ENV_KEYS = ("WSI_MIL_TILE_DECODER", "WSI_MIL_TILE_THREADS", "WSI_MIL_TILE_REDUCED", "WSI_MIL_TILE_DEVICE")
#: the ratios to the codec limit and to read_region compare CPU times of 0.1-0.4 s on the 10k px
#: slides, which vary by ~+-15 % from one sample to the next on a shared machine: such pairs are
#: measured again, alternately, until ~REPEAT_S CPU seconds (at most MAX_REPEATS), and each side's
#: median is used (one sample on the larger slides)
REPEAT_S = 4.0
MAX_REPEATS = 5


def repeats_for(seconds: float, least: int = 1) -> int:
    """How many times (``least`` at least) to measure a pair of measurements that took ``seconds`` CPU seconds."""
    return max(least, min(MAX_REPEATS, int(REPEAT_S / max(seconds, 1e-9))))


def measured_alternately(first: Callable[[], A], second: Callable[[], B],
                         cpu_seconds: Callable[[A, B], float], least: int = 1) -> tuple[list[A], list[B]]:
    """Both measurements taken once, then again alternately ``repeats_for(cpu_seconds(a, b), least) - 1`` times."""
    firsts, seconds = [first()], [second()]
    for _ in range(repeats_for(cpu_seconds(firsts[0], seconds[0]), least) - 1):
        firsts.append(first())
        seconds.append(second())
    return firsts, seconds


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


def tile_stage(slide: Path, job: Path, **env: str) -> tuple[float, float, PatchStore]:
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
    """CPU seconds to decode (once each) the source tiles the store's tiles touch, and to encode the
    store's chunks, one thread. ``decode_s``: at the DCT scale the stage decoded them (imagecodecs at
    full size, the issue's definition of the limit; the stage's TurboJPEG call when reduced);
    ``decode_full_s``: imagecodecs at full size; ``decode_stage_s``: the stage's own call (simplejpeg)
    at its scale."""
    import imagecodecs

    from wsi_mil.slide import open_slide
    from wsi_mil.stores.codecs import encode_tile_chunk
    from wsi_mil.tiling.direct import DirectJpegLevel, decode_scaled, find_jpeg_layout
    from wsi_mil.tiling.regions import read_windows
    from wsi_mil.tiling.stage import plan_reads

    attrs = store.attrs
    with open_slide(slide) as s:
        plan = plan_reads(s, attrs["target_mpp"], attrs["tile_size"])
        layout, why = find_jpeg_layout(s, plan.level)
    if layout is None:
        raise RuntimeError(why)
    scale = int(attrs.get("tile_decode_scale", 1))
    level = DirectJpegLevel(layout, cache_bytes=0)
    windows = read_windows(store.coords, plan, store.tile_size, scale)  # the windows the reader reads
    level.expect(windows, scale)  # the source tiles the windows touch, each counted once below
    uses = level._cache._plans[scale][0]  # noqa: SLF001 (the plan computed by the reader's own code)
    ids = np.flatnonzero(uses > 0)
    blobs = [level.tile_bytes(int(i % layout.tiles_across), int(i // layout.tiles_across)) for i in ids]
    blobs = [b for b in blobs if b]
    tw, th = layout.tile_w // scale, layout.tile_h // scale

    def full() -> None:
        for b in blobs:
            imagecodecs.jpeg8_decode(b, tables=layout.tables, colorspace=layout.colorspace, outcolorspace="RGB")

    def scaled() -> None:
        for b in blobs:
            decode_scaled(level.jpeg_stream(b), scale, tw, th)

    t_full = timed(full)[1]
    t_stage = timed(scaled)[1]
    t_dec = t_full if scale == 1 else t_stage
    level.close()
    k = store.attrs["tiles_per_chunk"]
    t_enc = 0.0
    tiles = np.empty((k, store.tile_size, store.tile_size, 3), np.uint8)
    for a, b in store.chunk_ranges():
        tiles[b - a:] = 255
        store.read_tiles(a, b, out=tiles[: b - a])
        t = time.process_time()
        encode_tile_chunk(tiles, "jpeg", attrs["jpeg_quality"], attrs["jpeg_subsampling"])
        t_enc += time.process_time() - t
    return dict(source_tiles=len(blobs), decode_s=t_dec, decode_full_s=t_full, decode_stage_s=t_stage, encode_s=t_enc)


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
    """(wall s, cpu s, tiles) to decode every tile of a store, one thread, chunk by chunk into one
    reused buffer, as extraction's loader decodes them into its ring of batch buffers."""
    k, s = store.chunk_size, store.tile_size
    buf = np.empty((k, s, s, 3), np.uint8)

    def run() -> None:
        for a, b in store.chunk_ranges():
            store.read_tiles(a, b, out=buf[: b - a])

    wall, cpu, _ = timed(run)
    return wall, cpu, store.n_tiles


def read_region_rates(slide: Path, coords: np.ndarray, n: int = 2000) -> tuple[float, float]:
    """(bare, to an RGB array) tiles/s per core of OpenSlide read_region(224 px, level 0) per tile, fresh
    handle each: the first ``n`` tiles of the grid in its order, as a CLAM-style loop reads them
    (neighbours share source tiles in OpenSlide's cache; a sparse sample of a large grid would decode
    1-4 source tiles per read and flatter the store by up to 2.5x at 50k px). Bare: the RGBA PIL image
    read_region returns; to an RGB array: ``np.asarray(img.convert("RGB"))``, what a loader (CLAM's
    ``Whole_Slide_Bag_FP``, ``clam_style`` above) must make of it and what the store decode returns."""
    import openslide

    sel = coords[:n]

    def rate(rgb: bool) -> float:
        osr = openslide.OpenSlide(str(slide))
        t = time.process_time()
        for x, y in sel:
            img = osr.read_region((int(x), int(y)), 0, (224, 224))
            if rgb:
                np.asarray(img.convert("RGB"))
        dt = time.process_time() - t
        osr.close()
        return len(sel) / dt

    return rate(False), rate(True)


def peak_memory(slide: Path, job: Path) -> dict:
    """Peak resident memory (MiB) of the whole stage on ``slide`` in a fresh process, default threads.

    Read from the child's own ``VmHWM`` (/proc/self/status): ``ru_maxrss`` of a child started by
    vfork + exec keeps the parent's high-water mark, so it would report this benchmark's memory.
    """
    code = (
        "from wsi_mil.tiling.config import TilingConfig\nfrom wsi_mil.tiling.stage import run_tile\n"
        f"rep = run_tile([{str(slide)!r}], {str(job)!r}, TilingConfig(), workers=0, overwrite=True, progress=False)\n"
        "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
        "RESULT = {'n_tiles': rep.statuses[0].n_tiles, 'status': rep.statuses[0].status,\n"
        "          'vm_hwm_mb': int(hwm[0]) / 1024 if hwm else None}\n"
    )
    out = run_isolated(code, env={"OMP_NUM_THREADS": "1"})
    if out.get("vm_hwm_mb") is not None:
        out["peak_rss_mb"] = out["vm_hwm_mb"]
    return out


SLIDES = (  # label, file stem, level-0 mpp, pyramid downsample, target of ours / CLAM-style per core
    ("native 0.5 -> 0.5 mpp", "native", 0.5, 2, 1.5),
    ("40x 0.25 -> 0.5 mpp, 2x pyramid", "40x", 0.25, 2, 4.0),
    ("40x 0.25 -> 0.5 mpp, 4x pyramid", "40x4", 0.25, 4, 4.0),
)


def bench_size(size: int, cache: Path, threads: int, device: str, reference: bool) -> list[dict]:
    """Run every measurement for one slide side; returns one summary row per slide (and the store
    decode and memory figures on the native slide's row)."""
    rows: list[tuple[str, str]] = []
    lim_rows: list[tuple[str, str]] = []
    results = []
    native: tuple[Path, PatchStore] | None = None
    for label, stem, mpp, lds, target in SLIDES:
        slide = synthetic_slide(cache, stem, size, mpp, level_downsample=lds)
        job = cache / f"job_{slide.stem}"
        wo = tile_stage(slide, job, threads="1", decoder="openslide")[0] if reference else None
        wn, _, _ = tile_stage(slide, job, threads=str(threads))
        wg, gstore = None, None
        if device == "cuda":
            wg, _, gstore = tile_stage(slide, job, threads=str(threads), device="cuda")
        w1, c1, store = tile_stage(slide, job, threads="1")  # the default store, kept for the checks below
        n = store.n_tiles
        bw, bc = clam_style(slide, store.coords, store.tile_size_level0)
        dec = store.attrs.get("tile_decoder", "?").split(" (")[0]
        ref = f" | openslide reader 1 thread {bw / wo:.2f}x" if wo else ""
        rows.append((label, f"{n} tiles, level {store.attrs['read_level']}, {dec} | CLAM-style {n / bw:5.0f}/s "
                            f"(cpu {n / bc:5.0f}/s) | ours 1 thread {n / w1:5.0f}/s = {bw / w1:.2f}x wall, "
                            f"{bc / c1:.2f}x cpu | {threads} threads {n / wn:5.0f}/s = {bw / wn:.2f}x wall{ref}"))
        if wg is not None and gstore is not None:
            rows.append((f"  GPU ({gstore.attrs.get('tile_decoder')})",
                         f"{n / wg:.0f} tiles/s wall = {bw / wg:.2f}x CLAM-style"))
        lims, paths = measured_alternately(partial(codec_limit, slide, store), partial(tile_path_cpu, slide, store, cache),
                                           lambda lim, path: lim["decode_s"] + lim["encode_s"] + path)
        lim = {k: (float(np.median([x[k] for x in lims])) if k.endswith("_s") else v) for k, v in lims[0].items()}
        cpu_tiles = float(np.median(paths))
        limit = lim["decode_s"] + lim["encode_s"]
        limit_full = lim["decode_full_s"] + lim["encode_s"]
        full = (f" | vs imagecodecs full-size decode + encode ({n / limit_full:5.0f}/s): "
                f"{limit_full / cpu_tiles:.2f}" if lim["decode_full_s"] != lim["decode_s"] else "")
        limit_own = lim["decode_stage_s"] + lim["encode_s"]
        if lim["decode_stage_s"] != lim["decode_s"]:
            full += f" | vs the stage's own decoder + encode ({n / limit_own:5.0f}/s): {limit_own / cpu_tiles:.2f}"
        lim_rows.append((label, f"limit {n / limit:5.0f} tiles/s per core (decode {lim['source_tiles']} source tiles "
                                f"{lim['decode_s']:.2f} s + encode {lim['encode_s']:.2f} s) | ours tile path "
                                f"{n / cpu_tiles:5.0f}/s = {limit / cpu_tiles:.2f} of limit (medians of {len(paths)}) | whole stage "
                                f"{n / c1:5.0f}/s = {limit / c1:.2f}{full}"))
        results.append(dict(size=size, slide=label, tiles=n, decoder=dec, clam_wall=bw / w1, clam_cpu=bc / c1,
                            clam_threads=bw / wn, target=target, limit=limit / cpu_tiles, limit_stage=limit / c1,
                            limit_full=limit_full / cpu_tiles, limit_own=limit_own / cpu_tiles, gpu=(n / wg if wg else None)))
        if stem == SLIDES[0][1]:
            native = (slide, store)  # used again below
        else:
            shutil.rmtree(job, ignore_errors=True)
    report(f"{size} px: tile stage throughput vs CLAM-style (one process each)", rows)
    report(f"{size} px: ours vs the decode + encode limit per core (CPU time, one thread)", lim_rows)

    if native is None:
        raise RuntimeError("no native slide measured")
    slide, store = native
    rrs, cpus = measured_alternately(lambda: read_region_rates(slide, store.coords), lambda: decode_store(store)[1],
                                     lambda rates, cpu: min(len(store.coords), 2000) * (1 / rates[0] + 1 / rates[1]) + cpu,
                                     least=5)
    n = store.n_tiles
    bare, rgb = (float(np.median([r[i] for r in rrs])) for i in (0, 1))
    cpu = float(np.median(cpus))
    report(f"{size} px: store decode (one thread) vs read_region", [
        ("OpenSlide read_region 224 px, bare (RGBA image)", f"{bare:7.0f} tiles/s per core"),
        ("OpenSlide read_region 224 px, to an RGB array", f"{rgb:7.0f} tiles/s per core"),
        ("store jpeg 4:2:0 q90, into an RGB batch buffer",
         f"{n / cpu:7.0f} tiles/s per core = {(n / cpu) / rgb:.1f}x read_region to an RGB array, "
         f"{(n / cpu) / bare:.1f}x bare (medians of {len(cpus)})")])
    m = peak_memory(slide, cache / f"job_mem_{slide.stem}")
    report(f"{size} px: peak memory (fresh process, whole stage, default threads)",
           [(slide.name, f"peak RSS {m['peak_rss_mb']:.0f} MiB, {m['n_tiles']} tiles")])
    for job in (cache / f"job_{slide.stem}", cache / f"job_mem_{slide.stem}"):
        shutil.rmtree(job, ignore_errors=True)
    results[0].update(store_decode=(n / cpu) / rgb, store_decode_bare=(n / cpu) / bare, peak_mb=m["peak_rss_mb"])
    return results


def encode_rates(tiles: np.ndarray, threads: int, chunk: int = 64) -> str:
    """Store-chunk JPEG encoding, tiles/s: the store's own chunk encoder (libjpeg-turbo, the default
    quality and 4:2:0) in ``threads`` threads vs nvJPEG (torchvision ``encode_jpeg`` of CUDA tensors; 4:4:4 only)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from torchvision.io import encode_jpeg

    from wsi_mil.stores.codecs import encode_tile_chunk
    from wsi_mil.tiling.config import TilingConfig

    cfg = TilingConfig()
    k, s = tiles.shape[0] // chunk * chunk, tiles.shape[1]
    chunks = [np.ascontiguousarray(tiles[a:a + chunk]) for a in range(0, k, chunk)]  # (chunk, S, S, 3) each
    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        list(pool.map(lambda c: encode_tile_chunk(c, "jpeg", cfg.jpeg_quality, cfg.jpeg_subsampling), chunks))
        cpu = k / (time.perf_counter() - t)
    if not torch.cuda.is_available():
        return f"{k} tiles in chunks of {chunk}: libjpeg-turbo 4:2:0, {threads} threads {cpu:6.0f} tiles/s | no CUDA"
    gpu_chunks = [torch.from_numpy(c.reshape(chunk * s, s, 3)).permute(2, 0, 1).contiguous().cuda() for c in chunks]
    encode_jpeg(gpu_chunks[:1], quality=cfg.jpeg_quality)  # warm-up: the encoder's state
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = encode_jpeg(gpu_chunks, quality=cfg.jpeg_quality)
    torch.cuda.synchronize()
    blobs = [bytes(o.cpu().numpy()) for o in out]
    gpu = k / (time.perf_counter() - t)
    return (f"{k} tiles in chunks of {chunk}: libjpeg-turbo 4:2:0, {threads} threads {cpu:6.0f} tiles/s | "
            f"nvJPEG 4:4:4 (torchvision) {gpu:6.0f} tiles/s, {sum(map(len, blobs)) / k / 1024:.1f} KiB/tile")


def warm_up_cuda() -> None:
    """Import torch and start CUDA and nvJPEG once, untimed (a batch pays this once per process)."""
    import torch
    from torchvision.io import decode_jpeg, encode_jpeg

    if torch.cuda.is_available():
        decode_jpeg([encode_jpeg(torch.zeros((3, 16, 16), dtype=torch.uint8))], device="cuda")
        torch.cuda.synchronize()


def bench_gpu_only(size: int, cache: Path, threads: int, stems: list[str]) -> list[tuple[str, str]]:
    """The GPU tile path against our CPU path with ``threads`` threads (the baseline, same run, same
    slides), and how far the GPU store's pixels are from the CPU store's (JPEG and filter rounding)."""
    rows = []
    warm_up_cuda()
    for label, stem, mpp, lds, _ in (s for s in SLIDES if s[1] in stems):
        slide = synthetic_slide(cache, stem, size, mpp, level_downsample=lds)
        job_cpu, job_gpu = cache / f"job_cpu_{slide.stem}", cache / f"job_gpu_{slide.stem}"
        wc, _, cstore = tile_stage(slide, job_cpu, threads=str(threads))
        wg, _, gstore = tile_stage(slide, job_gpu, threads=str(threads), device="cuda")
        n = cstore.n_tiles
        a, b = cstore.read_tiles(0, min(n, 512)), gstore.read_tiles(0, min(n, 512))
        diff = np.abs(a.astype(np.int16) - b).mean() if n else 0.0
        rows.append((label, f"{n} tiles | CPU {threads} threads {n / wc:6.0f} tiles/s ({cstore.attrs.get('tile_decoder')}) "
                            f"| GPU {n / wg:6.0f} tiles/s ({gstore.attrs.get('tile_decoder')}, fallback "
                            f"{gstore.attrs.get('tile_decoder_fallback') or 'none'}) = {wc / wg:.2f}x CPU | "
                            f"mean |GPU - CPU| {diff:.2f} grey levels"))
        print(f"  {label}: {rows[-1][1]}", flush=True)
        if stem == SLIDES[0][1] and n:
            rows.append(("  encoding on the GPU?", encode_rates(cstore.read_tiles(0, min(n, 2048)), threads)))
            print(f"  encoding: {rows[-1][1]}", flush=True)
        for job in (job_cpu, job_gpu):
            shutil.rmtree(job, ignore_errors=True)
    return rows


def summary_table(results: list[dict], threads: int) -> str:
    """A markdown table of every size and slide (ratios: ours / baseline measured in the same run)."""
    head = (f"| side | slide | tiles | reader | x CLAM-style per core, CPU (wall) | target | x CLAM-style, "
            f"{threads} threads, wall | of decode+encode limit: tile path (whole stage) | store decode x "
            "read_region to RGB (bare) | peak RSS MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        full = f", {r['limit_full']:.2f} vs full-size decode" if abs(r["limit_full"] - r["limit"]) > 1e-9 else ""
        if abs(r["limit_own"] - r["limit"]) > 1e-9:
            full += f", {r['limit_own']:.2f} vs its own decoder"
        lines.append(
            f"| {r['size'] // 1000}k | {r['slide']} | {r['tiles']:,} | {r['decoder']} | **{r['clam_cpu']:.2f}x** "
            f"({r['clam_wall']:.2f}x) | >= {r['target']:g}x | {r['clam_threads']:.2f}x | "
            f"**{r['limit']:.2f}** ({r['limit_stage']:.2f}){full} | "
            + (f"{r['store_decode']:.1f}x ({r['store_decode_bare']:.1f}x) | {r['peak_mb']:.0f} |" if "store_decode" in r else " | |")
            + (f" GPU {r['gpu']:.0f} tiles/s |" if r.get("gpu") else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,30000,50000", help="comma-separated slide sides (px)")
    ap.add_argument("--quick", action="store_true", help="10k px slides only")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads per slide for the wall run")
    ap.add_argument("--reference", action="store_true", help="also time the OpenSlide reader path (the previous path)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: also run the GPU path")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the synthetic slides are kept")
    ap.add_argument("--gpu-only", action="store_true",
                    help="only the GPU path vs our CPU path with --threads threads, per size (a short GPU session)")
    ap.add_argument("--slides", default=",".join(s[1] for s in SLIDES), help="with --gpu-only: which slides")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
          f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    if args.gpu_only:
        for size in sizes:
            report(f"{size} px: GPU tile path vs ours on the CPU, {args.threads} threads (whole stage, wall)",
                   bench_gpu_only(size, args.cache, args.threads, args.slides.split(",")))
        return
    results: list[dict] = []
    for size in sizes:
        results += bench_size(size, args.cache, args.threads, args.device, args.reference)
        print(f"(load average after {size} px: {' '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
    print(f"\nload average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("\n== summary (all sizes) ==\n" + summary_table(results, args.threads))


if __name__ == "__main__":
    main()
