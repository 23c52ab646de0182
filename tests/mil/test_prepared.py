"""Prepared once per fit (:mod:`wsi_mil.mil.prepared`): the bags a fit trains on hold exactly what the head's
``prepare`` gives, a fit on them is the fit on raw bags, and the memory rule keeps the cache small."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mil.mil import create_head, prepared
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.heads.ensemble import FoldEnsemble
from wsi_mil.mil.synthbags import make_synthetic_bags
from wsi_mil.mil.training import build_head, fit, predict_probs, set_feature_transform, settle_bag_defaults

DIM = 272  # >= 256: slides get feature_components 128 and the z-score


def _slides(n: int = 24, seed: int = 0):
    """Slides of 200-260 tiles x 272-d (the slide defaults apply); positives hold ~2 % lesion tiles."""
    return make_synthetic_bags(n_slides=n, tiles=(200, 260), dim=DIM, lesion_fraction=(0.02, 0.03), shift=2.0,
                               n_informative=8, slide_noise=0.5, seed=seed)


def _settled(bags: BagSet, positions: np.ndarray, **kw: object) -> TrainConfig:
    return settle_bag_defaults(TrainConfig(seed=0, min_epochs=2, patience=2, max_epochs=6, **kw), bags, positions)


def test_prepared_bags_hold_the_heads_prepared_tiles_and_nothing_elsewhere() -> None:
    co = _slides()
    bags = BagSet(co.features)
    train = np.arange(0, 24, 2)
    cfg = _settled(bags, train)
    assert cfg.head_options.feature_components == 128 and cfg.head_options.bag_centring == "zscore"
    head = build_head(cfg, DIM, 2, seed=0)
    set_feature_transform(head, bags, train, cfg)
    ready = prepared.prepare_bags(head, bags, train, tile_budget=600)  # batches of 2-3 bags: padding inside
    assert ready.prepared and not bags.prepared and ready.dim == head.score_dim == 128
    with torch.no_grad():
        for p in range(len(bags)):
            if p not in train:
                assert ready.sizes[p] == 0
                continue
            x = torch.from_numpy(co.features[p])[None]
            want = head.prepare(x, torch.ones(x.shape[:2], dtype=torch.bool))[0]
            torch.testing.assert_close(ready.bags[p], want, rtol=1e-5, atol=1e-5)
        probs = predict_probs(head, ready, train.tolist(), 600)
        torch.testing.assert_close(torch.from_numpy(probs), torch.from_numpy(predict_probs(head, bags, train.tolist(), 600)))


@pytest.mark.parametrize("head_name", ["chowder", "weldon"])
def test_a_fit_on_prepared_bags_is_the_fit_on_raw_bags(head_name: str, monkeypatch: pytest.MonkeyPatch,
                                                      one_torch_thread: None) -> None:
    """Same epochs, same early-stopping choice, same weights (to float rounding), outlier start and
    validation included: only where the work is done changes."""
    co = _slides()
    bags = BagSet(co.features)
    train, val = np.arange(18), np.arange(18, 24)
    cfg = _settled(bags, train, head=head_name)

    def run() -> tuple[dict[str, torch.Tensor], list[dict[str, float | None]]]:
        head = build_head(cfg, DIM, 2, seed=3)
        res = fit(head, bags, co.labels, train, val, cfg, seed=3)
        return res.state, [{k: v for k, v in row.items() if k != "seconds"} for row in res.history]

    assert prepared.worth_preparing(build_head(cfg, DIM, 2, 0), bags, train)
    cached_state, cached_history = run()
    monkeypatch.setattr(prepared, "worth_preparing", lambda *_: False)
    raw_state, raw_history = run()
    assert len(cached_history) == len(raw_history) >= 2
    for a, b in zip(cached_history, raw_history, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    for k in raw_state:
        torch.testing.assert_close(cached_state[k], raw_state[k], rtol=1e-3, atol=1e-4)


def test_the_cache_takes_at_most_half_the_bags_memory_beyond_small_cohorts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepared, "DENSE_BYTES", 0)  # as if the cohort were large
    rng = np.random.default_rng(0)
    wide = BagSet([rng.standard_normal((50, DIM)).astype(np.float32) for _ in range(4)])
    half = BagSet([rng.standard_normal((50, DIM)).astype(np.float16) for _ in range(4)])
    positions = np.arange(4)
    projected = create_head("chowder", DIM, 2, feature_components=128)
    plain = create_head("chowder", DIM, 2, bag_centring="zscore")
    assert prepared.worth_preparing(projected, wide, positions)  # 128 / 272 of float32: under half
    assert not prepared.worth_preparing(projected, half, positions)  # 2 x 128 / 272 of float16: over half
    assert not prepared.worth_preparing(plain, wide, positions)  # a float32 copy as large as the bags
    assert prepared.prepared_nbytes(projected, wide, np.array([0, 0, 1])) == 100 * 128 * 4  # positions once
    monkeypatch.undo()
    assert prepared.worth_preparing(plain, half, positions)  # a small cohort: always
    ready = prepared.prepare_bags(plain, half, positions, 1000)
    assert not prepared.worth_preparing(plain, ready, positions)  # never twice


def test_prepared_input_is_checked_against_score_dim_and_refused_by_an_ensemble() -> None:
    head = create_head("chowder", DIM, 2, feature_components=16).eval()
    mask = torch.ones(1, 30, dtype=torch.bool)
    with torch.no_grad():
        head(torch.randn(1, 30, 16), mask, prepared=True)
        with pytest.raises(ValueError, match=r"\(B, N, 16\)"):
            head(torch.randn(1, 30, DIM), mask, prepared=True)
        with pytest.raises(ValueError, match="its members prepare"):
            FoldEnsemble([head])(torch.randn(1, 30, 16), mask, prepared=True)
