"""MIL training and inference on the GPU (``-m gpu``); also runs on CPU when there is none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.mil import create_head, load_model_run
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.stage import run_predict, run_train
from wsi_mil.mil.synthbags import make_synthetic_bags, write_synthetic_cohort

pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("name", ["weldon", "chowder", "mean", "max", "attention"])
def test_head_matches_cpu_on_device(name: str) -> None:
    torch.manual_seed(0)
    head = create_head(name, 32, 3).eval()
    x = torch.randn(4, 50, 32)
    mask = torch.rand(4, 50) > 0.3
    ref_logits, ref_tiles = head(x, mask)
    head = head.to(DEVICE)
    logits, tiles = head(x.to(DEVICE), mask.to(DEVICE))
    torch.testing.assert_close(logits.cpu(), ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tiles.cpu(), ref_tiles, atol=1e-4, rtol=1e-4)


def test_bags_stay_on_device_and_batches_are_built_there() -> None:
    bags = [np.random.default_rng(i).standard_normal((100 + i, 8)).astype(np.float16) for i in range(5)]
    bs = BagSet(bags, DEVICE)
    assert bs.on_device and all(b.device.type == DEVICE for b in bs.bags)
    feats, mask = bs.sample_batch([0, 4], 64, torch.Generator().manual_seed(0))
    assert feats.device.type == DEVICE and feats.dtype == torch.float32 and mask.sum().item() == 128


def test_train_and_predict_on_device(tmp_path: Path) -> None:
    co = make_synthetic_bags(n_slides=40, tiles=(200, 400), dim=32, lesion_fraction=(0.03, 0.06), seed=5)
    feats, labels = write_synthetic_cohort(co, tmp_path / "f", labels_csv=tmp_path / "labels.csv")
    cfg = TrainConfig(head="chowder", folds=2, lr=0.01, max_epochs=30, batch_size=8, tiles_per_bag=128,
                      bootstrap=50, device=DEVICE, tune="off")
    summary = run_train(feats, labels, tmp_path / "run", cfg)
    assert summary.metrics["out_of_fold"]["metrics"]["auc"] > 0.8
    run_predict(tmp_path / "run", feats, tmp_path / "p.csv", device=DEVICE)
    cpu = load_model_run(tmp_path / "run").predict_bag(co.features[0])
    dev = load_model_run(tmp_path / "run", device=DEVICE).predict_bag(co.features[0])
    np.testing.assert_allclose(dev.probs, cpu.probs, atol=1e-4)
    np.testing.assert_allclose(dev.tile_scores, cpu.tile_scores, atol=1e-4)
