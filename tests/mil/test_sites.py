"""Cohorts from several sites (issue 15, MIL part): the labels' ``site`` column, the confounder
warning, leave-one-site-out cross-validation (no site ever leaks into its own training, validation
or tuning folds), per-site metrics, and domain-adversarial training through gradient reversal."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsi_mil.cli import main
from wsi_mil.config import build_config
from wsi_mil.errors import LabelsError
from wsi_mil.mil import stage, tuning
from wsi_mil.mil.config import DomainAdversarialConfig, TrainConfig
from wsi_mil.mil.domain import DomainAdversary, GradientReversal, ganin_lambda, gradient_reversal
from wsi_mil.mil.labels import read_labels
from wsi_mil.mil.metrics import classification_metrics
from wsi_mil.mil.registry import create_head
from wsi_mil.mil.sites import prevalence_warning
from wsi_mil.mil.synthbags import make_synthetic_bags, write_synthetic_cohort
from wsi_mil.study import load_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
SITES = "ABC"
FAST = dict(max_epochs=5, min_epochs=2, patience=2, bootstrap=0, batch_size=8, device="cpu", lr=0.01)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """36 slides (two per case) at 3 sites, each case at one site; every site has both classes."""
    root = tmp_path_factory.mktemp("sites")
    co = make_synthetic_bags(n_slides=36, tiles=(20, 40), dim=8, lesion_fraction=(0.05, 0.12), shift=4.0,
                             slides_per_case=2, seed=5)
    features, labels = write_synthetic_cohort(co, root / "features", labels_csv=root / "labels.csv")
    lines = labels.read_text().splitlines()
    rows = [lines[0] + ",site,scanner"]
    for i, line in enumerate(lines[1:]):
        case = i // 2
        rows.append(f"{line},{SITES[case % 3]},{'XY'[case % 2]}")
    labels.write_text("\n".join(rows) + "\n")
    return features, labels


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- gradient reversal ------------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_flips_and_scales_the_gradient_exactly(lam: float) -> None:
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 7, dtype=torch.float64)
    y = gradient_reversal(x, lam)
    assert torch.equal(y, x)  # identity forward
    (y * upstream).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, -lam * upstream)
    # the module form, and through a function after it: d/dx f(GRL(x)) = -lam * f'(x)
    x2 = x.detach().clone().requires_grad_(True)
    (GradientReversal(lam)(x2).pow(3).sum()).backward()
    assert x2.grad is not None and torch.allclose(x2.grad, -lam * 3 * x.detach() ** 2, rtol=1e-14, atol=0)


def test_ganin_schedule() -> None:
    assert ganin_lambda(0.0) == 0.0
    assert ganin_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert ganin_lambda(0.25) == pytest.approx(2 / (1 + math.exp(-2.5)) - 1)
    values = [ganin_lambda(p / 20) for p in range(21)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)) and values[-1] < 1.0
    assert ganin_lambda(-1.0) == 0.0 and ganin_lambda(3.0) == ganin_lambda(1.0)  # progress clipped to [0, 1]


@pytest.mark.parametrize("head_name", ["chowder", "weldon", "attention", "lse", "mean"])
def test_domain_adversary_gradients(head_name: str) -> None:
    """One step's gradients: the head gets the label gradient minus weight x lambda x the site gradient
    (reversed through its representation), the site classifier the plain weighted site gradient."""
    torch.manual_seed(0)
    head = create_head(head_name, 6, 2, {"dropout": 0.0} if head_name in ("chowder", "attention") else {}).double()
    feats = torch.randn(5, 12, 6, dtype=torch.float64)
    mask = torch.ones(5, 12, dtype=torch.bool)
    mask[2, 7:] = False
    domains = np.array([0, 1, 2, 0, 1, 2, 0], dtype=np.int64)
    batch = [0, 1, 2, 4, 5]
    cfg = DomainAdversarialConfig(weight=0.7, hidden=5)
    adv = DomainAdversary(cfg, head, domains, np.arange(7), 3, total_steps=10, seed=0)
    adv.classifier.double()
    adv.step = 3
    lam = ganin_lambda(0.3)
    assert adv.lam == pytest.approx(lam)
    head_params, site_params = list(head.parameters()), adv.parameters()

    logits, site_loss = adv.outputs(head, feats, mask, batch)
    assert adv.step == 4 and torch.allclose(logits, head.member_logits(feats, mask))
    grads = torch.autograd.grad(site_loss, head_params + site_params, allow_unused=True)

    # reference: the same site loss without reversal, by hand
    _, rep = head.member_logits_and_representation(feats, mask)
    w = torch.tensor([7 / (3 * 3), 7 / (3 * 2), 7 / (3 * 2)]).double()  # balanced over the 7 bags (float32 weights)
    ref = cfg.weight * F.cross_entropy(adv.classifier(rep), torch.as_tensor(domains[batch]), weight=w)
    assert float(site_loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    ref_grads = torch.autograd.grad(ref, head_params + site_params, allow_unused=True)
    n_head = len(head_params)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        if r is None:
            assert g is None or torch.count_nonzero(g) == 0
            continue
        expected = -lam * r if i < n_head else r
        assert g is not None and torch.allclose(g, expected, rtol=1e-10, atol=1e-12), i


def test_head_without_representation_is_a_clear_error(cohort: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    features, labels = cohort
    code = main(["train", str(features), "--labels", str(labels), "-o", str(tmp_path / "run"), "--head", "max",
                 "--tune", "off", "--set", "domain_adversarial={column: site, weight: 1.0}"])
    err = capsys.readouterr()
    assert code == 2
    text = " ".join((err.out + err.err).split())
    assert "head 'max' has no slide representation for a site classifier" in text
    assert "chowder" in text and "attention" in text and not (tmp_path / "run").exists()


# -- labels, checks, the confounder warning ----------------------------------------------------------

def test_site_column_is_read_and_empty_sites_are_errors(tmp_path: Path) -> None:
    t = read_labels(_csv(tmp_path / "a.csv", "slide_id,label,site\na,0,H1\nb,1,H2\n"))
    assert t.has_site and [r.site for r in t.rows] == ["H1", "H2"]
    assert t.subset({"a"}).has_site
    assert not read_labels(_csv(tmp_path / "b.csv", "slide_id,label\na,0\nb,1\n")).has_site
    with pytest.raises(LabelsError, match=r"c\.csv: empty 'site' on line\(s\) 3"):
        read_labels(_csv(tmp_path / "c.csv", "slide_id,label,site\na,0,H1\nb,1,\n"))


def _confounded(path: Path, pos: tuple[int, int], n: int = 20) -> Path:
    rows = ["slide_id,label,site"]
    for site, k in zip("AB", pos, strict=True):
        rows += [f"{site}{i},{int(i < k)},{site}" for i in range(n)]
    return _csv(path, "\n".join(rows) + "\n")


def test_prevalence_warning_fires_on_a_confounded_cohort_only(tmp_path: Path) -> None:
    warn = prevalence_warning(read_labels(_confounded(tmp_path / "conf.csv", (16, 4))))
    assert warn is not None
    assert "positive share of class '1' differs between sites (A 80 %, B 20 %: 60 points" in warn
    assert "leave_one_site_out" in warn and "domain_adversarial" in warn and "conf.csv" in warn
    assert warn in read_labels(tmp_path / "conf.csv").warnings  # reported with the labels' warnings
    assert prevalence_warning(read_labels(_confounded(tmp_path / "bal.csv", (10, 10)))) is None
    assert prevalence_warning(read_labels(_confounded(tmp_path / "close.csv", (11, 8)))) is None  # 15 points
    # 60 points between 5-slide sites: a chi-square p of about 0.06, not reported as a confounder
    assert prevalence_warning(read_labels(_confounded(tmp_path / "tiny.csv", (4, 1), n=5))) is None
    # multi-class: the class whose share differs most is named; sites under 5 slides are not compared
    rows = ["slide_id,label,site"] + [f"A{i},{'abc'[i % 3] if i < 12 else 'c'},A" for i in range(24)]
    rows += [f"B{i},{'ab'[i % 2]},B" for i in range(24)] + ["C0,c,C", "C1,c,C"]
    warn = prevalence_warning(read_labels(_csv(tmp_path / "multi.csv", "\n".join(rows) + "\n")))
    assert warn is not None and "share of class 'c' differs between sites (A 67 %, B 0 %: 67 points" in warn


def test_train_check_warns_on_a_confounded_labels_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    co = make_synthetic_bags(n_slides=40, tiles=(5, 8), dim=4, seed=1)
    features, _ = write_synthetic_cohort(co, tmp_path / "features", labels_csv=tmp_path / "unused.csv")
    rows = ["slide_id,label,site"]
    rows += [f"slide_{i:03d},{int(i % 20 < (16 if i < 20 else 4))},{'AB'[i // 20]}" for i in range(40)]
    conf = _csv(tmp_path / "conf.csv", "\n".join(rows) + "\n")
    assert main(["train", str(features), "--labels", str(conf), "--check", "--set", "cv=leave_one_site_out"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning:" in out and "(A 80 %, B 20 %: 60 points" in out and "leave-one-site-out" in out
    bal = _csv(tmp_path / "bal.csv", "\n".join(["slide_id,label,site"] + [
        f"slide_{i:03d},{i % 2},{'AB'[i // 20]}" for i in range(40)]) + "\n")
    assert main(["train", str(features), "--labels", str(bal), "--check"]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out and "ok: 40 training and 0 test slides" in out
    assert main(["train", str(features), "--labels", str(bal)]) == 2  # training needs its run folder
    got = capsys.readouterr()
    assert "-o/--out is required" in got.out + got.err


def test_loso_refuses_what_it_cannot_do(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    features, _ = cohort
    cfg = TrainConfig(cv="leave_one_site_out", tune="off", **FAST)  # type: ignore[arg-type]
    ids = [f"slide_{i:03d}" for i in range(36)]
    no_site = _csv(tmp_path / "nosite.csv", "slide_id,label\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(ids)))
    with pytest.raises(LabelsError, match=r"nosite\.csv: cv: leave_one_site_out needs a 'site' column"):
        stage.check_training(features, no_site, cfg)
    one = _csv(tmp_path / "one.csv", "slide_id,label,site\n" + "".join(f"{s},{i % 2},A\n" for i, s in enumerate(ids)))
    with pytest.raises(LabelsError, match=r"one\.csv: .*at least 2 sites, found only site 'A'"):
        stage.check_training(features, one, cfg)
    span = _csv(tmp_path / "span.csv", "slide_id,label,case_id,site\n" + "".join(
        f"{s},{i % 2},c{i // 2},{'AB'[i % 2] if i < 2 else 'AB'[(i // 2) % 2]}\n" for i, s in enumerate(ids)))
    with pytest.raises(LabelsError, match=r"span\.csv: case\(s\) with slides at two sites: 'c0' at A, B \(lines 2, 3\)"):
        stage.check_training(features, span, cfg)
    pure = _csv(tmp_path / "pure.csv", "slide_id,label,site\n" + "".join(
        f"{s},{int(i < 12)},{'A' if i < 12 else 'BC'[i % 2]}\n" for i, s in enumerate(ids)))
    with pytest.raises(LabelsError, match=r"with site 'A' held out .* have 1 class\(es\)"):
        stage.check_training(features, pure, cfg)
    stage.check_training(features, pure, TrainConfig(**FAST))  # type: ignore[arg-type]  # K-fold: fine


# -- leave-one-site-out: no leak ----------------------------------------------------------------------

def test_leave_one_site_out_never_trains_on_the_held_out_site(cohort: tuple[Path, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Spy on every search, fit and inner prediction: the search of fold k and everything in it (inner
    training, early-stopping and held-out parts), and fold k's own fit (training and validation part),
    use only slides of the other sites."""
    features, labels = cohort
    events: list[tuple[str, set[int]]] = []
    real_search, real_tfit, real_sfit, real_predict = tuning.search_settings, tuning.fit, stage.fit, tuning.predict_probs

    def spy_search(bagset, targets, groups, pool, *args, **kw):  # type: ignore[no-untyped-def]
        events.append(("search", set(pool.tolist())))
        return real_search(bagset, targets, groups, pool, *args, **kw)

    def spy_tfit(head, bags, targets, train_pos, val_pos, *args, **kw):  # type: ignore[no-untyped-def]
        events.append(("inner", set(train_pos.tolist()) | set(val_pos.tolist())))
        return real_tfit(head, bags, targets, train_pos, val_pos, *args, **kw)

    def spy_predict(head, bags, positions, *args, **kw):  # type: ignore[no-untyped-def]
        events.append(("inner", set(positions)))
        return real_predict(head, bags, positions, *args, **kw)

    def spy_sfit(head, bags, targets, train_pos, val_pos, *args, **kw):  # type: ignore[no-untyped-def]
        events.append(("outer", set(train_pos.tolist()) | set(val_pos.tolist())))
        return real_sfit(head, bags, targets, train_pos, val_pos, *args, **kw)

    monkeypatch.setattr(tuning, "search_settings", spy_search)
    monkeypatch.setattr(tuning, "fit", spy_tfit)
    monkeypatch.setattr(tuning, "predict_probs", spy_predict)
    monkeypatch.setattr(stage, "fit", spy_sfit)
    cfg = TrainConfig(head="weldon", cv="leave_one_site_out", tune="on", tune_trials=2, tune_folds=2,
                      tune_final="refit", domain_adversarial={"weight": 0.5}, **FAST)  # type: ignore[arg-type]
    summary = stage.run_train(features, labels, tmp_path / "run", cfg)
    rows = read_labels(labels).rows
    site_of = [r.site for r in rows]  # bag position = labels row (no slide dropped)
    splits = _read(tmp_path / "run" / "splits.csv")
    assert [r["slide_id"] for r in splits] == [r.slide_id for r in rows]
    held: dict[int, set[str]] = {int(r["fold"]): set() for r in splits}
    for r in splits:
        held[int(r["fold"])].add(r["site"])
    assert held == {0: {"A"}, 1: {"B"}, 2: {"C"}}  # one fold per site, each holds out exactly one site
    assert summary.metrics["cv"] == {"kind": "leave_one_site_out", "folds": 3, "column": "site",
                                     "held_out_sites": ["A", "B", "C"]}
    assert [m["site"] for m in summary.metrics["folds"]] == ["A", "B", "C"]

    fold, seen_sites = -1, set(SITES)
    n_outer = n_inner = 0
    for kind, pos in events:
        sites = {site_of[p] for p in pos}
        if kind == "search":
            fold += 1
            seen_sites = set(SITES) - {SITES[fold]} if fold < 3 else set(SITES)  # fold 3: the final model's
            assert sites == seen_sites
        elif kind == "inner":
            n_inner += 1
            assert sites <= seen_sites, (fold, sites)
        else:
            n_outer += 1
            assert sites <= seen_sites, (fold, sites)
    assert fold == 3 and n_outer == 4 and n_inner > 0  # 3 fold models + the final refit; searches ran


# -- per-site metrics, domain-adversarial end to end --------------------------------------------------

def test_per_site_metrics_in_metrics_json(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    features, labels = cohort
    cfg = TrainConfig(head="weldon", folds=3, tune="off", **FAST)  # type: ignore[arg-type]
    stage.run_train(features, labels, tmp_path / "run", cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    per = metrics["per_site"]
    assert per["column"] == "site" and metrics["cv"] == {"kind": "kfold", "folds": 3}
    assert metrics["domain_adversarial"] is None
    preds = _read(tmp_path / "run" / "predictions.csv")
    y = np.array([int(r["label"]) for r in preds])
    p = np.array([[float(r["prob_0"]), float(r["prob_1"])] for r in preds])
    site = np.array([r["site"] for r in preds])
    assert per["out_of_fold"]["pooled"] == {"n_slides": 36, **classification_metrics(y, p, ["0", "1"])}
    assert per["out_of_fold"]["pooled"]["auc"] == pytest.approx(metrics["out_of_fold"]["metrics"]["auc"])
    assert sorted(per["out_of_fold"]["sites"]) == list(SITES)
    for s in SITES:
        m = per["out_of_fold"]["sites"][s]
        assert m["n_slides"] == int((site == s).sum()) == 12
        assert m["auc"] == pytest.approx(classification_metrics(y[site == s], p[site == s], ["0", "1"])["auc"])


def test_domain_adversarial_trains_end_to_end_from_a_config_file(cohort: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    features, labels = cohort
    config = _csv(tmp_path / "study.yaml", """train:
  head: chowder
  head_options: {r: 2, n_members: 2, hidden: [8]}
  cv: leave_one_site_out
  domain_adversarial: {column: site, weight: 0.5}
  tune: "off"
  max_epochs: 4
  min_epochs: 2
  patience: 2
  batch_size: 8
  bootstrap: 0
  device: cpu
""")
    run = tmp_path / "run"
    assert main(["train", str(features), "--labels", str(labels), "-o", str(run), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "site A (12 slides): auc" in out and "site C (12 slides)" in out
    metrics = json.loads((run / "metrics.json").read_text())
    da = metrics["domain_adversarial"]
    assert da["column"] == "site" and da["weight"] == 0.5 and da["domains"] == ["A", "B", "C"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["domain_adversarial"] == da and cfg["train_config"]["cv"] == "leave_one_site_out"
    history = json.loads((run / "history.json").read_text())
    final = history["final"]
    assert all(r["site_loss"] is not None and r["site_loss"] > 0 for r in final)
    lambdas = [r["grl_lambda"] for r in final]
    assert lambdas == sorted(lambdas) and lambdas[-1] == pytest.approx(ganin_lambda(1.0))  # planned steps all run
    # the site classifier is not part of the model: the weights are a plain CHOWDER's, predict works
    from safetensors.torch import load_file

    plain = create_head("chowder", 8, 2, cfg["head_options"])  # as trained: tile_hidden auto settled
    assert set(load_file(str(run / "model.safetensors"))) == set(plain.state_dict())
    out_csv = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(features), "-o", str(out_csv), "--device", "cpu", "--quiet"]) == 0
    assert len(_read(out_csv)) == 36


def test_domain_adversarial_on_another_labels_column(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    features, labels = cohort
    cfg = TrainConfig(head="attention", folds=2, tune="off", domain_adversarial={"column": "scanner"},
                      **FAST)  # type: ignore[arg-type]
    summary = stage.run_train(features, labels, tmp_path / "run", cfg)
    assert summary.metrics["domain_adversarial"]["domains"] == ["X", "Y"]
    bad = TrainConfig(head="attention", tune="off", domain_adversarial={"column": "hospital"}, **FAST)  # type: ignore[arg-type]
    with pytest.raises(LabelsError, match="domain_adversarial.column 'hospital' is not a column"):
        stage.check_training(features, labels, bad)


def _target_cohort(tmp_path: Path, sites: str, censored_every: int) -> tuple[Path, Path, list[str]]:
    """24 small bags; labels with time, event (every ``censored_every``-th slide censored), target and a
    site dealt round-robin from ``sites``: (features folder, labels CSV, its lines)."""
    co = make_synthetic_bags(n_slides=24, tiles=(10, 20), dim=6, seed=2)
    features, _ = write_synthetic_cohort(co, tmp_path / "features", labels_csv=tmp_path / "unused.csv")
    rng = np.random.default_rng(0)
    rows = ["slide_id,time,event,target,site"] + [
        f"{s},{rng.uniform(1, 50):.1f},{int(i % censored_every != censored_every - 1)},{rng.normal():.3f},"
        f"{sites[i % len(sites)]}" for i, s in enumerate(co.slide_ids)]
    return features, _csv(tmp_path / "labels.csv", "\n".join(rows) + "\n"), rows


@pytest.mark.parametrize("task", ["survival", "regression"])
def test_domain_adversarial_trains_one_output_tasks(task: str, tmp_path: Path) -> None:
    """The Cox and regression loops take the site loss as fit does: history, metrics and plain weights."""
    features, labels, _ = _target_cohort(tmp_path, "AB", censored_every=4)
    cfg = build_config(TrainConfig, None, [f"task={task}", "head=chowder", "tune=off", "folds=2",
                                           "domain_adversarial.weight=0.5", "max_epochs=4", "min_epochs=2",
                                           "patience=2", "bootstrap=0", "batch_size=8", "device=cpu"])
    summary = stage.run_train(features, labels, tmp_path / "run", cfg)
    assert summary.metrics["domain_adversarial"]["domains"] == ["A", "B"]
    final = json.loads((tmp_path / "run" / "history.json").read_text())["final"]
    assert all(r["site_loss"] is not None and r["site_loss"] > 0 for r in final)
    assert [r["grl_lambda"] for r in final] == sorted(r["grl_lambda"] for r in final)
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "run" / "model.safetensors"))) == set(create_head("chowder", 6, 1).state_dict())


def test_demo_config_can_switch_each_on(tmp_path: Path) -> None:
    text = (ROOT / "configs" / "demo.yaml").read_text()
    assert "  # cv: leave_one_site_out" in text and "  # domain_adversarial: {column: site" in text
    assert "  # stain_norm: macenko" in text
    stained = load_study(_csv(tmp_path / "stain.yaml", text.replace("  # stain_norm:", "  stain_norm:")))
    assert stained.extract.stain_norm == "macenko" and load_study(ROOT / "configs" / "demo.yaml").extract.stain_norm == "none"
    for key in ("cv", "domain_adversarial"):
        on = _csv(tmp_path / f"{key}.yaml", text.replace(f"  # {key}:", f"  {key}:"))
        study = load_study(on)
        train: Any = study.train
        if key == "cv":
            assert train.cv == "leave_one_site_out" and train.domain_adversarial is None
        else:
            assert train.domain_adversarial == DomainAdversarialConfig(column="site", weight=0.5)
            assert train.cv == "kfold"


def test_run_check_plans_leave_one_site_out_and_warns_on_a_confounder(synth_cohort: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``run --check``: the 8 slides of 2 sites pass leave-one-site-out (4 cases per class: too few for 5
    folds), and a confounded labels file (32 more rows, dropped for want of slides) gets the warning."""
    import yaml

    real = _read(synth_cohort / "labels.csv")
    by_label = sorted(real, key=lambda r: (r["label"], r["slide_id"]))
    rows = ["slide_id,label,case_id,site"] + [f"{r['slide_id']},{r['label']},{r['case_id']},{'AB'[i % 2]}"
                                               for i, r in enumerate(by_label)]
    rows += [f"ghost_{s}{i},{int(i < 14) if s == 'A' else int(i < 2)},g{s}{i},{s}" for s in "AB" for i in range(16)]
    labels = _csv(tmp_path / "labels.csv", "\n".join(rows) + "\n")
    doc: dict[str, Any] = {"name": "t", "slides": str(synth_cohort), "labels": str(labels), "job": str(tmp_path / "job"),
           "device": "cpu", "encoder": {"arch": "test_resnet", "weights": "random:0"},
           "train": {"head": "mean", "folds": 5, "cv": "leave_one_site_out", "missing_features": "drop",
                     "domain_adversarial": {"column": "site", "weight": 0.3}}}
    study = _csv(tmp_path / "study.yaml", yaml.safe_dump(doc))
    assert main(["run", str(study), "--check"]) == 0
    got = capsys.readouterr()
    err = " ".join((got.out + got.err).split())
    assert "positive share of class '1' differs between sites (A 80 %, B 20 %: 60 points" in err
    doc["train"] = {**doc["train"], "cv": "kfold"}  # 5 folds of 4 cases per class: refused
    _csv(study, yaml.safe_dump(doc))
    assert main(["run", str(study), "--check"]) == 2
    got = capsys.readouterr()
    assert "fewer than the 5 cross-validation folds" in " ".join((got.out + got.err).split())
    doc["train"] = {**doc["train"], "cv": "leave_one_site_out", "head": "max"}
    _csv(study, yaml.safe_dump(doc))
    assert main(["run", str(study), "--check"]) == 2
    got = capsys.readouterr()
    assert "head 'max' has no slide representation" in " ".join((got.out + got.err).split())


@pytest.mark.parametrize("task", ["survival", "regression"])
def test_one_output_tasks_run_leave_one_site_out_with_per_site_metrics(task: str, tmp_path: Path) -> None:
    features, labels, rows = _target_cohort(tmp_path, "ABC", censored_every=3)
    cfg = TrainConfig(task=task, head="mean", cv="leave_one_site_out", tune="off", **FAST)  # type: ignore[arg-type]
    summary = stage.run_train(features, labels, tmp_path / "run", cfg)  # site C has no event: fine
    per = summary.metrics["per_site"]["out_of_fold"]
    key = "c_index" if task == "survival" else "pearson_r"
    assert sorted(per["sites"]) == ["A", "B", "C"] and all(m["n_slides"] == 8 for m in per["sites"].values())
    assert key in per["pooled"] and [m["site"] for m in summary.metrics["folds"]] == ["A", "B", "C"]
    splits = _read(tmp_path / "run" / "splits.csv")
    assert all(int(r["fold"]) == "ABC".index(r["site"]) for r in splits)
    if task == "survival":  # events at site A only: holding A out leaves a Cox model without events
        only_a = _csv(tmp_path / "only_a.csv", "\n".join(
            [rows[0]] + [r if r.endswith(",A") else r.replace(",1,", ",0,", 1) for r in rows[1:]]) + "\n")
        with pytest.raises(LabelsError, match=r"with site 'A' held out .* have no event"):
            stage.check_training(features, only_a, cfg)
