"""MIL data handling: labels CSV validation, grouped CV splits, metrics, bag batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from wsi_mil.errors import LabelsError
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.labels import match_feature_files, read_labels
from wsi_mil.mil.metrics import bootstrap_ci, classification_metrics, roc_auc, summarize
from wsi_mil.mil.splits import assign_folds, check_fold_counts, validation_split


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return p


# -- labels -------------------------------------------------------------------------------------

def test_labels_ok_integer_classes_in_numeric_order(tmp_path: Path) -> None:
    t = read_labels(_csv(tmp_path, "slide_id,label,case_id\na,10,p1\nb,2,p1\nc,2,p2\n"))
    assert t.class_names == ["2", "10"]
    assert t.targets == [1, 0, 0]
    assert [r.case_id for r in t.rows] == ["p1", "p1", "p2"]


def test_labels_names_and_configured_order(tmp_path: Path) -> None:
    p = _csv(tmp_path, "slide_id,label\na,tumor\nb,normal\n")
    assert read_labels(p).class_names == ["normal", "tumor"]
    assert read_labels(p, classes=["tumor", "normal"]).targets == [0, 1]
    with pytest.raises(LabelsError, match=r"label\(s\) tumor .*line\(s\) 2"):
        read_labels(p, classes=["normal", "other"])


@pytest.mark.parametrize(("text", "pattern"), [
    ("slide,label\na,1\n", r"missing column\(s\) slide_id"),
    ("slide_id,label\na,1\nb,0\na,0\n", r"duplicate slide_id\(s\): 'a' on lines 2, 4"),
    ("slide_id,label\na,1\nb,\n", r"empty 'label' on line\(s\) 3"),
    ("slide_id,label,case_id\na,1,p\nb,0,\n", r"empty 'case_id' on line\(s\) 3"),
    ("slide_id,label,split\na,1,train\nb,0,holdout\n", r"line 3: split 'holdout'"),
    ("slide_id,label,case_id,split\na,1,p,test\nb,0,p,train\nc,0,q,train\n", r"case\(s\) p have slides in both"),
    ("slide_id,label\na,1\nb,1\n", r"only one class"),
    ("slide_id,label\n", r"no rows"),
])
def test_labels_errors_are_precise(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(LabelsError, match=pattern) as err:
        read_labels(_csv(tmp_path, text))
    assert "labels.csv" in str(err.value) and "\n" not in str(err.value)


def test_labels_val_split_is_reported(tmp_path: Path) -> None:
    t = read_labels(_csv(tmp_path, "slide_id,label,split\na,1,val\nb,0,train\nc,0,test\n"))
    assert [r.split for r in t.rows] == ["val", "train", "test"]
    assert any("split=val" in w for w in t.warnings)


def test_match_feature_files_errors_and_warnings(tmp_path: Path) -> None:
    t = read_labels(_csv(tmp_path, "slide_id,label\na,1\nb,0\nc,0\n"))
    files = {"a": Path("a.h5"), "b": Path("b.h5"), "z": Path("z.h5")}
    with pytest.raises(LabelsError, match=r"1 labelled slide\(s\) have no feature file: c"):
        match_feature_files(t, files)
    matched, warnings = match_feature_files(t, files, missing="drop")
    assert [r.slide_id for r in matched.rows] == ["a", "b"]
    assert any("dropped" in w and ": c" in w for w in warnings)
    assert any("have no row" in w and "z" in w for w in warnings)
    with pytest.raises(LabelsError, match="only class"):
        match_feature_files(t, {"b": Path("b.h5"), "c": Path("c.h5")}, missing="drop")


# -- splits -------------------------------------------------------------------------------------

def test_folds_group_cases_and_stratify() -> None:
    rng = np.random.default_rng(0)
    groups = np.array([f"p{i // 3}" for i in range(90)])  # 3 slides per case
    targets = np.array([int(g[1:]) % 2 for g in groups])
    rng.shuffle(targets[:0])
    folds = assign_folds(targets, groups, 5, seed=1)
    assert set(folds.tolist()) == set(range(5))
    for g in set(groups.tolist()):
        assert len(set(folds[groups == g].tolist())) == 1  # no case in two folds
    for f in range(5):
        assert set(targets[folds == f].tolist()) == {0, 1}
    again = assign_folds(targets, groups, 5, seed=1)
    assert (again == folds).all()
    tr, va = validation_split(np.flatnonzero(folds != 0), targets, groups, 0.2, seed=0)
    assert not set(groups[tr].tolist()) & set(groups[va].tolist())
    assert 0.1 < len(va) / (len(va) + len(tr)) < 0.3 and set(targets[va].tolist()) == {0, 1}


def test_too_few_cases_for_k_folds_is_an_error() -> None:
    targets = np.array([0] * 10 + [1] * 4)
    groups = np.array([f"p{i}" for i in range(10)] + ["q1", "q1", "q2", "q3"])
    check_fold_counts(targets, groups, ["neg", "pos"], 3, "labels.csv")
    with pytest.raises(LabelsError, match=r"class 'pos' has 4 training slide\(s\) from 3 case\(s\).*lower --folds to at most 3"):
        check_fold_counts(targets, groups, ["neg", "pos"], 4, "labels.csv")


# -- metrics ------------------------------------------------------------------------------------

def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(bool)
    s = np.round(rng.standard_normal(200) + y, 1)
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert roc_auc(s, np.ones(200, bool)) is None


def test_classification_metrics_binary_and_multiclass() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(y, p, ["a", "b"])
    assert m == {"auc": 1.0, "accuracy": 0.75, "balanced_accuracy": 0.75}
    y3 = np.array([0, 1, 2, 2])
    p3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])
    m3 = classification_metrics(y3, p3, ["a", "b", "c"])
    assert m3["accuracy"] == 0.75 and m3["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m3["auc_c"] == pytest.approx(roc_auc_score(y3 == 2, p3[:, 2]))
    assert m3["auc"] == pytest.approx(np.mean([m3["auc_a"], m3["auc_b"], m3["auc_c"]]))


def test_bootstrap_ci_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = rng.standard_normal(80) + y
    p = np.stack([1 - 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-s))], 1)
    ci = bootstrap_ci(y, p, ["0", "1"], n_boot=300, seed=0)
    auc = classification_metrics(y, p, ["0", "1"])["auc"]
    assert ci["auc"][0] < auc < ci["auc"][1] and ci["auc"][1] - ci["auc"][0] < 0.4
    s2 = summarize([{"auc": 0.6}, {"auc": 0.8}, {"auc": None}])
    assert s2["auc"]["mean"] == pytest.approx(0.7) and s2["auc"]["std"] == pytest.approx(0.1)
    assert s2["auc"]["n_folds"] == 2


# -- bags ---------------------------------------------------------------------------------------

def test_bagset_sampling_and_whole_batches() -> None:
    bags = [np.arange(n * 2, dtype=np.float16).reshape(n, 2) for n in (5, 50, 20)]
    bs = BagSet(bags)
    gen = torch.Generator().manual_seed(0)
    feats, mask = bs.sample_batch([0, 1, 2], 10, gen)
    assert feats.dtype == torch.float32 and feats.shape == (3, 10, 2)
    assert mask.sum(1).tolist() == [5, 10, 10]
    rows = {tuple(r) for r in feats[1][mask[1]].tolist()}
    assert len(rows) == 10 and rows <= {tuple(r) for r in bags[1].astype(np.float32).tolist()}
    assert feats[0, 5:].abs().sum() == 0
    seen = []
    for batch, f, m in bs.whole_batches([0, 1, 2], tile_budget=60):
        assert f.shape[0] * f.shape[1] <= 60 or len(batch) == 1
        for p, fi, mi in zip(batch, f, m):
            np.testing.assert_array_equal(fi[mi].numpy(), bags[p].astype(np.float32))
            seen.append(p)
    assert sorted(seen) == [0, 1, 2]


def test_dense_bag_block_gives_the_same_batches_as_per_bag_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small bags are also kept as one padded block (a batch = one gather): same tensors, same
    masks and the same random draws as the per-bag copies it replaces."""
    from wsi_mil.mil import bags as bags_module

    rng = np.random.default_rng(0)
    bags = [rng.standard_normal((n, 3)).astype(np.float16) for n in (5, 50, 20, 1, 12)]
    dense = BagSet(bags)
    monkeypatch.setattr(bags_module, "DENSE_BYTES", 0)
    per_bag = BagSet(bags)
    assert dense._dense is not None and per_bag._dense is None
    for positions, k in (([0, 1, 2], None), ([3, 4], None), ([4, 0, 3], 12), ([1, 2], 10)):
        a = dense.sample_batch(positions, k, torch.Generator().manual_seed(1))
        b = per_bag.sample_batch(positions, k, torch.Generator().manual_seed(1))
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        assert torch.equal(a[1], b[1])
    got_a = [(p, f.clone(), m.clone()) for p, f, m in dense.whole_batches([0, 1, 2, 3, 4], 64)]
    got_b = [(p, f.clone(), m.clone()) for p, f, m in per_bag.whole_batches([0, 1, 2, 3, 4], 64)]
    assert [p for p, _, _ in got_a] == [p for p, _, _ in got_b]
    for (_, fa, ma), (_, fb, mb) in zip(got_a, got_b, strict=True):
        assert torch.equal(fa, fb) and torch.equal(ma, mb)


def test_validation_split_on_tiny_folds_stays_grouped() -> None:
    targets = np.array([0, 0, 0, 1, 1, 1])
    groups = np.array(["a", "a", "b", "c", "d", "e"])
    tr, va = validation_split(np.arange(6), targets, groups, 0.2, seed=0)
    assert len(va) > 0 and not set(groups[tr].tolist()) & set(groups[va].tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(6))
    tr, va = validation_split(np.arange(2), targets, np.array(["a", "a", "a", "b", "b", "b"]), 0.2, seed=0)
    assert len(va) == 0 and tr.tolist() == [0, 1]


def test_feature_stats_over_chosen_bags() -> None:
    bags = [np.full((3, 2), 1.0, np.float16), np.array([[0.0, 2.0], [4.0, 2.0]], np.float16), np.full((5, 2), 9.0)]
    mean, std, *_ = BagSet(bags).feature_stats([0, 1])
    np.testing.assert_allclose(mean.numpy(), [1.4, 1.4], rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), [np.std([1, 1, 1, 0, 4]), np.std([1, 1, 1, 2, 2])], rtol=1e-5)
