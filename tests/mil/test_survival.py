"""Survival task: Cox loss, c-indices, Kaplan-Meier and log-rank against references; labels; training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from lifelines.utils import concordance_index
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.util import Surv

from wsi_mil.errors import LabelsError
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.heads import list_heads
from wsi_mil.mil.plots import km_figure
from wsi_mil.mil.registry import create_head
from wsi_mil.mil.stage import run_predict, run_train
from wsi_mil.mil.survival import (
    cox_loss,
    harrell_c,
    kaplan_meier,
    logrank_test,
    risk_groups,
    uno_c,
)
from wsi_mil.mil.synthtargets import make_target_cohort, write_target_cohort
from wsi_mil.mil.targets import read_targets
from wsi_mil.mil.training import event_batches, fit, predict_probs


def _data(n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    time = rng.exponential(1.0, n)
    if ties:
        time = np.round(time * 4) / 4 + 0.25  # many tied times, all > 0
    event = (rng.uniform(size=n) < 0.7).astype(int)
    risk = rng.normal(size=n)
    if ties:
        risk = np.round(risk)  # tied risks too
    return time, event, risk


def _cox_reference(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Negative Breslow partial log-likelihood per event, written as loops."""
    total = 0.0
    for i in range(len(time)):
        if event[i]:
            denom = sum(np.exp(risk[j]) for j in range(len(time)) if time[j] >= time[i])
            total += np.log(denom) - risk[i]
    return total / event.sum()


@pytest.mark.parametrize("ties", [False, True])
def test_cox_loss_matches_numpy_reference(ties: bool) -> None:
    time, event, risk = _data(40, 1, ties)
    got = cox_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert float(got) == pytest.approx(_cox_reference(risk, time, event), rel=1e-10)
    members = torch.tensor(np.stack([risk, 2 * risk], axis=1))  # (B, E): the mean of the members' losses
    both = (_cox_reference(risk, time, event) + _cox_reference(2 * risk, time, event)) / 2
    assert float(cox_loss(members, torch.tensor(time), torch.tensor(event))) == pytest.approx(both, rel=1e-10)
    zero = cox_loss(torch.tensor(risk, requires_grad=True), torch.tensor(time), torch.zeros(40))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_linear_cox_fit_matches_sksurv_breslow() -> None:
    rng = np.random.default_rng(0)
    n, d = 150, 3
    x = rng.normal(size=(n, d))
    beta = np.array([0.8, -0.5, 0.0])
    t = rng.exponential(1.0 / np.exp(x @ beta))
    t = np.round(t, 1) + 0.1  # ties: Breslow's handling matters
    c = rng.exponential(2.0, n)
    event = t <= c
    time = np.minimum(t, c)
    ref = CoxPHSurvivalAnalysis(ties="breslow", alpha=0.0).fit(x, Surv.from_arrays(event, time)).coef_
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    xt, tt, et = torch.tensor(x), torch.tensor(time), torch.tensor(event)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = cox_loss(xt @ w, tt, et)
        loss.backward()
        return loss

    opt.step(closure)
    np.testing.assert_allclose(w.detach().numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("ties", [False, True])
def test_c_indices_match_sksurv_and_lifelines(ties: bool) -> None:
    time, event, risk = _data(80, 2, ties)
    ref = concordance_index_censored(event.astype(bool), time, risk)[0]
    assert harrell_c(time, event, risk) == pytest.approx(ref, abs=1e-12)
    if not ties:  # lifelines: higher score = longer survival; the same pairs without tied times
        assert harrell_c(time, event, risk) == pytest.approx(concordance_index(time, -risk, event), abs=1e-12)
    y = Surv.from_arrays(event.astype(bool), time)
    assert uno_c(time, event, risk) == pytest.approx(concordance_index_ipcw(y, y, risk)[0], abs=1e-12)
    tau = float(np.quantile(time, 0.8))
    assert uno_c(time, event, risk, tau=tau) == pytest.approx(concordance_index_ipcw(y, y, risk, tau=tau)[0], abs=1e-12)
    assert harrell_c(time, np.zeros_like(event), risk) is None
    if not ties:
        assert harrell_c(time, event, -time) == 1.0  # risk falls with time: every pair concordant


@pytest.mark.parametrize("ties", [False, True])
def test_kaplan_meier_and_logrank_match_lifelines(ties: bool) -> None:
    time, event, risk = _data(90, 3, ties)
    km = kaplan_meier(time, event)
    ref = KaplanMeierFitter().fit(time, event).survival_function_
    np.testing.assert_allclose(km(ref.index.values), ref.iloc[:, 0].values, atol=1e-12)
    for k in (2, 3):
        groups = risk_groups(risk + 0.3 * time, k)
        assert sorted(np.unique(groups)) == list(range(k))
        ours = logrank_test(time, event, groups)
        theirs = multivariate_logrank_test(time, groups, event)
        assert ours.statistic == pytest.approx(theirs.test_statistic, rel=1e-9)
        assert ours.p_value == pytest.approx(theirs.p_value, rel=1e-7)
        assert ours.dof == k - 1


def test_event_batches_all_have_events() -> None:
    event = np.zeros(50, dtype=bool)
    event[[3, 17, 40]] = True
    batches = event_batches(np.random.default_rng(0).permutation(50), event, 8)
    assert len(batches) == 3 and all(event[b].any() for b in batches)
    assert sorted(p for b in batches for p in b) == list(range(50))
    many = event_batches(np.arange(50), np.ones(50, dtype=bool), 8)
    assert [len(b) for b in many] == [8, 7, 7, 7, 7, 7, 7]


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("body", "message"), [
    ("a,1.5,1\nb,-2,0\n", "negative 'time' on line(s) 3"),
    ("a,1.5,1\nb,soon,0\n", "'time' is not a number on line(s) 3"),
    ("a,1.5,1\nb,2,2\nc,3,yes\n", "'event' is not 0 or 1 on line(s) 3, 4"),
    ("a,1.5,0\nb,2,0\n", "all 2 slides are censored"),
    ("a,1.5,1\nb,,0\n", "empty 'time' on line(s) 3"),
])
def test_survival_label_errors_name_lines(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(LabelsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_targets(_csv(tmp_path, "slide_id,time,event\n" + body), "survival")


def test_survival_labels_read(tmp_path: Path) -> None:
    t = read_targets(_csv(tmp_path, "slide_id,time,event,case_id,split,site\na,1.5,1,p1,,A\nb,2,0.0,p2,test,B\n"),
                     "survival")
    assert t.y.tolist() == [[1.5, 1.0], [2.0, 0.0]] and t.strata.tolist() == [1, 0]
    assert [r.split for r in t.rows] == ["train", "test"] and [r.site for r in t.rows] == ["A", "B"]
    with pytest.raises(LabelsError, match="missing column"):
        read_targets(_csv(tmp_path, "slide_id,label\na,1\n"), "survival")


def test_every_head_learns_survival(one_torch_thread: None) -> None:
    """Each head fitted by the Cox loss ranks held-out slides by their lesion fraction."""
    tc = make_target_cohort(90, beta=2.0, censoring=0.3, seed=5, tiles=(30, 60), dim=8, shift=4.0,
                            slide_noise=0.2, lesion_fraction=(0.05, 0.15), positive_fraction=0.5)
    bags = BagSet(tc.cohort.features, torch.device("cpu"))
    y = np.stack([tc.time, tc.event], axis=1)
    train, held = np.arange(60), np.arange(60, 90)
    ceiling = harrell_c(tc.time[held], tc.event[held], tc.lesion_fraction[held])
    for name in list_heads():
        cfg = TrainConfig(task="survival", head=name, tune="off", max_epochs=30, batch_size=16, lr=1e-2)
        torch.manual_seed(0)
        head = create_head(name, 8, 1, cfg.head_options)
        fit(head, bags, y, train, train[:0], cfg, seed=0)
        risk = predict_probs(head, bags, held.tolist(), 1 << 16)[:, 0]
        c = harrell_c(tc.time[held], tc.event[held], risk)
        assert c is not None and c > 0.7, (name, c, ceiling)
        train_risk = predict_probs(head, bags, train.tolist(), 1 << 16)[:, 0]
        assert abs(train_risk.mean()) < 1e-4 and train_risk.std() == pytest.approx(1.0, abs=1e-4)


def test_survival_run_and_predict(tmp_path: Path, one_torch_thread: None) -> None:
    """A tuned survival run: nested CV on the event, c-index metrics, KM figure, risk predictions."""
    tc = make_target_cohort(36, seed=2, tiles=(20, 40), dim=8, shift=4.0)
    feats, labels = write_target_cohort(tc, tmp_path / "feat", "survival", tmp_path / "labels.csv")
    cfg = TrainConfig(task="survival", head="weldon", folds=3, max_epochs=6, min_epochs=2, patience=2,
                      tune="on", tune_trials=2, tune_folds=2, bootstrap=30)
    s = run_train(feats, labels, tmp_path / "run", cfg)
    oof = s.metrics["out_of_fold"]
    assert s.metrics["task"] == "survival" and set(oof["metrics"]) == {"c_index", "c_index_uno", "logrank_p_median"}
    assert oof["ci"]["c_index"][0] <= oof["metrics"]["c_index"] <= oof["ci"]["c_index"][1]
    assert s.metrics["folds"][0]["tuning"]["inner_metric"] == "c_index"
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["task"] == "survival"
    assert (run / "km_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pred_head = (run / "predictions.csv").read_text().splitlines()[0]
    assert pred_head == "slide_id,time,event,split,fold,risk"
    out = run_predict(run, feats, tmp_path / "pred.csv")
    lines = (tmp_path / "pred.csv").read_text().splitlines()
    assert lines[0] == "slide_id,n_tiles,risk" and out.n_slides == 36
    risk = np.array([float(x.split(",")[2]) for x in lines[1:]])
    assert np.isfinite(risk).all() and risk.std() > 0
    tiles = (tmp_path / "pred.tiles" / "slide_000.csv").read_text().splitlines()[0]
    assert tiles == "tile_id,x,y,score_risk,selected_risk"


def test_heatmaps_of_a_survival_run(tmp_path: Path) -> None:
    """A survival run's heatmaps: per-tile risk scores (``score_risk``), its selected tiles, the page."""
    from wsi_mil.heatmaps.config import HeatmapConfig
    from wsi_mil.heatmaps.stage import run_heatmap
    from wsi_mil.heatmaps.table import read_scores_csv
    from wsi_mil.jobdir import feature_file_path, patch_store_path
    from wsi_mil.mil.modelrun import rows_to_csv, save_model_run
    from wsi_mil.stores.features import write_feature_file
    from wsi_mil.stores.patches import write_patch_store

    job, d, enc = tmp_path / "job", 4, "enc"
    ys, xs = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    coords = np.stack([xs.ravel() * 256, ys.ravel() * 256], 1).astype(np.int64)
    n = len(coords)
    mask = np.ones((1536 // 64, 2048 // 64), np.uint8)
    attrs = dict(slide_id="s1", slide_path=str(tmp_path / "absent.tiff"), mpp=0.5, mpp_source="metadata",
                 level0_width=2048, level0_height=1536, target_mpp=2.0, tile_size=64, stride=64,
                 tile_size_level0=256.0, stride_level0=256.0, tile_size_um=128.0)
    write_patch_store(patch_store_path(job, "s1"), np.zeros((n, 64, 64, 3), np.uint8), coords,
                      np.ones(n, np.float32), mask, 64.0, attrs, codec="zstd")
    feats = np.random.default_rng(0).normal(scale=0.1, size=(n, d)).astype(np.float32)
    feats[:, 0] = np.where(coords[:, 0] >= 1536, 2.0, -1.0)  # high-risk region on the right
    write_feature_file(feature_file_path(job, enc, "s1"), feats, coords, {"encoder_id": enc})
    opts = {"k_top": 3, "k_bottom": 3}
    head = create_head("weldon", d, 1, TrainConfig(head="weldon", head_options=opts).head_options)
    with torch.no_grad():
        head.scorer.weight.zero_()  # type: ignore[operator]
        head.scorer.weight[0, 0] = 1.0  # type: ignore[index]
        head.scorer.bias.zero_()  # type: ignore[operator]
    head.set_output_scaling(0.5, 2.0)
    config = {"head": "weldon", "task": "survival", "head_options": opts, "class_names": ["risk"],
              "encoder_id": enc, "embed_dim": d}
    preds = rows_to_csv([{"slide_id": "s1", "time": "3", "event": 1, "split": "train", "fold": 0, "risk": "1"}],
                        ["slide_id", "time", "event", "split", "fold", "risk"])
    km = km_figure([1.0, 2.0, 3.0, 4.0], [1, 0, 1, 1], [0.3, 0.1, 0.2, 0.0])
    save_model_run(tmp_path / "run", head, config, {"predictions.csv": preds}, {"km_curves.png": km})
    out = tmp_path / "heatmaps"
    report = run_heatmap(tmp_path / "run", job, out, HeatmapConfig(overlay_width=400), workers=0, progress=False)
    assert not report.failed and (out / "km_curves.png").read_bytes() == km
    assert '<img src="km_curves.png"' in (out / "index.html").read_text()  # the run's KM curves on the cohort page
    sc = read_scores_csv(out / "s1" / "scores.csv")
    np.testing.assert_allclose(sc["score_risk"], 2.0 * feats[:, 0], rtol=1e-5)  # tile scores x output scale
    assert (sc["selected_risk"] == 1).sum() == 3 and feats[sc["selected_risk"] == 1, 0].min() == 2.0
    m = json.loads((out / "s1" / "slide.json").read_text())
    assert m["n_tiles"] == n
