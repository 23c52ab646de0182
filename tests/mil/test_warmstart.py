"""``tile_init: contrast`` and ``outliers``: the warm starts find the lesion direction from slide labels alone,
match plain references, heads load them, training keeps what they found, and what they cannot do is refused
clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from wsi_mil.config import build_config
from wsi_mil.errors import ConfigError
from wsi_mil.mil import create_head
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.synthbags import make_synthetic_bags
from wsi_mil.mil.training import build_head, fit, predict_probs
from wsi_mil.mil.warmstart import contrast_direction, fourth_moment, outlier_direction

DIM = 16


def _few(n: int, seed: int):
    """Bags of 300-500 tiles; positives hold 1-2 lesion tiles shifted +3 in 4 of 16 dimensions."""
    return make_synthetic_bags(n_slides=n, tiles=(300, 500), dim=DIM, lesion_fraction=(0.002, 0.004), shift=3.0,
                               n_informative=4, slide_noise=0.5, seed=seed)


def test_outlier_direction_finds_the_lesion_direction_deterministically() -> None:
    co = _few(100, 0)
    assert max(int(les.sum()) for les in co.lesion) <= 2
    w, b = outlier_direction(co.features, co.labels, seed=0)
    truth = np.zeros(DIM)
    truth[:4] = 1.0
    cos = float(w @ truth / np.linalg.norm(w) / np.linalg.norm(truth))
    assert cos > 0.75, cos  # 0.84 measured (random directions in 16-d: ~0.25)
    w2, b2 = outlier_direction(co.features, co.labels, seed=0)
    assert np.array_equal(w, w2) and b == b2
    with pytest.raises(ValueError, match="both classes"):
        outlier_direction(co.features, np.zeros(len(co.labels), dtype=np.int64))


def _reference_outlier_direction(bags: list[np.ndarray], labels: np.ndarray, top_positive: int = 5,
                                 top_negative: int = 50, refits: int = 3, c: float = 0.1,
                                 seed: int = 0) -> tuple[np.ndarray, float]:
    """The warm start written plainly in NumPy, whole bags in memory (the module's steps 1-4)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    centred = [np.asarray(b, np.float64) - np.median(np.asarray(b, np.float64), axis=0) for b in bags]
    negatives = []
    for x, y in zip(centred, labels, strict=True):
        if y == 0:
            negatives.append(x[rng.choice(len(x), 2000, replace=False)] if len(x) > 2000 else x)
    neg = np.concatenate(negatives)
    mean, cov = neg.mean(0), np.cov(neg, rowvar=False)
    precision = np.linalg.pinv(cov + 1e-6 * np.eye(neg.shape[1]))

    def score(x: np.ndarray) -> np.ndarray:
        return np.einsum("ij,jk,ik->i", x - mean, precision, x - mean)

    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    for _ in range(refits + 1):
        rows, ys = [], []
        for x, y in zip(centred, labels, strict=True):
            k = min(top_positive if y == 1 else top_negative, len(x))
            rows.append(x[np.argsort(score(x))[len(x) - k:]])
            ys.append(np.full(k, float(y)))
        model.fit(np.concatenate(rows), np.concatenate(ys))
        score = model.decision_function
    return model.coef_[0], float(model.intercept_[0])


@pytest.mark.parametrize("tiles", [(300, 500), (2100, 2400)])  # the second: the Gaussian's subsample
def test_outlier_direction_matches_a_plain_numpy_reference_on_arrays_and_tensors(tiles: tuple[int, int]) -> None:
    co = make_synthetic_bags(n_slides=40, tiles=tiles, dim=DIM, lesion_fraction=(0.002, 0.004), shift=3.0,
                             n_informative=4, slide_noise=0.5, seed=3)
    ref_w, ref_b = _reference_outlier_direction(co.features, co.labels, seed=4)
    w, b = outlier_direction(co.features, co.labels, seed=4)
    np.testing.assert_allclose(w, ref_w, rtol=1e-4, atol=1e-6)
    assert b == pytest.approx(ref_b, rel=1e-4, abs=1e-6)
    tensors = [torch.from_numpy(np.asarray(f, np.float32)) for f in co.features]  # as train passes them
    wt, bt = outlier_direction(tensors, co.labels, seed=4)
    np.testing.assert_allclose(wt, ref_w, rtol=1e-3, atol=1e-5)  # float32 bags: rounding of the input only


def test_heads_load_the_start_in_every_row() -> None:
    w = torch.arange(DIM, dtype=torch.float32)
    chowder = create_head("chowder", DIM, 2, n_members=3)
    chowder.init_tile_scorer(w, -2.0)
    assert torch.equal(chowder.embedding.weight, w.expand(3, DIM)) and (chowder.embedding.bias == -2.0).all()
    for name in ("weldon", "lse", "max", "mean"):
        head = create_head(name, DIM, 2)
        head.init_tile_scorer(w, 0.5)
        layer = head.tile_scorer_layer()
        assert layer is not None and torch.equal(layer.weight[0], w)
    with pytest.raises(ValueError, match="no linear tile scorer"):
        create_head("attention", DIM, 2).init_tile_scorer(w, 0.0)
    with pytest.raises(ValueError, match="no linear tile scorer"):
        create_head("chowder", DIM, 3).init_tile_scorer(w, 0.0)  # multi-class: several outputs


def test_warm_started_chowder_finds_few_lesion_slides_where_random_start_does_not(one_torch_thread: None) -> None:
    train, held = _few(80, 1), _few(40, 2)
    bags = BagSet(train.features + held.features, torch.device("cpu"))
    y = np.concatenate([train.labels, held.labels])
    tr, te = np.arange(80), np.arange(80, 120)
    aucs = {}
    for init in ("random", "outliers", "contrast"):
        cfg = TrainConfig(head="chowder", tile_init=init, tune="off", max_epochs=30, bootstrap=0, device="cpu")
        head = build_head(cfg, DIM, 2, seed=0)
        fit(head, bags, y, tr, tr[:0], cfg, seed=0)
        aucs[init] = roc_auc_score(y[te], predict_probs(head, bags, te.tolist(), 1 << 16)[:, 1])
    assert aucs["outliers"] > 0.85 and aucs["outliers"] > aucs["random"] + 0.15, aucs
    assert aucs["contrast"] > 0.85 and aucs["contrast"] > aucs["random"] + 0.15, aucs


def test_auto_starts_from_the_contrast_on_large_binary_bags_only() -> None:
    from wsi_mil.mil.training import warm_start_method

    big = BagSet([np.zeros((250, DIM), np.float32)] * 4 + [np.zeros((20, DIM), np.float32)] * 4, torch.device("cpu"))
    auto = TrainConfig()
    assert auto.tile_init == "auto"
    chowder, attention = create_head("chowder", DIM, 2), create_head("attention", DIM, 2)
    assert warm_start_method(auto, chowder, big, np.arange(4)) == "contrast"  # slides: hundreds of tiles
    assert warm_start_method(auto, chowder, big, np.arange(4, 8)) is None  # classic MIL bags: a few dozen
    assert warm_start_method(auto, attention, big, np.arange(4)) is None  # no linear tile scorer
    assert warm_start_method(auto, create_head("chowder", DIM, 3), big, np.arange(4)) is None  # multi-class
    assert warm_start_method(TrainConfig(tile_init="random"), chowder, big, np.arange(4)) is None
    assert warm_start_method(TrainConfig(tile_init="outliers"), chowder, big, np.arange(4, 8)) == "outliers"
    assert warm_start_method(TrainConfig(tile_init="contrast"), chowder, big, np.arange(4, 8)) == "contrast"


@pytest.mark.parametrize("start", ["outliers", "contrast"])
def test_warm_starts_are_for_binary_classification(start: str) -> None:
    with pytest.raises(ConfigError, match=f"tile_init: {start} is for binary classification"):
        build_config(TrainConfig, None, ["task=survival", f"tile_init={start}"])


def test_contrast_direction_finds_the_lesion_direction_deterministically() -> None:
    truth = np.zeros(DIM)
    truth[:4] = 0.5
    for seed in (0, 1):
        co = _few(100, seed)
        w, b = contrast_direction(co.features, co.labels, seed=0)
        assert b == 0.0
        cos = float(w @ truth / np.linalg.norm(w))
        assert cos > 0.95, cos  # 0.98-0.99 measured; the outlier start 0.80-0.86 on the same bags
        w2, _ = contrast_direction(co.features, co.labels, seed=0)
        assert np.array_equal(w, w2)
    negatives = np.concatenate([f - f.mean(0) for f, y in zip(co.features, co.labels, strict=True) if y == 0])
    assert float(np.std(negatives @ w)) == pytest.approx(1.0, rel=1e-6)  # unit variance on the negative tiles
    with pytest.raises(ValueError, match="both classes"):
        contrast_direction(co.features, np.ones(len(co.labels), dtype=np.int64))


def _reference_contrast_direction(bags: list[np.ndarray], labels: np.ndarray, shrink: float = 0.1) -> np.ndarray:
    """The contrast start written plainly: each bag's FOBI matrix, class means, SciPy's generalised
    eigensolver, the sign of the higher positive maxima, unit variance on the negative tiles."""
    from scipy.linalg import eigh

    centred = [np.asarray(b, np.float64) - np.asarray(b, np.float64).mean(0) for b in bags]
    fobi = [np.einsum("n,ni,nj->ij", (x ** 2).sum(1) / x.shape[1], x, x) / len(x) for x in centred]
    m0 = np.mean([m for m, y in zip(fobi, labels, strict=True) if y == 0], axis=0)
    m1 = np.mean([m for m, y in zip(fobi, labels, strict=True) if y == 1], axis=0)
    dim = len(m0)
    _, vectors = eigh(m1, m0 + shrink * np.trace(m0) / dim * np.eye(dim))
    v = vectors[:, -1]
    highs = [float((x @ v).max()) for x in centred]
    lows = [float(-(x @ v).min()) for x in centred]
    if roc_auc_score(labels, lows) > roc_auc_score(labels, highs):
        v = -v
    return v / np.std(np.concatenate([x @ v for x, y in zip(centred, labels, strict=True) if y == 0]))


def test_contrast_direction_matches_a_plain_reference_on_arrays_and_tensors() -> None:
    co = make_synthetic_bags(n_slides=40, tiles=(300, 500), dim=DIM, lesion_fraction=(0.002, 0.004), shift=3.0,
                             n_informative=4, slide_noise=0.5, seed=3)
    ref = _reference_contrast_direction(co.features, co.labels)
    w, _ = contrast_direction(co.features, co.labels)
    np.testing.assert_allclose(w, ref, rtol=1e-6, atol=1e-8)
    tensors = [torch.from_numpy(np.asarray(f, np.float32)) for f in co.features]
    wt, _ = contrast_direction(tensors, co.labels)
    np.testing.assert_allclose(wt, ref, rtol=1e-3, atol=1e-5)
    x = np.asarray(co.features[0], np.float64)
    xc = x - x.mean(0)
    by_hand = sum(float(r @ r) / DIM * np.outer(r, r) for r in xc) / len(x)
    np.testing.assert_allclose(fourth_moment(torch.from_numpy(x)).numpy(), by_hand, rtol=1e-10)


def test_contrast_start_subsamples_large_negative_bags_deterministically_per_seed() -> None:
    co = make_synthetic_bags(n_slides=20, tiles=(2100, 2300), dim=DIM, lesion_fraction=(0.002, 0.004), shift=3.0,
                             n_informative=4, slide_noise=0.5, seed=5)
    a, _ = contrast_direction(co.features, co.labels, seed=0)
    b, _ = contrast_direction(co.features, co.labels, seed=0)
    c, _ = contrast_direction(co.features, co.labels, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(float(a @ c) / np.linalg.norm(a) / np.linalg.norm(c)) > 0.95  # a subsample of the negatives only


@pytest.mark.parametrize("name", ["chowder", "weldon"])
def test_tile_hidden_auto_is_settled_from_the_training_bag_sizes(name: str) -> None:
    """CHOWDER's and WELDON's ``tile_hidden: auto``: 64 ReLU units for classification on bags of instances, the paper's linear
    scorer on slides (the outlier start needs it), for survival and regression, and when ``tile_init: outliers``."""
    from wsi_mil.mil.heads._registry import SLIDE_BAG_MIN_TILES
    from wsi_mil.mil.heads.options import AUTO_TILE_HIDDEN
    from wsi_mil.mil.training import settle_bag_defaults

    rng = np.random.default_rng(0)
    small, large = SLIDE_BAG_MIN_TILES - 1, SLIDE_BAG_MIN_TILES
    bags = BagSet([rng.standard_normal((n, DIM)).astype(np.float32) for n in (small, small, small, large, large)])
    instances, slides = np.arange(3), np.arange(2, 5)  # medians: small, large
    chowder = TrainConfig(head=name)
    assert chowder.head_options.tile_hidden == "auto"
    lines: list[str] = []
    settled = settle_bag_defaults(chowder, bags, instances, lines.append)
    assert settled.head_options.tile_hidden == AUTO_TILE_HIDDEN and "tile_hidden" in lines[0]
    assert settle_bag_defaults(settled, bags, slides) == settled  # idempotent: settled once, kept
    assert settle_bag_defaults(chowder, bags, slides).head_options.tile_hidden is None
    for start in ("outliers", "contrast"):
        linear = settle_bag_defaults(TrainConfig(head=name, tile_init=start), bags, instances)
        assert linear.head_options.tile_hidden is None
    for task in ("survival", "regression"):
        assert settle_bag_defaults(TrainConfig(head=name, task=task), bags, instances).head_options.tile_hidden is None
    given = TrainConfig(head=name, head_options={"tile_hidden": 8})
    assert settle_bag_defaults(given, bags, slides).head_options.tile_hidden == 8
    lse = TrainConfig(head="lse", head_options={"bag_centring": "none", "feature_components": None})
    assert settle_bag_defaults(lse, bags, instances) == lse  # no auto option left
    # a head built directly (no training bags) and a run saved before the option: the linear scorer
    assert create_head(name, DIM, 2).tile_scorer_layer() is not None
    assert create_head(name, DIM, 2, tile_hidden=8).tile_scorer_layer() is None  # no outlier start


def test_weldon_k_auto_is_half_the_bag_on_bags_of_instances_and_ten_on_slides() -> None:
    """WELDON's ``k_top`` / ``k_bottom: auto``: half of the bag for classification below 200 tiles (median),
    10 on slides without a warm start and for the other tasks; a k set in the config is kept; settled values stay unset, so a
    search (``train --tune on``) still searches them from the settled value."""
    from wsi_mil.mil import tuning
    from wsi_mil.mil.heads._registry import SLIDE_BAG_MIN_TILES
    from wsi_mil.mil.heads.options import BAG_SHARE_K, SLIDE_K
    from wsi_mil.mil.training import settle_bag_defaults

    rng = np.random.default_rng(0)
    small, large = SLIDE_BAG_MIN_TILES - 1, SLIDE_BAG_MIN_TILES
    bags = BagSet([rng.standard_normal((n, DIM)).astype(np.float32) for n in (small, small, small, large, large)])
    instances, slides = np.arange(3), np.arange(2, 5)
    cfg = TrainConfig(head="weldon")
    settled = settle_bag_defaults(cfg, bags, instances).head_options
    assert (settled.k_top, settled.k_bottom) == (BAG_SHARE_K, BAG_SHARE_K) == (0.5, 0.5)
    assert "k_top" not in settled.model_fields_set and "k_bottom" not in settled.model_fields_set
    on_slides = settle_bag_defaults(TrainConfig(head="weldon", tile_init="random"), bags, slides).head_options
    assert (on_slides.k_top, on_slides.k_bottom) == (SLIDE_K, SLIDE_K) == (10, 10)  # with a start: test_kchoice.py
    survival = settle_bag_defaults(TrainConfig(head="weldon", task="survival"), bags, instances).head_options
    assert (survival.k_top, survival.k_bottom) == (10, 10)
    given = settle_bag_defaults(TrainConfig(head="weldon", head_options={"k_top": 3, "k_bottom": None}), bags,
                                instances).head_options
    assert (given.k_top, given.k_bottom) == (3, None) and {"k_top", "k_bottom"} <= given.model_fields_set
    space, fixed = tuning.search_space(settle_bag_defaults(cfg, bags, instances))
    assert {"head_options.k_top", "head_options.k_bottom"} <= set(space) and not fixed
    # a head built directly (no training bags): the slide value; the pooling reads the settled share
    direct = create_head("weldon", DIM, 2)
    assert direct.selection_k() == (10, 10)
    assert create_head("weldon", DIM, 2, settled).selection_k() == (0.5, 0.5)
    with pytest.raises(ConfigError, match="k_top.*must be auto, a whole number of tiles"):
        TrainConfig(head="weldon", head_options={"k_top": 0})
