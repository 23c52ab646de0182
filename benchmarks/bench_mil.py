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

Second mode, ``cohort``: the whole pipeline on a synthetic image cohort with ground truth
(synth -> tile -> extract -> train every head -> tile AUC against the lesion masks). A quarter of
the slides form a ``split=test`` set: slide AUC is reported out-of-fold (CV on the training
slides) and on the test slides (final model); tile AUC is over the test slides only.

    python benchmarks/bench_mil.py cohort --slides 40 --work /tmp/mil_cohort --encoder resnet18

Third mode, ``bags``: the same comparison on synthetic feature bags (no images; lesion tiles
shifted in a few dimensions, 1-5 % of a bag, slide-level offsets):

    python benchmarks/bench_mil.py bags --slides 200 --work /tmp/mil_bags
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsi_mil.mil.bags import BagSet  # noqa: E402
from wsi_mil.mil.config import TrainConfig  # noqa: E402
from wsi_mil.mil.heads import list_heads  # noqa: E402
from wsi_mil.mil.training import build_head, class_weights, predict_probs, train_epoch  # noqa: E402


def add_training_args(ap: argparse.ArgumentParser) -> None:
    """The options both cohort kinds share: heads, folds, device, seed, train overrides."""
    ap.add_argument("--heads", default=",".join(list_heads()), help="comma-separated registered heads")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="train overrides, e.g. lr=0.01")


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
    t, c = time.perf_counter(), time.process_time()
    acc = torch.zeros((), device=bags.device)
    for s in range(0, len(positions), cfg.batch_size):
        f, m = bags.sample_batch(positions[s:s + cfg.batch_size].tolist(), cfg.tiles_per_bag, gen)
        acc += f[:, :1, :1].sum()  # keep the work alive
    _sync(bags.device)
    return time.perf_counter() - t, time.process_time() - c


def cohort_main(argv: list[str]) -> None:
    """Synthetic image cohort -> every head -> slide and tile AUC table (markdown)."""
    from wsi_mil.cli import main as cli
    from wsi_mil.evaluation.truth import synth_truth

    ap = argparse.ArgumentParser(prog="bench_mil.py cohort")
    ap.add_argument("--slides", type=int, default=40)
    ap.add_argument("--size", type=int, default=3072, help="slide side in level-0 px (0.5 mpp)")
    ap.add_argument("--lesion-fraction", type=float, nargs=2, default=(0.01, 0.05))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--weights", default="random")
    add_training_args(ap)
    ap.add_argument("--reuse-features", action="store_true", help="skip tile and extract when features exist")
    args = ap.parse_args(argv)
    work: Path = args.work
    cohort, job = work / "cohort", work / "job"
    t = time.perf_counter()

    def step(name: str, cmd: list[str]) -> None:
        t0 = time.perf_counter()
        code = cli(cmd)
        print(f"[{name}] exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
        if code != 0:
            raise SystemExit(f"{name} failed: {' '.join(cmd)}")

    if not (cohort / "labels.csv").is_file():
        step("synth", ["synth", "-o", str(cohort), "-n", str(args.slides), "--size", str(args.size), str(args.size),
                       "--lesion-fraction", *map(str, args.lesion_fraction), "--seed", str(args.seed)])
    if not (args.reuse_features and any((job / "features").glob("*/*.h5"))):
        step("tile", ["tile", str(cohort), "-o", str(job), "--workers", "0", "--no-progress"])
        step("extract", ["extract", str(job), "--encoder", args.encoder, "--weights", args.weights,
                         "--device", args.device])
    feats = sorted(p for p in (job / "features").iterdir() if p.is_dir())[0]
    lines = (cohort / "labels.csv").read_text().strip().splitlines()
    labelled = [lines[0] + ",split"] + [f"{row},{'test' if i % 4 == 3 else 'train'}" for i, row in enumerate(lines[1:])]
    labels = work / "labels_split.csv"
    labels.write_text("\n".join(labelled) + "\n")
    truth = synth_truth(cohort, job)
    test_feats = work / "test_features"
    test_feats.mkdir(exist_ok=True)
    for i, row in enumerate(lines[1:]):
        sid = row.split(",")[0]
        link = test_feats / f"{sid}.h5"
        if i % 4 == 3 and not link.exists():
            link.symlink_to((feats / f"{sid}.h5").resolve())
    print(f"\nfeatures: {feats.name}; {args.slides} slides; pipeline {time.perf_counter() - t:.0f} s\n")
    compare_heads(feats, labels, test_feats, truth, args)


def compare_heads(feats: Path, labels: Path, test_feats: Path, truth, args: argparse.Namespace) -> None:
    """Train every head with CV (+ final model), print a markdown table of slide and tile AUC."""
    from wsi_mil.cli import main as cli
    from wsi_mil.evaluation.tiles import evaluate_tiles
    from wsi_mil.mil import load_model_run

    table = []
    for head in args.heads.split(","):
        run = args.work / "runs" / head
        t0 = time.perf_counter()
        code = cli(["train", str(feats), "--labels", str(labels), "--head", head, "-o", str(run),
                    "--folds", str(args.folds), "--device", args.device, "--seed", str(args.seed),
                    "--overwrite", "--quiet", *sum((["--set", s] for s in args.sets), [])])
        if code != 0:
            raise SystemExit(f"train {head} failed")
        m = json.loads((run / "metrics.json").read_text())
        ev = evaluate_tiles(load_model_run(run), test_feats, truth)
        oof, ci = m["out_of_fold"]["metrics"], m["out_of_fold"]["ci"] or {}
        table.append((head, oof["auc"], ci.get("auc"), m.get("test", {}).get("metrics", {}).get("auc"),
                      ev.tile_auc_mean, ev.tile_auc_pooled, ev.n_lesion_tiles, time.perf_counter() - t0))
        print(f"[train {head}] {time.perf_counter() - t0:.0f} s", flush=True)
    print("\n| head | slide AUC out-of-fold [95% CI] | slide AUC test | tile AUC test (mean per slide) "
          "| tile AUC test (pooled) | lesion tiles (test) | train s |")
    print("|---|---|---|---|---|---|---|")
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for head, auc, ci, test_auc, tmean, tpool, nles, secs in table:
        band = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        print(f"| {head} | {f(auc)}{band} | {f(test_auc)} | {f(tmean)} | {f(tpool)} | {nles} | {secs:.0f} |")


def bags_main(argv: list[str]) -> None:
    """Synthetic feature bags (no images) -> every head -> the same table as ``cohort``."""
    from wsi_mil.mil.synthbags import make_synthetic_bags, write_synthetic_cohort

    ap = argparse.ArgumentParser(prog="bench_mil.py bags")
    ap.add_argument("--slides", type=int, default=200)
    ap.add_argument("--tiles", type=int, nargs=2, default=(200, 1000))
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--work", type=Path, required=True)
    add_training_args(ap)
    args = ap.parse_args(argv)
    co = make_synthetic_bags(n_slides=args.slides, tiles=tuple(args.tiles), dim=args.dim, seed=args.seed)
    feats, _ = write_synthetic_cohort(co, args.work / "features" / "synthetic", labels_csv=args.work / "labels.csv")
    labels = args.work / "labels_split.csv"
    rows = [f"{s},{y},{c},{'test' if i % 4 == 3 else 'train'}"
            for i, (s, y, c) in enumerate(zip(co.slide_ids, co.labels, co.case_ids))]
    labels.write_text("slide_id,label,case_id,split\n" + "\n".join(rows) + "\n")
    test_feats = args.work / "test_features"
    test_feats.mkdir(exist_ok=True)
    for i, sid in enumerate(co.slide_ids):
        if i % 4 == 3 and not (test_feats / f"{sid}.h5").exists():
            (test_feats / f"{sid}.h5").symlink_to((feats / f"{sid}.h5").resolve())
    lesion = dict(zip(co.slide_ids, co.lesion))
    print(f"{args.slides} synthetic bags, {args.tiles[0]}-{args.tiles[1]} tiles, {args.dim}-d, lesions 1-5 %")
    compare_heads(feats, labels, test_feats,
                  lambda sid, coords: lesion[sid][coords[:, 0] // 224].astype(np.float32), args)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("cohort", "bags"):
        (cohort_main if sys.argv[1] == "cohort" else bags_main)(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bags", type=int, default=400)
    ap.add_argument("--tiles", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--distinct", type=int, default=0, help="distinct bag tensors (0 = all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--heads", default=",".join(list_heads()), help="comma-separated registered heads")
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
        base[mode], cpu = data_epoch(bags, positions, cfg, torch.Generator().manual_seed(0))
        print(f"data    {mode:7s} epoch {base[mode]:8.3f} s wall, {cpu:8.3f} s CPU (baseline: batches without a model)")
    print(f"{'head':10s} {'mode':8s} {'s/epoch':>9s} {'CPU s':>8s} {'x data':>7s} {'peak GB':>8s}")
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
            t, c = time.perf_counter(), time.process_time()
            train_epoch(head, opt, bags, positions, y, w, cfg, rng, gen)
            _sync(device)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            print(f"{head_name:10s} {mode:8s} {dt:9.3f} {dc:8.2f} {dt / base[mode]:7.1f} {_peak_gb(device):8.2f}",
                  flush=True)
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        predict_probs(head, bags, positions.tolist(), cfg.eval_tiles_per_batch)
        _sync(device)
        print(f"{head_name:10s} {'predict':8s} {time.perf_counter() - t:9.3f} {time.process_time() - c:8.2f} "
              f"{'':7s} {_peak_gb(device):8.2f}", flush=True)


if __name__ == "__main__":
    main()
