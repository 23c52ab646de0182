"""What a search's fits on one inner fold share (:mod:`wsi_mil.mil.fitcache`): computed once, the same fit as
computing it afresh, kept apart by transform and positions, and within the search's memory budget."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import wsi_mil.mil.training as training
import wsi_mil.mil.warmstart as warmstart
from wsi_mil.mil import prepared, tuning
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.fitcache import CacheBudget, FitCache
from wsi_mil.mil.synthbags import make_synthetic_bags
from wsi_mil.mil.training import build_head, fit, settle_bag_defaults

DIM = 272  # >= 256: slides get feature_components 128, the z-score and the contrast start


@pytest.fixture(scope="module")
def slides():
    """24 slides of 200-260 tiles x 272-d; positives hold ~2 % lesion tiles."""
    return make_synthetic_bags(n_slides=24, tiles=(200, 260), dim=DIM, lesion_fraction=(0.02, 0.03), shift=2.0,
                               n_informative=8, slide_noise=0.5, seed=0)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each fit-setup step ran: components, preparing, warm start."""
    seen: Counter[str] = Counter()

    def counted(module: object, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            seen[name] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counted(training, "fit_feature_components")
    counted(prepared, "prepare_bags")
    counted(warmstart, "contrast_direction")  # tile_init auto on slides
    return seen


def _cfg(bags: BagSet, train: np.ndarray, **kw: object) -> TrainConfig:
    cfg = settle_bag_defaults(TrainConfig(**{"seed": 0, "min_epochs": 2, "patience": 2, "max_epochs": 5, **kw}),
                              bags, train)
    assert cfg.head_options.feature_components == 128 and cfg.tile_init == "auto"
    return cfg


def _fit(cfg: TrainConfig, bags: BagSet, labels: np.ndarray, train: np.ndarray, val: np.ndarray,
         head_seed: int, cache: FitCache | None) -> training.FitResult:
    head = build_head(cfg, DIM, 2, seed=head_seed)
    return fit(head, bags, labels, train, val, cfg, seed=7, stats=None, cache=cache)


def test_fits_sharing_a_cache_set_up_once_and_fit_as_without_it(slides, calls: Counter[str],
                                                                 one_torch_thread: None) -> None:
    bags = BagSet(slides.features)
    train, val = np.arange(16), np.arange(16, 22)
    cfg = _cfg(bags, train)
    cache = FitCache()
    first = _fit(cfg, bags, slides.labels, train, val, 1, cache)
    other = cfg.model_copy(update={"lr": cfg.lr * 3})  # another trial: another lr, another initialisation
    second = _fit(other, bags, slides.labels, train, val, 2, cache)
    assert calls == {"fit_feature_components": 1, "prepare_bags": 1, "contrast_direction": 1}
    assert len(cache.components) == len(cache.prepared) == len(cache.warm_starts) == 1
    alone = _fit(other, bags, slides.labels, train, val, 2, None)
    assert calls == {"fit_feature_components": 2, "prepare_bags": 2, "contrast_direction": 2}
    assert second.best_epoch == alone.best_epoch and len(second.history) == len(alone.history)
    for k, v in alone.state.items():
        assert torch.equal(second.state[k], v), k  # the same fit, to the bit
    assert not all(torch.equal(first.state[k], v) for k, v in alone.state.items())


def test_other_positions_or_statistics_get_their_own_entries(slides, calls: Counter[str]) -> None:
    bags = BagSet(slides.features)
    train, val = np.arange(16), np.arange(16, 22)
    cfg = _cfg(bags, train, max_epochs=2, min_epochs=1)
    cache = FitCache()
    _fit(cfg, bags, slides.labels, train, val, 1, cache)
    _fit(cfg, bags, slides.labels, np.arange(2, 18), val, 1, cache)  # other training slides
    assert calls["fit_feature_components"] == calls["prepare_bags"] == calls["contrast_direction"] == 2
    unscaled = cfg.model_copy(update={"standardize": "none"})  # another standardisation of the same slides
    _fit(unscaled, bags, slides.labels, train, val, 1, cache)
    assert calls["fit_feature_components"] == calls["prepare_bags"] == calls["contrast_direction"] == 3
    assert len(cache.components) == len(cache.prepared) == len(cache.warm_starts) == 3


def test_prepared_bags_beyond_the_budget_are_prepared_but_not_kept(slides, calls: Counter[str]) -> None:
    bags = BagSet(slides.features)
    train, val = np.arange(16), np.arange(16, 22)
    cfg = _cfg(bags, train, max_epochs=2, min_epochs=1)
    need = prepared.prepared_nbytes(build_head(cfg, DIM, 2, 0), bags, np.r_[train, val])
    tight = FitCache(CacheBudget(need - 1))
    for _ in range(2):
        _fit(cfg, bags, slides.labels, train, val, 1, tight)
    assert calls["prepare_bags"] == 2 and not tight.prepared and tight.budget.left == need - 1
    assert calls["contrast_direction"] == 1  # a few floats: kept whatever the budget
    room = CacheBudget(need + 5)
    _fit(cfg, bags, slides.labels, train, val, 1, FitCache(room))
    assert room.left == 5


def test_a_search_chooses_the_same_with_or_without_its_cache(slides, monkeypatch: pytest.MonkeyPatch,
                                                             one_torch_thread: None) -> None:
    bags = BagSet(slides.features)
    pool = np.arange(24)
    cfg = _cfg(bags, pool, tune="on", tune_trials=3, tune_folds=2, max_epochs=3)
    groups = np.array([f"case{i}" for i in range(24)])

    def search() -> tuning.SearchResult:
        return tuning.search_settings(bags, slides.labels, groups, pool, cfg, ["0", "1"], seed=0)

    assert tuning.search_cache_bytes(bags) >= prepared.prepared_nbytes(build_head(cfg, DIM, 2, 0), bags, pool)
    cached = search()
    real_fit = tuning.fit
    monkeypatch.setattr(tuning, "fit", lambda *a, **kw: real_fit(*a, **{**kw, "cache": None}))  # nothing shared
    plain = search()
    assert cached.n_trials == plain.n_trials == 3
    assert [t["value"] for t in cached.trials] == [t["value"] for t in plain.trials]
    assert cached.chosen == plain.chosen and cached.inner_score == plain.inner_score
