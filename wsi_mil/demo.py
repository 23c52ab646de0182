"""``wsi-mil demo``: the whole pipeline on a synthetic cohort, with measured localisation.

1. ``make_cohort``: N pyramidal TIFF slides textured from the bundled real H&E sample, half of
   them with small planted lesions (ground truth known at pixel level);
2. ``run_study`` on :func:`demo_study` (the same settings as ``configs/demo.yaml``): tile,
   a brief SimCLR pretraining of a small encoder, extract, CHOWDER with K-fold cross-validation,
   predict, heatmaps and the HTML report;
3. :func:`wsi_mil.evaluation.localisation.evaluate_localisation`: how well the tile scores find the
   planted lesions.

Every figure printed is measured on this run; nothing is fixed in advance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep `import wsi_mil.demo` light: the CLI reads DemoOptions defaults
    from wsi_mil.evaluation.localisation import Localisation
    from wsi_mil.pipeline import PipelineReport
    from wsi_mil.study import StudyConfig


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
    from wsi_mil.evaluation.localisation import evaluate_localisation
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
