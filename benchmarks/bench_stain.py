"""Stain-normalisation benchmark: what ``extract --stain-norm`` costs beside extraction without it.

Prints, in one run on one machine, on the same tiles (real tissue: the slide, default the real
``CMU-1-Small-Region.svs``, tiled once with our tile stage and cycled into ``--slides`` patch
stores of ``--tiles-per-slide`` tiles, as ``bench_extract.py`` does):

1. ``extract``: end to end through the stage's own steps, one engine reused for every mode
   (preparing the slides, then each slide's stain fit on background threads, loading, the device
   transform, the model, the feature files), in tiles/s and as a ratio to ``none``
   measured in the same run; modes interleaved over ``--rounds`` rounds (best round kept), so a
   drifting load on a shared machine hits every mode alike. The issue's budget: normalisation
   costs at most 10 % of a ResNet-50 extraction on the GPU (ratio >= 0.90);
2. ``embed``: the engine alone on tiles already on the device (no loader, no files), with and
   without the transform: the model's own ratio, free of the loader's noise;
3. ``transform``: the fitted transform alone on the device (the engine's input: float NCHW on
   [0, 255]), tiles/s, and its peak extra memory for one batch beyond its input (device memory on
   CUDA; on the CPU the process's resident high-water mark, reset just before, above what it held);
4. ``fit``: seconds per slide of the per-slide fit (sampling chunks + fitting).

Usage:
  CPU (small):  OMP_NUM_THREADS=2 nice -n 10 python benchmarks/bench_stain.py --device cpu --model resnet18
  GPU:          python benchmarks/bench_stain.py --device cuda --model resnet50 --batch-size 512 \\
                    --slides 8 --tiles-per-slide 4096 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import machine  # noqa: E402

DEFAULT_SLIDE = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
MODES = ("none", "macenko", "reinhard")


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def extract_once(engine: Any, enc: Any, stores: list[Path], out_dir: Path, mode: str, workers: int | None,
                 loader: str) -> dict[str, float]:
    """One end-to-end extraction of ``stores`` with stain normalisation ``mode``; tiles, seconds, prepare_s."""
    from wsi_mil.extract import runner
    from wsi_mil.extract.stage import prepare_slides, stain_attrs, with_stain_norm
    from wsi_mil.stain import create_stain_normalizer

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    stain = create_stain_normalizer(mode)
    e = with_stain_norm(enc, mode)
    t0 = time.perf_counter()
    jobs = prepare_slides([(p, out_dir / f"{p.stem}.h5") for p in stores], e.encoder_id, stain=stain)
    t_prep = time.perf_counter()
    bad = [j for j in jobs if not isinstance(j, runner.SlideJob)]
    if bad:
        raise SystemExit(f"preparing failed: {bad[0].reason}")  # type: ignore[union-attr]
    statuses = runner.run_slides(engine, jobs, e.attrs(), e.embed_dim, lambda s: None, workers,  # type: ignore[arg-type]
                                 stain_attrs(stain), loader=loader, stain=stain)
    engine.synchronize()
    t_end = time.perf_counter()
    failed = [s for s in statuses if s.status != "done"]
    if failed:
        raise SystemExit(f"extraction failed: {failed[0].reason}")
    return {"tiles": float(sum(j.n_tiles for j in jobs)), "seconds": t_end - t0,  # type: ignore[union-attr]
            "prepare_s": t_prep - t0}


def timed_call(fn: Any, device: Any) -> float:
    """Seconds of one ``fn()``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(calls: dict[str, Any], device: Any, seconds: float, min_rounds: int = 3) -> dict[str, float]:
    """Median seconds per call of each of ``calls`` (name -> fn), run in turn (rotating order)
    until ``seconds`` have passed and at least ``min_rounds`` rounds: a drifting load on a shared
    machine then falls on every entry alike."""
    names = list(calls)
    for name in names:  # warm-up (allocator, cudnn autotuning)
        calls[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    t_end, r = time.perf_counter() + seconds, 0
    while r < min_rounds or time.perf_counter() < t_end:
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(timed_call(calls[name], device))
        r += 1
    return {n: float(np.median(v)) for n, v in times.items()}


def cuda_transform_peak(fitted: Any, tiles: Any) -> float:
    """Peak device memory (MiB) that one batch of the transform allocates beyond its input."""
    import torch

    x = tiles.permute(0, 3, 1, 2).float()
    sync(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    base = torch.cuda.memory_allocated(x.device)
    fitted(x, channels_last=False)
    sync(x.device)
    return (torch.cuda.max_memory_allocated(x.device) - base) / 2**20


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def cpu_transform_peak(fitted: Any, tiles: Any) -> float:
    """Peak resident memory (MiB) above what the process held, during one batch of the transform on
    the CPU: the kernel's high-water mark is reset first (``/proc/self/clear_refs``, Linux)."""
    x = tiles.permute(0, 3, 1, 2).float()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fitted(x, channels_last=False)
    return (_status_kib("VmHWM") - before) / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--model", default=None, help="timm name at random init [cuda resnet50, cpu resnet18]")
    p.add_argument("--batch-size", type=int, default=None, help="[cuda 512, cpu 32]")
    p.add_argument("--precision", default="auto")
    p.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    p.add_argument("--slides", type=int, default=None, help="patch stores [cuda 8, cpu 2]")
    p.add_argument("--tiles-per-slide", type=int, default=None, help="[cuda 4096, cpu 96]")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three modes end to end")
    p.add_argument("--seconds", type=float, default=None, help="timing of embed/transform [cuda 5, cpu 8]")
    p.add_argument("--workers", type=int, default=None, help="loader threads/processes [default of extract]")
    p.add_argument("--loader", default="auto")
    p.add_argument("--out", type=Path, default=ROOT / "bench_output" / "stain")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    import torch
    from bench_extract import prepare_stores

    from wsi_mil.encoders import create_encoder
    from wsi_mil.extract.engine import InferenceEngine
    from wsi_mil.stain import create_stain_normalizer, fit_store
    from wsi_mil.stores.patches import open_patch_store

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("resnet50" if cuda else "resnet18")
    batch = args.batch_size or (512 if cuda else 32)
    n_slides = args.slides or (8 if cuda else 2)
    per_slide = args.tiles_per_slide or (4096 if cuda else 96)
    seconds = args.seconds or (5.0 if cuda else 8.0)
    if not args.slide.is_file():
        raise SystemExit(f"{args.slide}: slide not found (clone ../shared beside the project or pass --slide)")

    print(f"machine: {machine(device)}")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min)")
    _, stores = prepare_stores(args.slide, args.out, n_slides, per_slide)
    first = open_patch_store(stores[0])
    print(f"tiles: {n_slides} stores x {per_slide} tiles of {first.tile_size} px from {args.slide.name}; model {model} "
          f"(random init), batch {batch}, device {device}, threads {torch.get_num_threads()}")

    enc = create_encoder(model, "random")
    engine = InferenceEngine(enc.model, enc.data_config, device=device, batch_size=batch, precision=args.precision)
    results: dict[str, Any] = {"model": model, "device": str(device), "batch": batch, "slides": n_slides,
                               "tiles_per_slide": per_slide, "precision": engine.precision}

    # 1. end to end, modes interleaved; the ratio is taken within each round, then the median
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    extract_once(engine, enc, stores, args.out / "features" / "warmup", "none", args.workers, args.loader)
    for r in range(args.rounds):
        order = MODES[r % 3:] + MODES[:r % 3]
        for mode in order:
            runs[mode].append(extract_once(engine, enc, stores, args.out / "features" / mode, mode, args.workers,
                                           args.loader))
    rate = {m: [x["tiles"] / x["seconds"] for x in runs[m]] for m in MODES}
    print(f"\n== extract: end to end, {args.rounds} interleaved rounds (median) ==")
    print(f"  {'mode':<9} {'tiles/s':>9} {'ratio':>7}  per-round ratios")
    for m in MODES:
        ratios = [a / b for a, b in zip(rate[m], rate["none"])]
        results[f"extract_{m}_tiles_s"] = float(np.median(rate[m]))
        results[f"extract_{m}_ratio"] = float(np.median(ratios))
        print(f"  {m:<9} {np.median(rate[m]):9.1f} {np.median(ratios):7.3f}  {' '.join(f'{x:.3f}' for x in ratios)}")

    # 2.-4. the fit, the engine alone, the transform alone (one batch, calls interleaved)
    tiles = torch.from_numpy(first.read_tiles(0, batch)).to(device)
    fitted: dict[str, Any] = {}
    for m in MODES[1:]:
        norm = create_stain_normalizer(m)
        t0 = time.perf_counter()
        fits = [fit_store(open_patch_store(s), norm) for s in stores]  # type: ignore[arg-type]
        results[f"fit_{m}_s_per_slide"] = (time.perf_counter() - t0) / len(stores)
        fitted[m] = fits[0].transform
    embed = interleaved({m: (lambda m=m: engine.embed(tiles, fitted.get(m))) for m in MODES}, device, seconds)
    x = tiles.permute(0, 3, 1, 2).float()
    alone = interleaved({m: (lambda m=m: fitted[m](x, channels_last=False)) for m in MODES[1:]}, device, seconds / 2)
    print(f"\n== one batch of {batch}: embed (device tiles, no loader), the transform alone, the fit (medians) ==")
    print(f"  {'mode':<9} {'embed/s':>9} {'ratio':>7} {'transform/s':>12} {'of embed':>9} {'peak MiB':>9} {'fit s/slide':>12}")
    print(f"  {'none':<9} {batch / embed['none']:9.1f} {1.0:7.3f}")
    results["embed_none_tiles_s"] = batch / embed["none"]
    for m in MODES[1:]:
        peak = cuda_transform_peak(fitted[m], tiles) if cuda else cpu_transform_peak(fitted[m], tiles)
        share = alone[m] / embed["none"]
        results.update({f"embed_{m}_tiles_s": batch / embed[m], f"embed_{m}_ratio": embed["none"] / embed[m],
                        f"transform_{m}_tiles_s": batch / alone[m], f"transform_{m}_share_of_embed": share,
                        f"transform_{m}_peak_mib": peak})
        print(f"  {m:<9} {batch / embed[m]:9.1f} {embed['none'] / embed[m]:7.3f} {batch / alone[m]:12.1f} "
              f"{share:9.3f} {peak:9.1f} {results[f'fit_{m}_s_per_slide']:12.3f}")
    print(f"\n  input batch: {batch} x {first.tile_size}^2 x 3 float32 = "
          f"{batch * first.tile_size ** 2 * 3 * 4 / 2**20:.0f} MiB; load after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
