"""SimCLR pretraining benchmarks (``wsi-mil pretrain``).

throughput: training tiles/s (reading, two augmented views on the device, forward + backward of
    backbone and head on 2B images, NT-Xent, optimizer step) against the backbone's own
    forward + backward on random tensors of the same 2B images, same precision and layout,
    measured in the same run. Ratio = training tiles/s / (backbone images/s / 2); target >= 0.7
    on a GPU. Also peak GPU memory of each and the process's peak RSS. Tiles come from memory
    (random uint8 tiles; no zarr needed, e.g. on a GPU node) or from a job's patch stores.

probe: the larger version of the learning check: a synthetic cohort (``wsi_mil.synth``) is tiled,
    SimCLR is trained on its tiles for each seed, and tile-level AUCs (lesion vs normal tiles of the
    positive slides; linear probe and cosine k-NN, out-of-fold) are printed for the SimCLR encoder
    and the same architecture at random init.

Examples:
    python benchmarks/bench_pretrain.py throughput --arch resnet50 --batch-size 256 --device cuda
    OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py throughput --arch test_resnet \\
        --batch-size 32 --input-size 64 --tile-size 64 --device cpu --steps 10 --warmup 3
    OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py probe --work bench_output/probe --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsi_mil.ssl.config import PretrainConfig  # noqa: E402
from wsi_mil.ssl.data import ArrayTileSource  # noqa: E402
from wsi_mil.ssl.stage import prepare_backbone  # noqa: E402
from wsi_mil.ssl.train import DistInfo, _autocast, train_simclr, use_bf16  # noqa: E402


def rss_peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_gpu_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f} MiB"


def backbone_baseline(cfg: PretrainConfig, device: torch.device, steps: int, warmup: int) -> tuple[float, float | None]:
    """Backbone alone: forward + backward on random (2B, 3, H, W) tensors; (images/s, GPU peak MiB or None)."""
    backbone, _, _, size = prepare_backbone(cfg)
    model = backbone.to(device).train()
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = torch.compile(model) if cfg.compile else model
    bf16 = use_bf16(cfg, device)
    x = torch.randn(2 * cfg.batch_size, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    reset_gpu_peak(device)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with _autocast(bf16, device):
            out = step(x)
        out.float().pow(2).mean().backward()
    sync(device)
    dt = time.perf_counter() - t0
    return steps * x.shape[0] / dt, gpu_peak_mib(device)


def training_rate(cfg: PretrainConfig, device: torch.device, steps: int, warmup: int, tile_size: int,
                  job: Path | None) -> tuple[float, float | None]:
    """The SimCLR loop itself: (tiles/s over ``steps`` steps after ``warmup`` steps, GPU peak MiB or None)."""
    if job is not None:
        from wsi_mil.ssl.stage import open_job_stores

        sources, paths, _ = open_job_stores(job)
        names = [str(p) for p in paths]
    else:
        n = cfg.batch_size * (steps + warmup)
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (min(n, 4096), tile_size, tile_size, 3), dtype=np.uint8)
        tiles = np.concatenate([base] * (-(-n // len(base))))[:n]
        sources, names = [ArrayTileSource(tiles, chunk=64)], ["memory"]
    backbone, dim, dc, size = prepare_backbone(cfg)
    marks: dict[int, float] = {}

    def hook(step: int) -> None:
        if step in (warmup, warmup + steps):
            sync(device)
            marks[step] = time.perf_counter()

    reset_gpu_peak(device)
    run_cfg = cfg.model_copy(update={"max_steps": warmup + steps, "epochs": max(cfg.epochs, 1), "log_every": 10**9})
    train_simclr(backbone, dim, sources, names, run_cfg, size, dc["mean"], dc["std"], None,
                 dist_info=DistInfo(device=device), on_step_end=hook)
    dt = marks[warmup + steps] - marks[warmup]
    return steps * cfg.batch_size / dt, gpu_peak_mib(device)


def cmd_throughput(a: argparse.Namespace) -> None:
    device = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
    cfg = PretrainConfig(arch=a.arch, batch_size=a.batch_size, input_size=a.input_size, precision=a.precision,
                         epochs=1000, read_threads=a.read_threads, compile=a.compile)
    print(f"# bench_pretrain throughput  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"# {platform.node()}  {platform.processor() or platform.machine()}  torch {torch.__version__}  "
          f"threads {torch.get_num_threads()}  device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"# arch {a.arch}  batch {a.batch_size} tiles (2x views)  view {cfg.input_size or 'default'} px  "
          f"{'' if a.job else f'tiles {a.tile_size} px  '}precision {'bf16' if use_bf16(cfg, device) else 'fp32'}  "
          f"{'torch.compile  ' if a.compile else ''}"
          f"source {'job ' + str(a.job) if a.job else 'memory'}")
    # baseline before and after the training run (their mean), so drifting machine load hits both
    before, base_peak = backbone_baseline(cfg, device, a.steps, a.warmup)
    train_rate, train_peak = training_rate(cfg, device, a.steps, a.warmup, a.tile_size, a.job)
    after, _ = backbone_baseline(cfg, device, a.steps, a.warmup)
    base_rate = (before + after) / 2
    print(f"backbone baseline before / after: {before:,.1f} / {after:,.1f} img/s")
    ceiling = base_rate / 2
    ratio = train_rate / ceiling
    print(f"backbone fwd+bwd (random tensors): {base_rate:,.1f} img/s = {ceiling:,.1f} tiles/s ceiling; "
          f"GPU peak {mib(base_peak)}")
    print(f"SimCLR training loop:              {train_rate:,.1f} tiles/s; GPU peak {mib(train_peak)}")
    print(f"ratio training / ceiling: {ratio:.2f}   (target >= 0.7 on GPU)")
    print(f"process peak RSS: {rss_peak_mib():,.0f} MiB")
    print(json.dumps({"arch": a.arch, "batch_size": a.batch_size, "device": str(device),
                      "backbone_images_per_s": base_rate, "train_tiles_per_s": train_rate,
                      "ratio": ratio, "gpu_peak_mib_backbone": base_peak,
                      "gpu_peak_mib_train": train_peak, "rss_peak_mib": rss_peak_mib()}))


def cmd_probe(a: argparse.Namespace) -> None:
    from wsi_mil.config import build_config
    from wsi_mil.encoders import create_encoder
    from wsi_mil.evaluation.probe import encode_tiles, labelled_tiles, probe_auc
    from wsi_mil.ssl.stage import run_pretrain
    from wsi_mil.synth import make_cohort
    from wsi_mil.tiling.config import TilingConfig
    from wsi_mil.tiling.stage import run_tile

    work = Path(a.work)
    cohort = Path(a.cohort) if a.cohort else make_cohort(
        work / "cohort", a.slides, positive_fraction=0.5, size=(a.slide_px, a.slide_px), mpp=0.5,
        lesion_fraction=(0.04, 0.08), seed=a.cohort_seed)
    job = work / f"job_{a.tile_mpp:g}mpp_{a.tile_size}px"
    run_tile([cohort], job, TilingConfig(target_mpp=a.tile_mpp, tile_size=a.tile_size), workers=0, progress=False)
    probe_job = job
    if a.probe_stride:  # a denser grid for the probe only: more lesion tiles, less noisy AUCs
        probe_job = work / f"probe_{a.tile_mpp:g}mpp_{a.tile_size}px_stride{a.probe_stride}"
        run_tile([cohort], probe_job, TilingConfig(target_mpp=a.tile_mpp, tile_size=a.tile_size,
                                                      stride=a.probe_stride), workers=0, progress=False)
    tiles, labels, _ = labelled_tiles(probe_job, cohort)
    print(f"# bench_pretrain probe  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {platform.node()}  torch {torch.__version__}")
    print(f"# cohort {cohort}: {a.slides} slides {a.slide_px} px; tiles {a.tile_size} px at {a.tile_mpp} mpp; "
          f"probe set {len(labels)} tiles of positive slides, {int(labels.sum())} lesion")
    print(f"# {a.arch}, views {a.input_size} px, {a.epochs} epochs, batch {a.batch_size}, lr {a.lr}, device {a.device}"
          f"{', overrides ' + ' '.join(a.set) if a.set else ''}")
    rows = []
    for seed in a.seeds:
        cfg = build_config(PretrainConfig, None, a.set, cli=dict(
            arch=a.arch, epochs=a.epochs, batch_size=a.batch_size, input_size=a.input_size, lr=a.lr,
            proj_hidden_dim=a.proj_hidden_dim, proj_dim=a.proj_dim, seed=seed))
        out = work / f"encoder_{a.tag}_seed{seed}"
        t = time.perf_counter()
        s = run_pretrain(job, out, cfg, device=a.device, overwrite=True)
        train_s = time.perf_counter() - t
        trained = create_encoder(None, out)
        random = create_encoder(a.arch, f"random:{seed}")
        dc = trained.data_config
        ssl = probe_auc(encode_tiles(trained.model, tiles, a.input_size, dc["mean"], dc["std"], device=a.device), labels)
        rnd = probe_auc(encode_tiles(random.model, tiles, a.input_size, dc["mean"], dc["std"], device=a.device), labels)
        rows.append((ssl, rnd))

        print(f"seed {seed}: SimCLR linear {ssl['linear_auc']:.3f} kNN {ssl['knn_auc']:.3f} | random init linear "
              f"{rnd['linear_auc']:.3f} kNN {rnd['knn_auc']:.3f} | train {train_s:.0f} s, {s.global_step} steps, "
              f"loss {s.epoch_losses[0]:.3f} -> {s.epoch_losses[-1]:.3f}", flush=True)
    for key in ("linear_auc", "knn_auc"):
        a_ssl = [r[0][key] for r in rows]
        a_rnd = [r[1][key] for r in rows]
        wins = sum(x > y for x, y in zip(a_ssl, a_rnd))
        print(f"mean {key}: SimCLR {statistics.mean(a_ssl):.3f} vs random init {statistics.mean(a_rnd):.3f} "
              f"(SimCLR higher for {wins}/{len(rows)} seeds)")
    print(f"process peak RSS: {rss_peak_mib():,.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput", help="training tiles/s vs backbone fwd+bwd")
    t.add_argument("--arch", default="resnet50")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--input-size", type=int, default=None)
    t.add_argument("--tile-size", type=int, default=256, help="stored tile side (views are cropped from it)")
    t.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    t.add_argument("--device", default="auto")
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--read-threads", type=int, default=4)
    t.add_argument("--compile", action="store_true", help="torch.compile both the baseline and the training model")
    t.add_argument("--job", type=Path, default=None, help="read tiles from this job's patch stores")
    t.set_defaults(func=cmd_throughput)
    q = sub.add_parser("probe", help="tile AUC of SimCLR vs random init on a synthetic cohort")
    q.add_argument("--work", default="bench_output/pretrain_probe")
    q.add_argument("--cohort", default=None, help="an existing synthetic cohort (default: make one)")
    q.add_argument("--slides", type=int, default=8)
    q.add_argument("--slide-px", type=int, default=3072)
    q.add_argument("--cohort-seed", type=int, default=0)
    q.add_argument("--tile-mpp", type=float, default=2.0)
    q.add_argument("--tile-size", type=int, default=56)
    q.add_argument("--arch", default="test_resnet")
    q.add_argument("--input-size", type=int, default=48)
    q.add_argument("--epochs", type=int, default=3)
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--lr", type=float, default=2e-3)
    q.add_argument("--proj-hidden-dim", type=int, default=256)
    q.add_argument("--proj-dim", type=int, default=64)
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--device", default="cpu")
    q.add_argument("--probe-stride", type=int, default=None, help="grid step of the probe tiles (default: tile size)")
    q.add_argument("--set", action="append", default=[], help="pretrain config override KEY=VALUE")
    q.add_argument("--tag", default="run", help="name of this configuration (encoder folder names)")
    q.set_defaults(func=cmd_probe)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    a.func(a)


if __name__ == "__main__":
    main()
