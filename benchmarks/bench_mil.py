"""Seconds per training epoch, inference time and peak memory of each MIL head on synthetic bags.

Default problem: 400 bags x 10,000 tiles x 2,048-d float16 features (16.4 GB), as after a
ResNet-50 extract. Bags are generated on the device. ``--distinct N`` generates only N distinct
bags and lets the others share their storage (same shapes, same work per epoch, less memory):
needed on small-memory CPU machines; on an H100 all 400 fit (``--distinct 0`` = all distinct).

For each head it times one training epoch (after one warm-up epoch) in two modes: sampling
``--tiles-per-bag`` tiles per bag per step (the training default) and whole bags, plus one
whole-bag inference pass. Baseline measured in the same run: ``data`` = the same epoch's batches
built without a model (gather + pad + float32 conversion: the memory-traffic floor); ratios are
head time / data time. Peak memory: CUDA max allocated, or the process peak RSS on CPU.

    python benchmarks/bench_mil.py --device cpu --bags 40 --distinct 4       # CPU, reduced
    python benchmarks/bench_mil.py --device cuda                               # H100, full size
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsi_mil.mil.bags import BagSet  # noqa: E402
from wsi_mil.mil.config import TrainConfig  # noqa: E402
from wsi_mil.mil.registry import list_heads  # noqa: E402
from wsi_mil.mil.training import build_head, class_weights, predict_probs, train_epoch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB (Linux)


def make_bags(n_bags: int, n_tiles: int, dim: int, distinct: int, device: torch.device) -> list[torch.Tensor]:
    """``n_bags`` float16 bags (n_tiles, dim) on ``device``; only ``distinct`` of them own storage."""
    g = torch.Generator(device=device).manual_seed(0)
    k = n_bags if distinct <= 0 else min(distinct, n_bags)
    bank = [torch.randn(n_tiles, dim, generator=g, device=device, dtype=torch.float16) for _ in range(k)]
    return [bank[i % k] for i in range(n_bags)]


def data_epoch(bags: BagSet, positions: np.ndarray, cfg: TrainConfig, gen: torch.Generator) -> float:
    """Build every batch of one epoch without a model; returns seconds."""
    _sync(bags.device)
    t = time.perf_counter()
    acc = torch.zeros((), device=bags.device)
    for s in range(0, len(positions), cfg.batch_size):
        f, m = bags.sample_batch(positions[s:s + cfg.batch_size].tolist(), cfg.tiles_per_bag, gen)
        acc += f[:, :1, :1].sum()  # keep the work alive
    _sync(bags.device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bags", type=int, default=400)
    ap.add_argument("--tiles", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--distinct", type=int, default=0, help="distinct bag tensors (0 = all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--heads", default=",".join(list_heads()))
    ap.add_argument("--tiles-per-bag", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-bag training epoch")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    t0 = time.perf_counter()
    tensors = make_bags(args.bags, args.tiles, args.dim, args.distinct, device)
    _sync(device)
    bags = BagSet(tensors, device)
    storage = sum(t.numel() * 2 for t in {id(t): t for t in tensors}.values()) / 1e9
    print(f"bags: {args.bags} x {args.tiles} x {args.dim} float16 ({storage:.2f} GB distinct storage, "
          f"{args.distinct or args.bags} distinct), generated in {time.perf_counter() - t0:.1f} s")
    targets = np.arange(args.bags) % 2
    positions = np.arange(args.bags)
    modes = [("sampled", args.tiles_per_bag)] + ([] if args.no_whole else [("whole", None)])
    base = {}
    for mode, tpb in modes:
        cfg = TrainConfig(tiles_per_bag=tpb, batch_size=args.batch_size, device=device.type)
        data_epoch(bags, positions[: args.batch_size], cfg, torch.Generator().manual_seed(0))  # warm-up
        base[mode] = data_epoch(bags, positions, cfg, torch.Generator().manual_seed(0))
        print(f"data    {mode:7s} epoch {base[mode]:8.3f} s  (baseline: batches without a model)")
    print(f"{'head':10s} {'mode':8s} {'s/epoch':>9s} {'x data':>7s} {'peak GB':>8s}")
    for head_name in args.heads.split(","):
        for mode, tpb in modes:
            cfg = TrainConfig(head=head_name, tiles_per_bag=tpb, batch_size=args.batch_size, device=device.type)
            head = build_head(cfg, args.dim, 2, seed=0).to(device)
            opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr)
            w = class_weights(targets, 2, "balanced").to(device)
            y = torch.as_tensor(targets, device=device)
            rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
            train_epoch(head, opt, bags, positions[: max(args.batch_size, 1)], y, w, cfg, rng, gen)  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t = time.perf_counter()
            train_epoch(head, opt, bags, positions, y, w, cfg, rng, gen)
            _sync(device)
            dt = time.perf_counter() - t
            print(f"{head_name:10s} {mode:8s} {dt:9.3f} {dt / base[mode]:7.1f} {_peak_gb(device):8.2f}", flush=True)
        _sync(device)
        t = time.perf_counter()
        predict_probs(head, bags, positions.tolist(), cfg.eval_tiles_per_batch)
        _sync(device)
        print(f"{head_name:10s} {'predict':8s} {time.perf_counter() - t:9.3f} {'':7s} {_peak_gb(device):8.2f}", flush=True)


if __name__ == "__main__":
    main()
