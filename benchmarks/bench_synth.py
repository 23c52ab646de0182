"""Benchmark ``wsi_mil.synth``: time and peak memory of writing one large synthetic slide.

Every measurement runs in its own child process so that its peak RSS (``ru_maxrss``) is its own.

1. streaming ``make_slide`` at ``--size`` (default 100,000 x 100,000 px at 0.5 mpp): wall and CPU seconds,
   peak RSS, file size, level-0 megapixels per second.
2. baseline, same run, at ``--baseline-size`` (default 8,192 px): the naive way (render level 0 into one
   array, build the pyramid in memory, let tifffile tile and encode it) against the streaming writer on the
   same slide; ratios of time and peak memory. The naive way needs ~4/3 x W x H x 3 bytes, i.e. ~40 GB at
   100k, which is why it only runs at the small size.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_synth.py                # 100k slide + baseline
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_synth.py --size 20000   # quicker
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_synth.py --workers 8    # + forked row workers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(mode: str, size: int, out: Path, mpp: float, seed: int, workers: int = 1) -> dict:
    """Runs in a child process: generate one slide ``mode`` ('stream' or 'naive'), report figures."""
    import numpy as np

    from wsi_mil.synth.render import SlideRenderer, SlideSpec
    from wsi_mil.synth.slide import make_slide
    from wsi_mil.synth.texture import load_sample

    load_sample()  # the one-off sample preparation is not part of the per-slide figure
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    path = out / f"{mode}_{size}.tiff"
    if mode == "stream":
        truth = make_slide(path, size, size, mpp, seed, True, 0.03, workers=workers)
        tissue = truth.tissue_area / (size * size)
        tiles = truth.params["tiles_written"]
    else:
        import tifffile
        from PIL import Image

        from wsi_mil.synth.writer import pyramid_levels

        spec = SlideSpec.draw(size, size, mpp, seed, True, 0.03)
        render = SlideRenderer(spec)
        full = np.empty((size, size, 3), np.uint8)
        full[:] = spec.stain.background
        for y in range(0, size, 512):
            for x in range(0, size, 512):
                w, h = min(512, size - x), min(512, size - y)
                tile = render(x, y, w, h)
                if tile is not None:
                    full[y:y + h, x:x + w] = tile
        levels = pyramid_levels(size, size, 2, 512)
        with tifffile.TiffWriter(path, bigtiff=size * size * 3 > 2**31) as tif:
            img = full
            for k, lv in enumerate(levels):
                if k:
                    img = np.asarray(Image.fromarray(img).reduce(2))
                res = 1e4 / (mpp * lv.downsample)
                tif.write(img, tile=(512, 512), photometric="rgb", compression="jpeg",
                          compressionargs={"level": 85}, subfiletype=1 if k else 0,
                          resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)
        tissue = spec.tissue_area / (size * size)
        tiles = sum(-(-lv.width // 512) * -(-lv.height // 512) for lv in levels)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    import openslide

    with openslide.OpenSlide(str(path)) as s:
        opened = {"dimensions": list(s.dimensions), "levels": s.level_count,
                  "mpp": float(s.properties[openslide.PROPERTY_NAME_MPP_X])}
    result = {"mode": mode, "size": size, "workers": workers, "wall_s": wall, "cpu_s": cpu, "peak_rss_bytes": peak,
              "rss_before_bytes": base_rss, "file_bytes": path.stat().st_size, "tiles": tiles,
              "tissue_fraction": tissue, "level0_mpx_per_s": size * size / 1e6 / wall, "openslide": opened}
    path.unlink()
    return result


def _run_child(mode: str, size: int, out: Path, mpp: float, seed: int, workers: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--size", str(size), "--out", str(out),
           "--mpp", str(mpp), "--seed", str(seed), "--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{mode} {size}: child failed\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000, help="level-0 side of the large slide, px")
    ap.add_argument("--baseline-size", type=int, default=8192, help="side for the naive-vs-streaming baseline")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--workers", type=int, default=1,
                    help="also time make_slide(workers=N) (forked row workers) at the baseline size, and use "
                         "N workers for the large slide")
    ap.add_argument("--child", choices=("stream", "naive"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.size, args.out, args.mpp, args.seed, args.workers)))
        return
    scratch = args.out or Path(tempfile.mkdtemp(prefix="bench_synth-"))
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"# bench_synth  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.node()}  "
          f"{os.cpu_count()} cpus  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}  load {os.getloadavg()[0]:.1f}")
    b = args.baseline_size
    naive = _run_child("naive", b, scratch, args.mpp, args.seed)
    stream_small = _run_child("stream", b, scratch, args.mpp, args.seed)
    print(f"\nbaseline at {b} x {b} px ({b * b * 3 / 2**20:.0f} MiB raw RGB):")
    for r in (naive, stream_small):
        print(f"  {r['mode']:7s} wall {r['wall_s']:7.1f} s  cpu {r['cpu_s']:7.1f} s  peak RSS {_gib(r['peak_rss_bytes'])}"
              f"  (+{_gib(r['peak_rss_bytes'] - r['rss_before_bytes'])} over start)")
    print(f"  streaming / naive: wall time x{stream_small['wall_s'] / naive['wall_s']:.2f}, "
          f"cpu time x{stream_small['cpu_s'] / naive['cpu_s']:.2f}, "
          f"peak RSS x{stream_small['peak_rss_bytes'] / naive['peak_rss_bytes']:.2f}")
    figures = {"naive": naive, "stream_small": stream_small}
    if args.workers > 1:
        par = _run_child("stream", b, scratch, args.mpp, args.seed, args.workers)
        figures["stream_small_workers"] = par
        print(f"  streaming with {args.workers} row workers: wall {par['wall_s']:.1f} s "
              f"(x{stream_small['wall_s'] / par['wall_s']:.2f} faster than 1), peak RSS of the parent "
              f"{_gib(par['peak_rss_bytes'])}")
    big = _run_child("stream", args.size, scratch, args.mpp, args.seed, args.workers)
    figures["stream"] = big
    print(f"\nstreaming make_slide (workers={args.workers}) at {args.size} x {args.size} px, {args.mpp} mpp "
          f"(tissue {big['tissue_fraction']:.0%}, {big['tiles']} tiles over {big['openslide']['levels']} levels):")
    print(f"  wall {big['wall_s']:.1f} s  cpu {big['cpu_s']:.1f} s  {big['level0_mpx_per_s']:.1f} level-0 Mpx/s  "
          f"peak RSS {_gib(big['peak_rss_bytes'])}  file {big['file_bytes'] / 2**30:.2f} GiB")
    print(f"  naive in-memory would need >= {_gib(args.size ** 2 * 3 * 4 / 3)} for the pixels alone")
    print(f"  OpenSlide: {big['openslide']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
