"""The whole pipeline on the synthetic image cohort: tile -> extract -> train -> predict -> tile AUC.

Marked slow (tiling and a random-init ResNet-18 over every tile take minutes on 2 CPU cores). The
8-slide fixture is far too small to claim accuracy; the accuracy table on a 40-slide cohort is in
BENCHMARKS.md (``benchmarks/bench_mil.py cohort``). This test checks that the stages fit together:
feature files from ``extract`` train, predict and evaluate against the lesion masks.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from wsi_mil.cli import main
from wsi_mil.evaluation.tiles import evaluate_tiles
from wsi_mil.evaluation.truth import synth_truth
from wsi_mil.mil import load_model_run

pytestmark = pytest.mark.slow


def test_pipeline_on_synthetic_cohort(synth_cohort: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    assert main(["tile", str(synth_cohort), "-o", str(job), "--workers", "0", "--no-progress"]) == 0
    assert main(["extract", str(job), "--encoder", "resnet18", "--weights", "random", "--device", "cpu"]) == 0
    feats = next(p for p in (job / "features").iterdir() if p.is_dir())
    run = tmp_path / "run"
    assert main(["train", str(feats), "--labels", str(synth_cohort / "labels.csv"), "--head", "weldon",
                 "-o", str(run), "--folds", "2", "--device", "cpu", "--quiet", "--set", "max_epochs=5",
                 "--set", "min_epochs=1", "--set", "bootstrap=20", "--tune", "off"]) == 0
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(feats), "-o", str(out), "--quiet"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["prob_1"] for r in rows)
    model = load_model_run(run)
    assert model.encoder_id == feats.name
    ev = evaluate_tiles(model, feats, synth_truth(synth_cohort, job))
    assert ev.n_slides == 4 and ev.n_lesion_tiles > 0 and ev.tile_auc_pooled is not None
