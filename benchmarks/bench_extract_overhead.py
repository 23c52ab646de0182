"""Extraction pipeline overhead, on any machine: our pipeline around a paced stand-in encoder.

``bench_extract.py`` divides our end-to-end rate by the encoder's own rate. What it cannot show
apart is the time the pipeline adds around the encoder: opening stores, waiting for the first
batch, copies, stalls between slides, the last write. Here the encoder is replaced by a stand-in
"device" that consumes tiles at a fixed rate on its own thread, sleeping (so, like a GPU, it
leaves the CPU to the loader), with at most ``max_in_flight`` batches queued, as on CUDA. The
pipeline around it is the real one (``prepare_slides`` + ``run_slides``: loader, runner, atomic
HDF5 writes), so

    ratio = our tiles/s / the stand-in's rate        (1.0 = the pipeline adds nothing)
    lost  = wall seconds - tiles / rate              (split: opening stores, first batch, the rest)

The default rate is 0.71 x our threaded loader alone on this machine: the proportion of
ViT-S/16's limit (19,632 img/s) to our loader (27,543 tiles/s) measured on an H100 node, so the
pipeline is exercised as it is there. Prints one row per loader and peak host memory.

Usage:
  python benchmarks/bench_extract_overhead.py                      # 16 stores x 1,024 tiles, batch 512
  python benchmarks/bench_extract_overhead.py --rate 2000 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch  # noqa: E402
from _common import machine  # noqa: E402
from bench_extract import DEFAULT_SLIDE, PeakHostMemory, ours_end_to_end, ours_loader_only, prepare_stores  # noqa: E402

from wsi_mil.encoders.dataconfig import DataConfig  # noqa: E402
from wsi_mil.extract.engine import InferenceEngine  # noqa: E402
from wsi_mil.stain.base import FittedStain  # noqa: E402

#: ViT-S/16 limit / our threaded loader alone, both on one H100 node (BENCHMARKS.md)
H100_VIT_S_TO_LOADER = 19_632 / 27_543


class PacedEngine(InferenceEngine):
    """An engine whose "device" embeds ``rate`` tiles/s on its own thread (sleeping, GIL released).

    ``embed`` queues the batch and returns (n, ``dim``) zeros at once, as a CUDA launch returns
    before the work is done; it blocks while ``max_in_flight`` batches are queued.
    """

    def __init__(self, rate: float, batch_size: int, dim: int = 384, max_in_flight: int = 3) -> None:
        super().__init__(torch.nn.Identity(), DataConfig((3, 224, 224), (0.0,) * 3, (1.0,) * 3, "bilinear"),
                         "cpu", batch_size, precision="fp32")
        self.rate, self.dim = float(rate), dim
        self._queue: queue.Queue[int] = queue.Queue(maxsize=max_in_flight)
        self._device = threading.Thread(target=self._serve, daemon=True, name="paced-device")
        self._device.start()

    def _serve(self) -> None:
        while True:
            n = self._queue.get()
            time.sleep(n / self.rate)
            self._queue.task_done()

    def embed(self, tiles: torch.Tensor, stain: FittedStain | None = None) -> torch.Tensor:
        """Queue ``tiles`` (n, S, S, 3) for the paced device; (n, D) zeros (``stain`` is ignored)."""
        n = int(tiles.shape[0])
        self._queue.put(n)
        return torch.zeros((n, self.dim), dtype=self.out_dtype)

    def synchronize(self) -> None:
        """Wait until the stand-in device has consumed everything queued."""
        self._queue.join()


def measured_rate(engine: PacedEngine, batch: int, seconds: float = 2.0) -> float:
    """The stand-in's own tiles/s (its sleeps overshoot a little): the baseline of the ratio."""
    tiles = torch.empty((batch, 1, 1, 3), dtype=torch.uint8)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        engine.embed(tiles)
        n += batch
    engine.synchronize()
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slides", type=int, default=16, help="patch stores [16]")
    p.add_argument("--tiles-per-slide", type=int, default=1024, help="[1024]")
    p.add_argument("--batch-size", type=int, default=512, help="[512]")
    p.add_argument("--threads", type=int, default=None, help="loader threads/processes [cores]")
    p.add_argument("--rate", type=float, default=None,
                   help="stand-in tiles/s [0.71 x our threaded loader alone, as ViT-S/16 on an H100]")
    p.add_argument("--loaders", default="threads,processes", help="loaders to run, comma-separated")
    p.add_argument("--repeats", type=int, default=2, help="end-to-end runs per loader; the best is kept [2]")
    p.add_argument("--out", type=Path, default=ROOT / "bench_output" / "extract_overhead")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    threads = args.threads or cores
    print(f"machine: {machine()}")
    t = time.perf_counter()
    _, stores = prepare_stores(DEFAULT_SLIDE, args.out, args.slides, args.tiles_per_slide)
    print(f"{args.slides} stores x {args.tiles_per_slide} tiles of 224 px prepared in {time.perf_counter() - t:.1f} s; "
          f"batch {args.batch_size}, {threads} loader threads/processes")
    alone = {mode: ours_loader_only(stores, torch.device("cpu"), args.batch_size, threads, mode)
             for mode in args.loaders.split(",")}
    for mode, (tps, first) in alone.items():
        print(f"loader alone ({mode}): {tps:,.0f} tiles/s, first batch after {first * 1000:.0f} ms")
    threads_tps = alone.get("threads", next(iter(alone.values())))[0]
    rate = args.rate or H100_VIT_S_TO_LOADER * threads_tps
    engine = PacedEngine(rate, args.batch_size)
    limit = measured_rate(engine, args.batch_size)
    print(f"stand-in device: set to {rate:,.0f} tiles/s, measured {limit:,.0f} tiles/s (the limit)")

    rows = []
    for mode in args.loaders.split(","):
        best: dict[str, float] | None = None
        with PeakHostMemory() as mem:
            for _ in range(max(1, args.repeats)):
                run = ours_end_to_end(engine, stores, args.out / "features", threads, "paced",
                                      {"encoder_id": "paced"}, engine.dim, loader=mode)
                if best is None or run["seconds"] < best["seconds"]:
                    best = run
        assert best is not None
        ideal = best["tiles"] / limit
        row = {"loader": mode, "tiles_per_s": best["tiles"] / best["seconds"], "limit": limit,
               "ratio": ideal / best["seconds"], "lost_s": best["seconds"] - ideal, **best,
               "loader_alone": alone[mode][0], "loader_first_batch_s": alone[mode][1], "peak_host_gb": mem.peak_gb}
        rows.append(row)
        print(f"{mode}: {row['tiles_per_s']:,.0f} tiles/s = {row['ratio']:.3f} of the limit; lost {row['lost_s']:.2f} s "
              f"(opening stores {best['open_s']:.2f} s, first batch {best['first_batch_s']:.2f} s, "
              f"the rest {row['lost_s'] - best['open_s'] - best['first_batch_s']:.2f} s); "
              f"peak host {mem.peak_gb:.2f} GB")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rate": rate, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
