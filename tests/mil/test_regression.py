"""Regression task: metrics, labels, every head learning a continuous target, a run with its figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_absolute_error

from wsi_mil.errors import LabelsError
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.heads import list_heads
from wsi_mil.mil.modelrun import load_model_run
from wsi_mil.mil.registry import create_head
from wsi_mil.mil.regression import regression_loss, regression_metrics
from wsi_mil.mil.stage import run_predict, run_train
from wsi_mil.mil.synthtargets import make_target_cohort, write_target_cohort
from wsi_mil.mil.targets import read_targets
from wsi_mil.mil.training import fit, predict_probs


def test_regression_metrics_match_references() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    p = y + rng.normal(scale=0.5, size=50)
    m = regression_metrics(y, p)
    assert m["pearson_r"] == pytest.approx(pearsonr(y, p)[0])
    assert m["spearman_r"] == pytest.approx(spearmanr(y, p)[0])
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert m["rmse"] == pytest.approx(float(np.sqrt(np.mean((y - p) ** 2))))
    assert regression_metrics(y, np.ones(50))["pearson_r"] is None


def test_regression_losses() -> None:
    pred = torch.tensor([[0.0, 1.0], [3.0, 2.0]])
    target = torch.tensor([0.5, 0.0])
    assert float(regression_loss(pred, target, "mse")) == pytest.approx((0.25 + 0.25 + 9 + 4) / 4)
    huber = (0.125 + 0.125 + (3 - 0.5) + (2 - 0.5)) / 4  # delta 1: quadratic below 1, linear above
    assert float(regression_loss(pred, target, "huber")) == pytest.approx(huber)


@pytest.mark.parametrize(("body", "message"), [
    ("a,1.5\nb,high\n", r"'target' is not a finite number on line\(s\) 3 \('high'\)"),
    ("a,1.5\nb,nan\nc,inf\n", r"line\(s\) 3, 4"),
    ("a,2\nb,2\n", "every 'target' is 2"),
    ("a,1\nb,\n", r"empty 'target' on line\(s\) 3"),
])
def test_regression_label_errors_name_lines(tmp_path: Path, body: str, message: str) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("slide_id,target\n" + body)
    with pytest.raises(LabelsError, match=message):
        read_targets(p, "regression")


def test_every_head_learns_regression(one_torch_thread: None) -> None:
    """Each head fitted by MSE predicts held-out slides' lesion-driven target (Pearson r > 0.8; not Spearman:
    half the slides are lesion-free, and their order is the target noise's, 0.05 on a 0-1.5 scale)."""
    tc = make_target_cohort(90, seed=4, tiles=(30, 60), dim=8, shift=4.0, slide_noise=0.2, noise=0.05,
                            lesion_fraction=(0.05, 0.15), positive_fraction=0.5)
    bags = BagSet(tc.cohort.features, torch.device("cpu"))
    train, held = np.arange(60), np.arange(60, 90)
    for name in list_heads():
        cfg = TrainConfig(task="regression", head=name, tune="off", max_epochs=30, lr=1e-2)
        torch.manual_seed(0)
        head = create_head(name, 8, 1, cfg.head_options)
        fit(head, bags, tc.target, train, train[:0], cfg, seed=0)
        pred = predict_probs(head, bags, held.tolist(), 1 << 16)[:, 0]
        m = regression_metrics(tc.target[held], pred)
        assert m["pearson_r"] is not None and m["pearson_r"] > 0.8, (name, m)
        assert abs(pred.mean() - tc.target[held].mean()) < 0.5 * tc.target.std(), (name, m)  # the labels' unit


def test_regression_run_and_predict(tmp_path: Path, one_torch_thread: None) -> None:
    tc = make_target_cohort(30, seed=3, tiles=(20, 40), dim=8, shift=4.0)
    feats, labels = write_target_cohort(tc, tmp_path / "feat", "regression", tmp_path / "labels.csv")
    text = labels.read_text().splitlines()  # a site column is passed through; a test split is scored
    rows = [text[0] + ",site,split"] + [f"{r},{'AB'[i % 2]},{'test' if i < 6 else 'train'}"
                                        for i, r in enumerate(text[1:])]
    labels.write_text("\n".join(rows) + "\n")
    cfg = TrainConfig(task="regression", regression_loss="huber", head="mean", folds=3, max_epochs=8, min_epochs=2,
                      patience=2, tune="off", bootstrap=20)
    s = run_train(feats, labels, tmp_path / "run", cfg)
    assert s.metrics["task"] == "regression" and s.metrics["test"]["n_slides"] == 6
    assert set(s.metrics["out_of_fold"]["metrics"]) == {"pearson_r", "spearman_r", "mae", "rmse"}
    run = tmp_path / "run"
    assert (run / "predicted_vs_true.png").read_bytes()[:4] == b"\x89PNG"
    preds = (run / "predictions.csv").read_text().splitlines()
    assert preds[0] == "slide_id,target,site,split,fold,value"
    assert json.loads((run / "config.json").read_text())["task"] == "regression"
    assert load_model_run(run).task == "regression"
    run_predict(run, feats, tmp_path / "pred.csv")
    lines = (tmp_path / "pred.csv").read_text().splitlines()
    assert lines[0] == "slide_id,n_tiles,value"
    values = np.array([float(x.split(",")[2]) for x in lines[1:]])
    assert abs(values.mean() - tc.target.mean()) < tc.target.std()  # in the labels' unit, not standardised


def test_one_output_heads_and_fold_ensemble() -> None:
    """n_classes = 1: (B, 1) outputs in the targets' unit; a fold ensemble averages its members' outputs."""
    from wsi_mil.mil.heads.ensemble import FoldEnsemble

    torch.manual_seed(0)
    x, mask = torch.randn(3, 7, 5), torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    members = []
    for shift in (1.0, 3.0):
        h = create_head("chowder", 5, 1, TrainConfig(head="chowder").head_options).eval()
        h.set_output_scaling(shift, 2.0)
        members.append(h)
    outs = [m(x, mask) for m in members]
    assert outs[0][0].shape == (3, 1) and outs[0][1].shape == (3, 7, 1)
    raw = members[0].member_logits(x, mask)  # (B, E, 1), standardised units: the mean of members x 2 + shift
    torch.testing.assert_close(outs[0][0], raw.mean(dim=1) * 2.0 + 1.0)
    assert (outs[0][1][1, 4:] == 0).all()  # padding
    ens_slide, ens_tiles = FoldEnsemble(members)(x, mask)
    torch.testing.assert_close(ens_slide, (outs[0][0] + outs[1][0]) / 2)
    torch.testing.assert_close(ens_tiles, (outs[0][1] + outs[1][1]) / 2)
    with pytest.raises(ValueError, match="one-output"):
        create_head("weldon", 5, 2, TrainConfig(head="weldon").head_options).set_output_scaling(0.0, 1.0)
