"""Feature scaling before a head scores tiles (``standardize``: :mod:`wsi_mil.mil.scaling`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.preprocessing import MaxAbsScaler, StandardScaler

from wsi_mil.mil import create_head, load_model_run
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.scaling import SPARSE_ZERO_SHARE, applied_scaling, apply_scaling
from wsi_mil.mil.stage import run_train
from wsi_mil.mil.synthbags import SyntheticCohort, write_synthetic_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sparse_bags(n_bags: int, dim: int, density: float, seed: int) -> list[np.ndarray]:
    """Bags of 3-30 tiles of word-count-like features: 0 except a ``density`` share of small counts."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_bags):
        n = int(rng.integers(3, 31))
        counts = rng.poisson(3.0, (n, dim)) + 1
        out.append((counts * (rng.random((n, dim)) < density)).astype(np.float32))
    return out


def test_feature_stats_match_numpy() -> None:
    bags = _sparse_bags(6, 9, 0.2, seed=0)
    bags[2][:, 4] = -7.0  # a negative value: max_abs is of |x|
    stats = BagSet(bags).feature_stats([0, 2, 3])
    x = np.concatenate([bags[0], bags[2], bags[3]])
    np.testing.assert_allclose(stats.mean.numpy(), x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.std.numpy(), x.std(0), rtol=1e-5)
    np.testing.assert_array_equal(stats.max_abs.numpy(), np.abs(x).max(0))
    assert stats.zero_share == pytest.approx(float((x == 0).mean()))


def test_auto_is_maxabs_on_sparse_uncentred_features_only() -> None:
    sparse = BagSet(_sparse_bags(8, 20, 0.03, seed=1)).feature_stats(list(range(8)))
    dense = BagSet([np.random.default_rng(2).standard_normal((10, 20)).astype(np.float32)]).feature_stats([0])
    assert sparse.zero_share >= SPARSE_ZERO_SHARE > dense.zero_share
    assert applied_scaling("auto", sparse, "none") == "maxabs"
    assert applied_scaling("auto", dense, "none") == "zscore"
    assert applied_scaling("auto", sparse, "mean") == "zscore"  # centred bags keep the z-score
    assert applied_scaling("zscore", sparse, "none") == "zscore"  # as given when not auto
    assert applied_scaling("maxabs", dense, "none") == "maxabs"


@pytest.mark.parametrize(("mode", "reference"), [("maxabs", MaxAbsScaler), ("zscore", StandardScaler)])
def test_head_scales_features_as_scikit_learn_does(mode: str, reference: type) -> None:
    bags = _sparse_bags(10, 15, 0.3, seed=3)
    bags[0][:, 7] = 0.0  # a feature that is 0 on the training tiles ...
    bags[1][:, 7] = 0.0
    head = create_head("weldon", 15, 2, {"tile_hidden": None})
    assert apply_scaling(head, BagSet(bags).feature_stats([0, 1]), mode) == mode
    train = np.concatenate(bags[:2])
    test = bags[4].copy()
    test[:, 7] = 5.0  # ... and not at inference: weight 0, not a division by zero
    want = reference().fit(train).transform(test)
    got = head.standardize(torch.as_tensor(test)[None])[0].numpy()
    want[:, 7] = 0.0  # scikit-learn keeps a constant feature unscaled; the head gives it weight 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if mode == "maxabs":
        assert np.all(got[test == 0] == 0)  # zeros stay zeros: no centring
        assert np.abs(head.standardize(torch.as_tensor(train)[None]).numpy()).max() <= 1.0


def test_maxabs_with_per_bag_zscore_is_refused() -> None:
    head = create_head("weldon", 6, 2, {"bag_centring": "zscore", "tile_hidden": None})
    stats = BagSet(_sparse_bags(4, 6, 0.1, seed=4)).feature_stats([0, 1, 2, 3])
    with pytest.raises(ValueError, match="maxabs does not combine with head_options.bag_centring: zscore"):
        apply_scaling(head, stats, "maxabs")
    assert apply_scaling(head, stats, "auto") == "zscore"


def test_config_reads_booleans_and_refuses_unknown_scalings() -> None:
    assert TrainConfig(standardize=True).standardize == "zscore"
    assert TrainConfig(standardize=False).standardize == "none"
    assert TrainConfig().standardize == "auto"
    with pytest.raises(ValidationError, match="standardize"):
        TrainConfig(standardize="max-abs")


def test_train_on_sparse_bags_records_maxabs_and_predict_scales_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    bags = _sparse_bags(24, 40, 0.02, seed=6)
    labels = np.array([i % 2 for i in range(24)])
    for bag, y in zip(bags, labels, strict=True):  # positives: one tile holds the rare word 0
        if y:
            bag[int(rng.integers(len(bag))), 0] = 4.0
    co = SyntheticCohort([f"s{i:02d}" for i in range(24)], labels, bags, [np.zeros(len(b), bool) for b in bags],
                         [f"c{i:02d}" for i in range(24)])
    features, labels_csv = write_synthetic_cohort(co, tmp_path / "features" / "enc", encoder_id="enc",
                                                  labels_csv=tmp_path / "labels.csv")
    cfg = TrainConfig(head="weldon", folds=2, max_epochs=3, min_epochs=1, patience=2, bootstrap=0, batch_size=8,
                      device="cpu", tune="off")
    summary = run_train(features, labels_csv, tmp_path / "run", cfg)
    assert [f["feature_scaling"] for f in summary.metrics["folds"]] == ["maxabs", "maxabs"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["final_model"]["feature_scaling"] == "maxabs"
    model = load_model_run(tmp_path / "run")
    train_max = np.abs(np.concatenate(bags)).max(0)
    np.testing.assert_allclose(model.head.feature_scale.numpy(), np.where(train_max > 0, 1 / train_max, 0), rtol=1e-6)
    assert np.all(model.head.feature_shift.numpy() == 0)
