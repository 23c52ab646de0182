"""``wsi-mil demo``: the whole pipeline on a synthetic cohort, with measured localisation.

1. ``make_cohort``: N pyramidal TIFF slides textured from the bundled real H&E sample, half of
   them with small planted lesions (ground truth known at pixel level);
2. ``run_study`` on :func:`demo_study` (the same settings as ``configs/demo.yaml``): tile,
   a brief SimCLR pretraining of a small encoder, extract, CHOWDER with K-fold cross-validation,
   predict, heatmaps and the HTML report;
3. :func:`evaluate_localisation`: how well the tile scores find the planted lesions.

Every figure printed is measured on this run; nothing is fixed in advance.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # keep `import wsi_mil.demo` light: the CLI reads DemoOptions defaults
    from wsi_mil.pipeline import PipelineReport
    from wsi_mil.study import StudyConfig

#: a tile counts as lesion when at least this share of its area is lesion; normal when none is
LESION_TILE_FRACTION = 0.5


@dataclass(frozen=True)
class DemoOptions:
    """Sizes of the demo: the defaults finish in well under 5 minutes on 2 CPU cores."""

    slides: int = 32
    size: int = 3072
    lesion_fraction: tuple[float, float] = (0.04, 0.08)
    seed: int = 0
    arch: str = "test_resnet"
    input_size: int = 48
    pretrain_epochs: int = 2
    pretrain_batch: int = 64
    folds: int = 4
    workers: int | None = None
    #: torch threads in this process: small models on 2 shared cores ran several times faster with 1
    #: (measured: CHOWDER cross-validation 95 s with 2 threads, 12 s with 1, on a loaded machine)
    torch_threads: int = 1


def demo_study(out_dir: str | Path, opts: DemoOptions = DemoOptions()) -> StudyConfig:
    """The demo's study: ``OUT/cohort`` -> ``OUT/job`` (same settings as ``configs/demo.yaml``)."""
    from wsi_mil.study import StudyConfig

    out = Path(out_dir)
    return StudyConfig.model_validate({
        "name": "demo",
        "slides": [str(out / "cohort")],
        "labels": str(out / "cohort" / "labels.csv"),
        "job": str(out / "job"),
        "device": "auto",
        "encoder": {"weights": "simclr"},
        "tiling": {"target_mpp": 2.0, "tile_size": 56, "min_tissue_fraction": 0.5},
        "pretrain": {
            "arch": opts.arch, "epochs": opts.pretrain_epochs, "batch_size": opts.pretrain_batch,
            "input_size": opts.input_size, "lr": 2e-3, "proj_hidden_dim": 256, "proj_dim": 64,
            "seed": opts.seed,
        },
        "extract": {"batch_size": 256, "num_workers": 0},
        "train": {
            "head": "chowder", "head_options": {"r": 3, "n_members": 5, "l2": 0.01}, "folds": opts.folds,
            "max_epochs": 100, "min_epochs": 5, "patience": 20, "batch_size": 8, "tiles_per_bag": None,
            "lr": 1e-2, "bootstrap": 500, "seed": opts.seed,
        },
        "heatmap": {"thumbnail_px": 1024, "overlay_width": 800, "montage_tiles": 6, "montage_cell": 96},
    })


@dataclass
class Localisation:
    """How well tile scores find the planted lesions (tiles of every slide; see ``describe``)."""

    tile_auc: float | None  # pooled over all slides: lesion tiles vs normal tiles
    mean_slide_tile_auc: float | None  # mean over positive slides of the within-slide tile AUC
    top_tile_hits: int  # positive slides whose top-scored tile is a lesion tile
    top_tile_touch: int  # positive slides whose top-scored tile overlaps a lesion at all
    n_positive: int
    n_lesion_tiles: int
    n_normal_tiles: int

    def describe(self) -> list[str]:
        f = (lambda v: "n/a" if v is None else f"{v:.3f}")
        share = (lambda k: f"{k}/{self.n_positive}" + (f" = {k / self.n_positive:.0%}" if self.n_positive else ""))
        return [
            f"tile AUC, lesion vs normal tiles, all slides: {f(self.tile_auc)} "
            f"({self.n_lesion_tiles} lesion tiles >= {LESION_TILE_FRACTION:.0%} lesion, "
            f"{self.n_normal_tiles} normal tiles)",
            f"tile AUC within each positive slide, mean: {f(self.mean_slide_tile_auc)}",
            f"top-scored tile is a lesion tile: {share(self.top_tile_hits)} positive slides; "
            f"overlaps a lesion: {share(self.top_tile_touch)}",
        ]


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, s))


def _read_tile_scores(path: Path, class_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(coords (N, 2) int64 level-0 x, y; scores (N,) float) from a predict ``.tiles`` CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    coords = np.array([[int(r["x"]), int(r["y"])] for r in rows], dtype=np.int64).reshape(-1, 2)
    scores = np.array([float(r[f"score_{class_name}"]) for r in rows], dtype=np.float64)
    return coords, scores


def evaluate_localisation(cohort: Path, job: Path, predictions_csv: Path, run_dir: Path) -> Localisation:
    """Compare the run's tile scores (``predict``'s ``.tiles`` CSVs) with the planted lesions.

    Scores are those of the positive class (class index 1). Lesion share of each tile comes
    from the ground-truth masks (:func:`wsi_mil.synth.lesion_fraction`).
    """
    from wsi_mil.mil.stage import tiles_dir_of
    from wsi_mil.jobdir import patch_store_path
    from wsi_mil.stores.patches import open_patch_store
    from wsi_mil.synth import lesion_fraction, load_lesion_mask

    run_cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    positive = str(run_cfg["class_names"][1])
    ys, ss, slide_aucs = [], [], []
    hits = touch = n_pos = 0
    for path in sorted(tiles_dir_of(predictions_csv).glob("*.csv")):
        slide_id = path.stem
        coords, scores = _read_tile_scores(path, positive)
        if len(scores) == 0:
            continue
        store = open_patch_store(patch_store_path(job, slide_id))
        mask, ds = load_lesion_mask(cohort, slide_id)
        frac = lesion_fraction(mask, ds, coords, float(store.attrs["tile_size_level0"]))
        keep = (frac >= LESION_TILE_FRACTION) | (frac == 0)
        ys.append((frac[keep] >= LESION_TILE_FRACTION).astype(np.int64))
        ss.append(scores[keep])
        if mask.any():
            n_pos += 1
            top = int(np.argmax(scores))
            hits += int(frac[top] >= LESION_TILE_FRACTION)
            touch += int(frac[top] > 0)
            a = _auc(ys[-1], ss[-1])
            if a is not None:
                slide_aucs.append(a)
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    s = np.concatenate(ss) if ss else np.zeros(0)
    return Localisation(
        tile_auc=_auc(y, s) if len(y) else None,
        mean_slide_tile_auc=float(np.mean(slide_aucs)) if slide_aucs else None,
        top_tile_hits=hits, top_tile_touch=touch, n_positive=n_pos,
        n_lesion_tiles=int(y.sum()), n_normal_tiles=int(len(y) - y.sum()),
    )


@dataclass
class DemoResult:
    """What the demo did and measured."""

    report: PipelineReport
    localisation: Localisation | None
    seconds: dict[str, float]

    def lines(self) -> list[str]:
        auc = self.report.auc
        ci = self.report.auc_ci
        out = [f"slide AUC (cross-validated, out-of-fold): {'n/a' if auc is None else f'{auc:.3f}'}"
               + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")]
        if self.localisation is not None:
            out += self.localisation.describe()
            out.append("(tile scores: the final CHOWDER model, trained on these slides' labels only; "
                       "tile labels were never used)")
        out.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        return out


def run_demo(out_dir: str | Path, opts: DemoOptions = DemoOptions(), progress: bool = True,
             log: Any = print) -> DemoResult:
    """Synthesise the cohort, run the demo study, measure localisation. Resumable like ``run``."""
    import torch

    out = Path(out_dir)
    cohort = out / "cohort"
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, opts.torch_threads))
    try:
        return _run_demo(out, cohort, opts, progress, log)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, cohort: Path, opts: DemoOptions, progress: bool, log: Any) -> DemoResult:
    from wsi_mil.pipeline import run_study
    from wsi_mil.synth import make_cohort

    t0 = time.perf_counter()
    log(f"[demo] synthetic cohort: {opts.slides} slides of {opts.size} x {opts.size} px at 0.5 um/px from the "
        f"bundled H&E sample -> {cohort}")
    make_cohort(cohort, opts.slides, positive_fraction=0.5, size=(opts.size, opts.size), mpp=0.5,
                lesion_fraction=opts.lesion_fraction, seed=opts.seed)
    t1 = time.perf_counter()
    cfg = demo_study(out, opts)
    report = run_study(cfg, workers=opts.workers, progress=progress, log=log)
    t2 = time.perf_counter()
    loc = None
    if report.predictions_csv is not None and report.run_dir is not None:
        loc = evaluate_localisation(cohort, report.job, report.predictions_csv, report.run_dir)
    seconds = {"cohort": t1 - t0, "pipeline": t2 - t1, "total": time.perf_counter() - t0}
    return DemoResult(report, loc, seconds)
