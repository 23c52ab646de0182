"""Tile-stage benchmark on DICOM whole-slide pyramids: direct JPEG-frame decoding vs OpenSlide.

For each slide side in ``--sizes``, the native synthetic slide of ``bench_tiling.py`` (0.5 mpp, 512 px
JPEG tiles, from ``wsi_mil.synth``) is re-wrapped as a DICOM series (``wsi_mil.synth.dicom``: 512 px
YCbCr 4:2:2 q90 frames, as many 2x levels as the TIFF, the header of OpenSlide's DICOM test fixture ``boxes_0.dcm``
from ``--template``) and tiled at 0.5 mpp, one thread: our stage with its direct decoder, our
stage through OpenSlide's reader (the path before DICOM frames were decoded directly), and the
CLAM-style loop (``read_region`` + RGB per tile). Ratios compare measurements of the same run.

Usage: python benchmarks/bench_tiling_dicom.py [--sizes 10000,30000] [--cache /tmp/wsi_mil_bench_tiling]
       [--template ../shared/data/slides/dicom_openslide_boxes/boxes_0.dcm]
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
from _common import machine, report  # noqa: E402
from bench_tiling import DEFAULT_CACHE, clam_style, synthetic_slide, tile_stage  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "dicom_openslide_boxes" / "boxes_0.dcm"


def dicom_copy(slide: Path, cache: Path, template: Path) -> Path:
    """The slide's level 0 as a DICOM series in ``cache`` with as many 2x levels as the slide (cached)."""
    import openslide

    from wsi_mil.synth.dicom import write_dicom_pyramid

    folder = cache / f"dicom_{slide.stem}"
    osr = openslide.OpenSlide(str(slide))
    levels = osr.level_count
    if (folder / f"level_{levels - 1}.dcm").exists():
        osr.close()
        return folder
    t = time.perf_counter()
    w, h = osr.dimensions
    image = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, 2048):
        image[y:y + 2048] = np.asarray(osr.read_region((0, y), 0, (w, min(2048, h - y))).convert("RGB"))
    osr.close()
    shutil.rmtree(folder, ignore_errors=True)
    write_dicom_pyramid(folder, template, image, levels=levels, mpp=0.5, tile=512)
    print(f"wrote {folder.name} ({w} px) in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,30000", help="comma-separated slide sides (px)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the synthetic slides are kept")
    ap.add_argument("--template", type=Path, default=TEMPLATE, help="a whole-slide DICOM instance OpenSlide opens")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.template.is_file():
        sys.exit(f"{args.template}: no such DICOM template; give --template (OpenSlide's boxes_0.dcm test fixture)")
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        folder = dicom_copy(synthetic_slide(args.cache, "native", size, 0.5), args.cache, args.template)
        job = args.cache / f"job_{folder.name}"
        wo, co, ref = tile_stage(folder, job, threads="1", decoder="openslide")
        wd, cd, store = tile_stage(folder, job, threads="1")
        n = store.n_tiles
        if ref.n_tiles != n:
            raise RuntimeError(f"{folder}: {ref.n_tiles} tiles through OpenSlide, {n} direct")
        bw, bc = clam_style(folder / "level_0.dcm", store.coords, store.tile_size_level0)
        report(f"{size} px DICOM (512 px frames, 4:2:2 q90): tile stage, one thread", [
            ("tiles", f"{n}, level {store.attrs['read_level']}, {store.attrs['tile_decoder']}"),
            ("CLAM-style (read_region + RGB)", f"{n / bw:6.0f} tiles/s (cpu {n / bc:6.0f}/s)"),
            ("ours through OpenSlide", f"{n / wo:6.0f} tiles/s = {bw / wo:.2f}x CLAM-style wall, {bc / co:.2f}x cpu"),
            ("ours, direct frames", f"{n / wd:6.0f} tiles/s = {bw / wd:.2f}x CLAM-style wall, {bc / cd:.2f}x cpu, "
                                    f"{co / cd:.2f}x ours through OpenSlide (cpu)")])
        shutil.rmtree(job, ignore_errors=True)


if __name__ == "__main__":
    main()
