"""One CHOWDER training step with its hidden tile scorer: autograd's plain path vs the fast ones.

The fused scorer (``wsi_mil/mil/heads/fused_scorer.py``) runs a hidden tile scorer on narrow features in
cache-sized chunks of real tiles; the sparse first layer (``wsi_mil/mil/heads/sparse_linear.py``) reads wide,
very sparse features (web_recommendation_1's word counts) as sums of weight columns. Baseline measured in the
same run: the plain autograd path (what ``fused_scorer.MAX_DIM_SHARE = 0`` and ``sparse_linear.MAX_DENSITY = -1``
give), alternated with the fast one in ``--rounds`` rounds of ``--steps`` steps on the same batch; the median ms
per step of each and their ratio, plus peak memory. Batches are shaped like the classic MIL sets' (16 bags of
random sizes in their range, their feature width; web-like: 20 non-zero values per tile, as web's 0.34 %),
CHOWDER's defaults on them (10 members x 64 ReLU units, ``r`` 0.5)::

    OMP_NUM_THREADS=1 python benchmarks/bench_tile_scorer.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import machine, peak_rss_mb  # noqa: E402

from wsi_mil.mil.config import TrainConfig  # noqa: E402
from wsi_mil.mil.heads import fused_scorer, sparse_linear  # noqa: E402
from wsi_mil.mil.heads.chowder import Chowder  # noqa: E402
from wsi_mil.mil.heads.options import ChowderOptions  # noqa: E402
from wsi_mil.mil.training import logits_loss, make_optimizer  # noqa: E402

#: (name, feature width, smallest and largest bag, non-zero values per tile or None for dense) of the classic
#: sets' batches
SHAPES = (("protein-like", 9, 35, 189, None), ("birds-like", 38, 2, 43, None), ("corel-like", 9, 2, 13, None),
          ("web-like", 5863, 4, 131, 20))


def features(batch: int, n: int, dim: int, nonzero: int | None, gen: torch.Generator) -> torch.Tensor:
    """(batch, n, dim) standard normal features, or with ``nonzero`` that many uniform (0, 1] values per tile."""
    if nonzero is None:
        return torch.randn(batch, n, dim, generator=gen)
    x = torch.zeros(batch * n, dim)
    cols = torch.randint(0, dim, (batch * n, nonzero), generator=gen)
    x.scatter_(1, cols, 1.0 - torch.rand(batch * n, nonzero, generator=gen))
    return x.reshape(batch, n, dim)


def ms_per_step(dim: int, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """ms per step over ``steps`` AdamW steps of a fresh default CHOWDER (after 5 warm-up steps)."""
    torch.manual_seed(0)
    head = Chowder(dim, 2, ChowderOptions(tile_hidden=64))
    opt = make_optimizer(list(head.parameters()), TrainConfig(lr=3e-3))

    weights = torch.ones(2)

    def step() -> None:
        loss = logits_loss(head, head.member_logits(x, mask, False), y, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    fast = (fused_scorer.MAX_DIM_SHARE, sparse_linear.MAX_DENSITY)
    for name, dim, low, high, nonzero in SHAPES:
        gen = torch.Generator().manual_seed(0)
        lengths = torch.randint(low, high + 1, (args.batch,), generator=gen)
        n = int(lengths.max())
        x = features(args.batch, n, dim, nonzero, gen)
        mask = torch.arange(n)[None] < lengths[:, None]
        y = torch.randint(0, 2, (args.batch,), generator=gen)
        times: dict[str, list[float]] = {"plain": [], "fast": []}
        for _ in range(args.rounds):
            for label, (share, density) in (("plain", (0.0, -1.0)), ("fast", fast)):
                fused_scorer.MAX_DIM_SHARE, sparse_linear.MAX_DENSITY = share, density
                times[label].append(ms_per_step(dim, x, mask, y, args.steps))
        fused_scorer.MAX_DIM_SHARE, sparse_linear.MAX_DENSITY = fast
        plain, ours = statistics.median(times["plain"]), statistics.median(times["fast"])
        path = "sparse" if nonzero is not None else "fused"
        print(f"{name:13s} (B {args.batch}, N {n}, D {dim}, {float(mask.float().mean()):.0%} real): "
              f"plain {plain:.1f} ms/step, {path} {ours:.1f} ms/step, speed-up {plain / ours:.2f}x", flush=True)
    print(f"peak RSS {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
