"""``head_options.feature_components``: tiles scored in the top K whitened principal components of the
training tiles (checked against scikit-learn's whitened PCA), fitted in training, kept in the weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.decomposition import PCA

from wsi_mil.errors import ConfigError
from wsi_mil.mil import create_head, load_model_run
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.components import fit_feature_components, principal_components, tile_sample
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.fitcache import FitCache
from wsi_mil.mil.heads._registry import AUTO_COMPONENTS, AUTO_COMPONENTS_MIN_DIM, SLIDE_BAG_MIN_TILES
from wsi_mil.mil.stage import run_train
from wsi_mil.mil.synthbags import make_synthetic_bags, write_synthetic_cohort
from wsi_mil.mil.training import settle_bag_defaults

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 10


def _sums(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
    t = torch.from_numpy(x.astype(np.float64))
    return t.sum(dim=0), t.T @ t, len(x)


def _correlated(n: int, dim: int, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, rank)) @ rng.standard_normal((rank, dim)) * 3.0 + rng.normal(0, 4, dim)


def test_principal_components_match_scikit_learn_whitened_pca() -> None:
    x = _correlated(600, DIM, DIM, seed=0)
    projection, shift = principal_components(*_sums(x), k=4)
    assert projection.shape == (DIM, 4) and shift.shape == (4,) and projection.dtype == torch.float32
    ours = (torch.from_numpy(x).float() @ projection + shift).numpy()
    theirs = PCA(n_components=4, whiten=True, svd_solver="full").fit_transform(x)
    signs = np.sign((ours * theirs).sum(axis=0))  # a component's sign is a convention
    assert np.all(signs != 0)
    np.testing.assert_allclose(ours * signs, theirs, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.cov(ours, rowvar=False), np.eye(4), atol=1e-4)


def test_directions_without_variance_get_weight_zero_not_infinity() -> None:
    x = _correlated(300, DIM, 3, seed=1)  # tiles in a 3-d subspace of 10
    projection, shift = principal_components(*_sums(x), k=5)
    assert torch.isfinite(projection).all() and torch.isfinite(shift).all()
    assert projection[:, :3].abs().sum(dim=0).min() > 0
    torch.testing.assert_close(projection[:, 3:], torch.zeros(DIM, 2))
    with pytest.raises(ValueError, match="at least 2 training tiles"):
        principal_components(*_sums(x[:1]), k=2)


def test_the_tile_budget_is_spread_over_the_bags() -> None:
    assert tile_sample([5, 0, 7], budget=100) == [5, 0, 7]
    taken = tile_sample([1000, 10, 0, 3000], budget=400)
    assert taken[2] == 0 and all(t >= 1 for i, t in enumerate(taken) if i != 2)
    assert sum(taken) <= 400 and taken[3] > taken[0] > taken[1]


def _fitted_head(name: str = "chowder", centring: str = "zscore", k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    bags = [(_correlated(int(rng.integers(30, 60)), DIM, DIM, seed=seed + i) + rng.normal(0, 3, DIM)).astype(np.float32)
            for i in range(8)]
    bagset = BagSet(bags, torch.device("cpu"))
    torch.manual_seed(seed)
    head = create_head(name, DIM, 2, bag_centring=centring, feature_components=k)
    head.set_standardization(*bagset.feature_stats(list(range(8)), centring)[:2])
    fit_feature_components(head, bagset, list(range(8)))
    return head.eval(), bags


@pytest.mark.parametrize("centring", ["zscore", "none"])
def test_a_fitted_head_scores_its_training_tiles_in_whitened_components(centring: str) -> None:
    head, bags = _fitted_head(centring=centring)
    assert head.score_dim == 4 and head.projects_features()
    with torch.no_grad():
        tiles = torch.cat([head.prepare(torch.from_numpy(b)[None], torch.ones(1, len(b), dtype=torch.bool))[0]
                           for b in bags]).double().numpy()
    assert tiles.shape[1] == 4
    np.testing.assert_allclose(tiles.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.cov(tiles, rowvar=False), np.eye(4), atol=1e-4)


@pytest.mark.parametrize("name", ["chowder", "weldon", "max", "lse", "attention", "logistic"])
def test_the_components_travel_with_the_weights(name: str) -> None:
    head, bags = _fitted_head(name)
    again = create_head(name, DIM, 2, bag_centring="zscore", feature_components=4).eval()
    again.load_state_dict(head.state_dict())
    bag, mask = torch.from_numpy(bags[0])[None], torch.ones(1, len(bags[0]), dtype=torch.bool)
    with torch.no_grad():
        want = head(bag, mask)
        got = again(bag, mask)
        own = bag.clone()
        head.standardize_(own)
        in_place = head(own, mask, standardized=True)  # a model run's whole-bag path
    for a, b, c in zip(got, want, in_place, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(c, b, atol=1e-5, rtol=1e-5)
    unfitted = create_head(name, DIM, 2, bag_centring="zscore", feature_components=4).eval()
    assert not torch.allclose(unfitted.feature_projection, head.feature_projection)  # the test can fail


def test_more_components_than_features_is_an_error_naming_the_option() -> None:
    with pytest.raises(ValueError, match=r"feature_components is 11 but the tile features have 10 dimensions"):
        create_head("chowder", DIM, 2, feature_components=11)
    assert create_head("chowder", DIM, 2).score_dim == DIM  # built directly: auto reads as none
    bags = BagSet([np.zeros((5, DIM), np.float32)] * 2)
    with pytest.raises(ConfigError, match=r"feature_components is 11 but the tile features have 10 dimensions"):
        settle_bag_defaults(TrainConfig(head_options={"feature_components": 11}), bags, np.arange(2))


def test_auto_projects_slides_of_wide_features_for_heads_that_rank_tiles() -> None:
    rng = np.random.default_rng(0)

    def settled(n_tiles: int, dim: int, **kw: object) -> tuple[object, object]:
        bags = BagSet([rng.standard_normal((n_tiles, dim)).astype(np.float32) for _ in range(3)])
        opts = settle_bag_defaults(TrainConfig(**kw), bags, np.arange(3)).head_options  # type: ignore[arg-type]
        return opts.bag_centring, opts.feature_components

    wide, narrow = AUTO_COMPONENTS_MIN_DIM, AUTO_COMPONENTS_MIN_DIM - 1
    for head in ("chowder", "weldon", "max", "lse"):
        assert settled(SLIDE_BAG_MIN_TILES, wide, head=head) == ("zscore", AUTO_COMPONENTS)
        assert settled(SLIDE_BAG_MIN_TILES, narrow, head=head) == ("mean", None)
        assert settled(SLIDE_BAG_MIN_TILES - 1, wide, head=head) == ("none", None)  # bags of instances
    assert settled(SLIDE_BAG_MIN_TILES, wide, head="mean") == ("none", None)
    assert settled(SLIDE_BAG_MIN_TILES, wide, head="chowder", task="survival") == ("none", None)
    assert settled(SLIDE_BAG_MIN_TILES, narrow, head="chowder", head_options={"feature_components": 8}) == ("zscore", 8)
    assert settled(SLIDE_BAG_MIN_TILES, wide, head="chowder", head_options={"feature_components": None}) == ("mean", None)
    assert settled(SLIDE_BAG_MIN_TILES, wide, head="weldon", head_options={"bag_centring": "median"}) == (
        "median", AUTO_COMPONENTS)


def test_train_and_predict_with_auto_components(tmp_path: Path) -> None:
    """A study on slides of 256-d tiles: ``auto`` settles to 128 components, the run's weights hold them,
    and its predictions ignore a slide's stain offset and contrast (``bag_centring: zscore``)."""
    co = make_synthetic_bags(n_slides=16, tiles=(SLIDE_BAG_MIN_TILES, SLIDE_BAG_MIN_TILES + 40),
                             dim=AUTO_COMPONENTS_MIN_DIM, lesion_fraction=(0.02, 0.05), shift=4.0, seed=5)
    features, labels = write_synthetic_cohort(co, tmp_path / "features" / "enc", encoder_id="enc",
                                              labels_csv=tmp_path / "labels.csv")
    cfg = TrainConfig(head="chowder", head_options={"n_members": 2}, folds=2, lr=0.01, max_epochs=4, min_epochs=2,
                      patience=2, bootstrap=10, tiles_per_bag=64, batch_size=8, device="cpu", tune="off")
    run_train(features, labels, tmp_path / "run", cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["head_options"]
    assert saved["feature_components"] == AUTO_COMPONENTS and saved["bag_centring"] == "zscore"
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert weights["feature_projection"].shape == (AUTO_COMPONENTS_MIN_DIM, AUTO_COMPONENTS)
    model = load_model_run(tmp_path / "run")
    bag = np.asarray(co.features[0], dtype=np.float32)
    rng = np.random.default_rng(1)
    restained = bag * rng.uniform(0.5, 2.0, bag.shape[1]).astype(np.float32) + rng.normal(0, 3, bag.shape[1]).astype(np.float32)
    a, b = model.predict_bag(bag), model.predict_bag(restained)
    np.testing.assert_allclose(b.probs, a.probs, atol=1e-4)
    np.testing.assert_allclose(b.tile_scores, a.tile_scores, atol=1e-3, rtol=1e-3)


def test_fits_on_the_same_training_bags_share_one_fit_of_the_components(monkeypatch: pytest.MonkeyPatch) -> None:
    """A search's trials on one inner fold fit the components once (``set_feature_transform``'s cache)."""
    import wsi_mil.mil.training as training

    rng = np.random.default_rng(0)
    bags = BagSet([_correlated(40, DIM, DIM, seed=i).astype(np.float32) + rng.normal(0, 3, DIM).astype(np.float32)
                   for i in range(6)])
    calls: list[int] = []
    real = training.fit_feature_components
    monkeypatch.setattr(training, "fit_feature_components", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    cfg = TrainConfig(head="chowder", head_options={"bag_centring": "zscore", "feature_components": 4})
    cache = FitCache()
    heads = []
    for seed in (0, 1):  # two trials: different initialisations, the same training bags
        torch.manual_seed(seed)
        head = create_head("chowder", DIM, 2, cfg.head_options)
        training.set_feature_transform(head, bags, np.arange(4), cfg, cache=cache)
        heads.append(head)
    assert len(calls) == 1 and [key[:2] for key in cache.components] == [("zscore", 4)]
    torch.testing.assert_close(heads[1].feature_projection, heads[0].feature_projection)
    training.set_feature_transform(create_head("chowder", DIM, 2, cfg.head_options), bags, np.arange(4), cfg)
    assert len(calls) == 2  # without a cache, every fit fits its own
