"""Extract-stage benchmark: our pipeline vs the encoder's own limit and a CLAM-style extractor.

Prints, in one run on one machine, for each model (and each mode: eager, ``torch.compile``):
1. ``limit``: the encoder on random tensors already on the device (same batch size, precision
   and memory format as the pipeline): the most any extractor can reach (mean of a measurement
   before and one after ours, so drifting load on a shared machine is bracketed);
2. ``ours``: end to end, patch stores -> written feature files (opening stores, decoding chunks
   with our default loader, uint8 to the device, normalisation there, inference, writes), and its
   ratio to the limit (target >= 0.8 on an H100 for ResNet-50 and ViT-S/16);
3. ``clam``: a CLAM-style extractor on the same tiles: OpenSlide ``read_region`` per tile in
   DataLoader workers (one per core), ToTensor + Normalize there, fp32 model, batch 256,
   one HDF5 file per slide; and our ratio to it (target >= 2.5x eager, >= 4x compiled);
4. each data path alone (no model): our chunk loader and the per-tile OpenSlide loader;
5. peak device memory per phase and peak host memory (this process and its children).

Tiles: the slide (default: the real ``CMU-1-Small-Region.svs``) is tiled once with our tile
stage; its tiles are cycled into ``--slides`` patch stores of ``--tiles-per-slide`` tiles each
(JPEG, the tile stage's chunking), and the CLAM baseline reads the same slide regions, in the
same number, with OpenSlide.

``--models`` takes timm names and ready-made entries at random init: ``uni`` is a ViT-L/16 and
``virchow2`` a ViT-H/14 with SwiGLU, 4 registers and class + mean pooling (their publishers'
shapes, :mod:`wsi_mil.encoders.foundation`). Each model's memory estimate is printed before it
runs; the targets for ours/limit are 0.9 for models of 300M parameters or more (GPU-bound) and
0.8 for the small ones.

Usage:
  CPU (small):  OMP_NUM_THREADS=1 python benchmarks/bench_extract.py --device cpu --models resnet18
  H100:         python benchmarks/bench_extract.py --device cuda --models resnet50,vit_small_patch16_224 \
                    --batch-size 512 --modes eager,compile
  large models: python benchmarks/bench_extract.py --device cuda \
                    --models resnet50,vit_small_patch16_224,uni,virchow2 --batch-size 512 --modes eager \
                    --tiles-per-slide 4096 --limit-seconds 6 --skip-clam
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import machine  # noqa: E402

DEFAULT_SLIDE = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
BUNDLED_SLIDE = ROOT / "wsi_mil" / "data" / "CMU-1-Small-Region.svs"


# -- measurement helpers ----------------------------------------------------------------------
class PeakHostMemory:
    """Samples the memory of this process and all its children (PSS: pages shared between forked
    loader workers are counted once, split among them); ``.peak_gb``."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.Error, AttributeError):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakHostMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return self.peak / 2**30


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_device_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def device_peak_gb(device: Any) -> float:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


# -- inputs -----------------------------------------------------------------------------------
def prepare_stores(slide: Path, out: Path, n_slides: int, per_slide: int) -> tuple[np.ndarray, list[Path]]:
    """Tile ``slide`` with our tile stage, then cycle its tiles into ``n_slides`` stores.

    Returns the level-0 coords (per_slide, 2) of the source tiles used (the CLAM baseline reads
    these regions) and the store paths.
    """
    from wsi_mil.stores.patches import open_patch_store, write_patch_store
    from wsi_mil.tiling.config import TilingConfig
    from wsi_mil.tiling.stage import run_tile

    cfg = TilingConfig()
    src_job = out / "source"
    rep = run_tile([slide], src_job, cfg, workers=0, progress=False, overwrite=True)
    st = rep.statuses[0]
    if st.status != "done":
        raise SystemExit(f"tiling {slide} failed: {st.reason}")
    src = open_patch_store(src_job / "patches" / f"{st.slide_id}.zarr")
    if src.n_tiles == 0:
        raise SystemExit(f"{slide}: no tissue tiles")
    idx = np.arange(per_slide) % src.n_tiles
    tiles = src.read_tiles()[idx]
    coords = src.coords[idx]
    job = out / "job"
    shutil.rmtree(job, ignore_errors=True)
    stores = [job / "patches" / f"bench{i:03d}.zarr" for i in range(n_slides)]

    def write(path: Path) -> None:
        attrs = {k: src.attrs[k] for k in ("target_mpp", "mpp", "tile_size_level0", "tile_size")}
        attrs.update(slide_id=path.stem, slide_path=str(slide))
        write_patch_store(path, tiles, coords, np.ones(per_slide, np.float32), np.ones((4, 4), np.uint8),
                          16.0, attrs, codec=cfg.codec, jpeg_quality=cfg.jpeg_quality,
                          tiles_per_chunk=cfg.tiles_per_chunk, chunks_per_shard=cfg.chunks_per_shard,
                          jpeg_subsampling=cfg.jpeg_subsampling)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        list(pool.map(write, stores))
    return coords, stores


# -- 1. the limit -----------------------------------------------------------------------------
def encoder_limit(engine: Any, batch: int, seconds: float) -> tuple[float, float]:
    """img/s of the engine's model (same precision, channels_last, compile) on device tensors."""
    import torch

    h, w = engine.input_hw
    x = torch.randn(batch, 3, h, w, device=engine.device)
    if engine.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(engine.precision)

    def step() -> None:
        with torch.inference_mode():
            if dtype is not None:
                with torch.autocast(engine.device.type, dtype=dtype):
                    engine._forward(x)
            else:
                engine._forward(x)

    for _ in range(3):
        step()
    sync(engine.device)
    reset_device_peak(engine.device)
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += batch
        if n >= 4 * batch:
            sync(engine.device)
            if time.perf_counter() - t0 >= seconds:
                break
    sync(engine.device)
    return n / (time.perf_counter() - t0), device_peak_gb(engine.device)


# -- 2. our pipeline --------------------------------------------------------------------------
def ours_end_to_end(engine: Any, stores: list[Path], out_dir: Path, num_workers: int | None,
                    encoder_id: str, encoder_attrs: dict[str, Any], embed_dim: int,
                    loader: str = "auto") -> dict[str, float]:
    """Patch stores -> written feature files through the stage's own steps (stores opened inside
    the timing). Returns ``tiles``, ``seconds``, and of those ``open_s`` (preparing the slides)
    and ``first_batch_s`` (from then until the loader's first batch)."""
    from wsi_mil.extract import runner
    from wsi_mil.extract.stage import prepare_slides

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    first: list[float] = []
    make_loader = runner.make_loader

    def timed_loader(*args: Any, **kwargs: Any) -> Any:  # notes when the first batch arrives
        for k, item in enumerate(make_loader(*args, **kwargs)):
            if k == 0:
                first.append(time.perf_counter())
            yield item

    runner.make_loader = timed_loader
    try:
        t0 = time.perf_counter()
        prepared = prepare_slides([(p, out_dir / f"{p.stem}.h5") for p in stores], encoder_id)
        t_open = time.perf_counter()
        jobs = [j for j in prepared if isinstance(j, runner.SlideJob)]
        if len(jobs) < len(prepared):
            failed = next(j for j in prepared if not isinstance(j, runner.SlideJob))
            raise SystemExit(f"preparing {failed.slide_id} failed: {failed.reason}")
        statuses = runner.run_slides(engine, jobs, encoder_attrs, embed_dim, lambda s: None, num_workers,
                                     loader=loader)
        engine.synchronize()
        t_end = time.perf_counter()
    finally:
        runner.make_loader = make_loader
    bad = [s for s in statuses if s.status != "done"]
    if bad:
        raise SystemExit(f"extraction failed: {bad[0].reason}")
    return {"tiles": sum(j.n_tiles for j in jobs), "seconds": t_end - t0, "open_s": t_open - t0,
            "first_batch_s": (first[0] if first else t_end) - t_open}


def ours_loader_only(stores: list[Path], device: Any, batch: int, num_workers: int | None,
                     mode: str = "auto") -> tuple[float, float]:
    """(tiles/s, seconds to the first batch) of our data path alone (decode chunks, pinned memory), no model."""
    from wsi_mil.extract.data import make_loader, plan_ranges
    from wsi_mil.stores.patches import open_patch_store

    ranges = []
    for i, p in enumerate(stores):
        store = open_patch_store(p)
        ranges += plan_ranges(i, p, store.chunk_ranges(), batch, store.tile_size)
    n, t0, first = 0, time.perf_counter(), float("nan")
    for item in make_loader(ranges, device, num_workers, mode=mode):
        if item.error or item.tiles is None:
            raise SystemExit(item.error or "the loader returned a batch without tiles")
        if n == 0:
            first = time.perf_counter() - t0
        n += item.tiles.shape[0]
    return n / (time.perf_counter() - t0), first


# -- 3. CLAM-style baseline -------------------------------------------------------------------
class OpenSlideTiles:
    """CLAM-style dataset: one ``read_region`` per tile at level 0, ToTensor + Normalize here."""

    def __init__(self, slide: str, coords: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.slide, self.coords, self.size = slide, coords, size
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self._osr: Any = None  # an openslide.OpenSlide, opened in the worker that reads

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> Any:
        import openslide
        import torch

        if self._osr is None:
            self._osr = openslide.OpenSlide(self.slide)
        x, y = (int(v) for v in self.coords[i])
        img = self._osr.read_region((x, y), 0, (self.size, self.size)).convert("RGB")
        a = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0  # ToTensor
        return torch.from_numpy((a - self.mean) / self.std)  # Normalize


def clam_style(model: Any, slide: Path, coords: np.ndarray, n_slides: int, size: int, mean: Sequence[float],
               std: Sequence[float], device: Any, out_dir: Path, workers: int, batch: int = 256,
               model_on: bool = True) -> float:
    """tiles/s of the CLAM-style extractor over ``n_slides`` passes of ``coords`` (fp32); ``mean``,
    ``std``: the normalisation of [0, 1] pixels (the encoder's data config)."""
    import h5py
    import torch
    from torch.utils.data import DataLoader

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    if model_on:
        model = model.to(device).eval().float()
    n, t0 = 0, time.perf_counter()
    for s in range(n_slides):
        ds = OpenSlideTiles(str(slide), coords, size, mean, std)
        loader: DataLoader[Any] = DataLoader(cast(Any, ds), batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda")
        feats = []
        for x in loader:
            n += x.shape[0]
            if model_on:
                with torch.inference_mode():
                    feats.append(model(x.to(device, non_blocking=True)).cpu().numpy())
        if model_on:
            with h5py.File(out_dir / f"bench{s:03d}.h5", "w") as f:
                f.create_dataset("features", data=np.concatenate(feats))
                f.create_dataset("coords", data=coords)
    sync(device)
    return n / (time.perf_counter() - t0)


# -- driver -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--models", default=None, help="comma-separated timm names [cuda: resnet50,vit_small_patch16_224; "
                                                   "cpu: resnet18]")
    p.add_argument("--modes", default="eager", help="eager and/or compile, comma-separated")
    p.add_argument("--batch-size", type=int, default=None, help="[cuda 512, cpu 64]")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--slide", type=Path, default=None, help="slide to tile [../shared CMU-1-Small-Region.svs]")
    p.add_argument("--slides", type=int, default=None, help="patch stores [cuda 16, cpu 2]")
    p.add_argument("--tiles-per-slide", type=int, default=None, help="[cuda 8192, cpu 256]")
    p.add_argument("--workers", type=int, default=None, help="our loader processes [cores - 1]")
    p.add_argument("--clam-workers", type=int, default=None, help="CLAM loader processes [cores]")
    p.add_argument("--limit-seconds", type=float, default=None, help="timing of the limit [cuda 10, cpu 20]")
    p.add_argument("--skip-clam", action="store_true", help="skip the CLAM-style baseline")
    p.add_argument("--out", type=Path, default=ROOT / "bench_output" / "extract")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    import torch

    from wsi_mil.encoders import create_encoder
    from wsi_mil.extract import ExtractConfig
    from wsi_mil.extract.engine import resolve_precision
    from wsi_mil.extract.memory import estimate_memory
    from wsi_mil.extract.stage import make_engine

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible; use --device cpu")
    gpu = device.type == "cuda"
    models = (args.models or ("resnet50,vit_small_patch16_224" if gpu else "resnet18")).split(",")
    modes = args.modes.split(",")
    batch = args.batch_size or (512 if gpu else 64)
    n_slides = args.slides or (16 if gpu else 2)
    per_slide = args.tiles_per_slide or (8192 if gpu else 256)
    limit_s = args.limit_seconds or (10.0 if gpu else 20.0)
    cores = len(os.sched_getaffinity(0))
    workers = args.workers if args.workers is not None else max(1, cores - 1)
    clam_workers = args.clam_workers if args.clam_workers is not None else cores
    slide = args.slide or (DEFAULT_SLIDE if DEFAULT_SLIDE.exists() else BUNDLED_SLIDE)
    torch.backends.cudnn.benchmark = True

    print(f"machine: {machine(device)}")
    print(f"tiles: {n_slides} stores x {per_slide} tiles of 224 px from {slide.name}; batch {batch}; "
          f"our loader workers {workers}, CLAM workers {clam_workers}")
    t = time.perf_counter()
    coords, stores = prepare_stores(slide, args.out, n_slides, per_slide)
    print(f"prepared stores in {time.perf_counter() - t:.1f} s")

    for mode in ("processes", "threads"):
        with PeakHostMemory() as mem:
            tps = ours_loader_only(stores, device, batch, workers, mode)[0]
        print(f"our loader alone ({mode}): {tps:,.0f} tiles/s (peak host {mem.peak_gb:.2f} GB)")
    with PeakHostMemory() as mem:
        loader_tps = ours_loader_only(stores, device, batch, workers)[0]
    results: list[dict[str, Any]] = []
    print(f"our loader alone (default for {device}): {loader_tps:,.0f} tiles/s (peak host {mem.peak_gb:.2f} GB)")
    clam_loader_tps = float("nan")
    if not args.skip_clam:
        with PeakHostMemory() as mem:
            clam_loader_tps = clam_style(None, slide, coords, 1, 224, [0.0] * 3, [1.0] * 3, device,
                                         args.out / "clam_loader", clam_workers, model_on=False)
        print(f"CLAM-style loader alone (OpenSlide read_region per tile): {clam_loader_tps:,.0f} tiles/s "
              f"(peak host {mem.peak_gb:.2f} GB)")

    for name in models:
        enc = create_encoder(name, "random")
        n_params = sum(int(p.numel()) for p in enc.model.parameters())
        target = 0.9 if n_params >= 300e6 else 0.8
        print(f"{name}: {n_params / 1e6:,.0f}M parameters, {enc.embed_dim}-d, target ours/limit >= {target}; "
              + estimate_memory(enc.model, enc.data_config, batch, resolve_precision(args.precision, device), device).line())
        clam_tps = clam_dev_gb = clam_host_gb = float("nan")
        if not args.skip_clam:
            reset_device_peak(device)
            with PeakHostMemory() as mem:
                import copy

                clam_tps = clam_style(copy.deepcopy(enc.model), slide, coords, n_slides, 224, enc.data_config.mean,
                                      enc.data_config.std, device, args.out / "clam", clam_workers)
            clam_dev_gb, clam_host_gb = device_peak_gb(device), mem.peak_gb
            print(f"{name}: CLAM-style fp32 batch 256: {clam_tps:,.1f} tiles/s")
        for mode in modes:
            cfg = ExtractConfig(device=str(device), batch_size=batch, precision=args.precision,
                                compile=mode == "compile", num_workers=workers)
            engine = make_engine(enc, device, cfg)
            t = time.perf_counter()
            limit, limit_gb = encoder_limit(engine, batch, limit_s)
            warm = time.perf_counter() - t
            # warm the pipeline (compile for the last-batch shape, cudnn autotune) on one store
            ours_end_to_end(engine, stores[:1], args.out / "warm", workers, enc.encoder_id, enc.attrs(), enc.embed_dim)
            reset_device_peak(device)
            with PeakHostMemory() as mem:
                run = ours_end_to_end(engine, stores, args.out / "ours", workers, enc.encoder_id, enc.attrs(),
                                      enc.embed_dim)
            e2e = run["tiles"] / run["seconds"]
            dev_gb_ours = device_peak_gb(device)
            # measured again after: on a shared machine the load drifts; the mean brackets the run
            limit_after, _ = encoder_limit(engine, batch, limit_s)
            limit = (limit + limit_after) / 2
            row = {
                "model": name, "mode": mode, "precision": engine.precision, "batch": batch, "target": target,
                "params": n_params,
                "limit": limit, "ours": e2e, "ours/limit": e2e / limit,
                "clam": clam_tps, "ours/clam": e2e / clam_tps if clam_tps == clam_tps else float("nan"),
                "loader": loader_tps, "clam_loader": clam_loader_tps,
                "dev_gb_limit": limit_gb, "dev_gb_ours": dev_gb_ours, "host_gb_ours": mem.peak_gb,
                "dev_gb_clam": clam_dev_gb, "host_gb_clam": clam_host_gb, "final_batch": engine.batch_size,
                "limit_warmup_s": warm, "seconds": run["seconds"], "lost_s": run["seconds"] - run["tiles"] / limit,
                "open_s": run["open_s"], "first_batch_s": run["first_batch_s"],
            }
            results.append(row)
            print(f"{name} {mode}: limit {limit:,.1f} img/s, ours {e2e:,.1f} tiles/s ({e2e / limit:.2f} of limit); "
                  f"{row['lost_s']:.2f} s more than the limit allows (opening stores {run['open_s']:.2f} s, "
                  f"first batch {run['first_batch_s']:.2f} s)")

    print()
    head = ("model", "mode", "prec", "limit img/s", "ours tiles/s", "ours/limit (target)", "CLAM tiles/s", "ours/CLAM",
            "dev GB ours/CLAM", "host GB ours/CLAM")
    rows: list[tuple[str, ...]] = [head]

    def rate(v: float) -> str:
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"

    for r in results:
        rows.append((r["model"], r["mode"], r["precision"], rate(r["limit"]), rate(r["ours"]),
                     f"{r['ours/limit']:.2f} ({r['target']})", rate(r["clam"]), f"{r['ours/clam']:.2f}x",
                     f"{r['dev_gb_ours']:.1f}/{r['dev_gb_clam']:.1f}", f"{r['host_gb_ours']:.1f}/{r['host_gb_clam']:.1f}"))
    widths = [max(len(str(line[i])) for line in rows) for i in range(len(head))]
    for k, line in enumerate(rows):
        print(" | ".join(str(v).rjust(w) for v, w in zip(line, widths)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))
    print(f"\ndata paths alone: ours {loader_tps:,.0f} tiles/s ({workers} workers), "
          f"CLAM-style {clam_loader_tps:,.0f} tiles/s ({clam_workers} workers)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(device), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
