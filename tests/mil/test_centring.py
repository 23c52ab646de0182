"""``head_options.bag_centring``: every bag centred on its own mean or median tile (``zscore``: and scaled by
its standard deviation) before its tiles are scored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsi_mil.mil import centring, create_head
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.centring import BAG_STD_FLOOR, bag_mean, bag_median, bag_std
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.heads._registry import SLIDE_BAG_MIN_TILES
from wsi_mil.mil.training import settle_bag_defaults

DIM = 6


def _lower_median(x: np.ndarray) -> np.ndarray:
    """Hand-written reference: per column, the ((n - 1) // 2)-th smallest value."""
    return np.sort(x, axis=0)[(len(x) - 1) // 2]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=4), seed=st.integers(0, 2**16), block=st.integers(1, 8))
def test_bag_median_and_mean_read_the_real_tiles_only(sizes: list[int], seed: int, block: int) -> None:
    rng = np.random.default_rng(seed)
    width = max(max(sizes), 1)
    x = rng.standard_normal((len(sizes), width, DIM)).astype(np.float32) * 10  # padding holds junk
    mask = np.arange(width)[None, :] < np.array(sizes)[:, None]
    got = bag_median(torch.from_numpy(x), torch.from_numpy(mask), block=block).numpy()
    means = bag_mean(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
    assert got.shape == means.shape == (len(sizes), 1, DIM)
    for b, n in enumerate(sizes):
        want = _lower_median(x[b, :n]) if n else np.zeros(DIM, np.float32)
        np.testing.assert_array_equal(got[b, 0], want)
        np.testing.assert_allclose(means[b, 0], x[b, :n].mean(axis=0) if n else 0.0, rtol=1e-5, atol=1e-5)

@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_bag_std_reads_the_real_tiles_only(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    width = max(max(sizes), 1)
    x = rng.standard_normal((len(sizes), width, DIM)).astype(np.float32) * 10
    x[0, :, 0] = 2.5  # a feature constant within a bag: the floor, not 0
    mask = np.arange(width)[None, :] < np.array(sizes)[:, None]
    xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
    got = bag_std(xt, mt, bag_mean(xt, mt)).numpy()
    for b, n in enumerate(sizes):
        want = np.maximum(x[b, :n].std(axis=0), BAG_STD_FLOOR) if n else np.full(DIM, BAG_STD_FLOOR)
        np.testing.assert_allclose(got[b, 0], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("block", [1, 7, 40, 1 << 20])
def test_blocked_sums_match_numpy_and_never_read_nan_or_inf_padding(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mean and std are summed a block of rows at a time on the CPU (no (B, N, D) temporary): every block size
    gives numpy's figures, and NaN / inf in the padding never reach them."""
    monkeypatch.setattr(centring, "BLOCK_ELEMENTS", block)
    rng = np.random.default_rng(3)
    sizes = [23, 0, 9, 17]
    x = rng.standard_normal((4, 23, DIM)).astype(np.float32) * 3 + 1
    mask = np.arange(23)[None, :] < np.array(sizes)[:, None]
    x[~mask] = np.nan
    x[1, :4] = np.inf
    xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
    means = bag_mean(xt, mt).numpy()
    stds = bag_std(xt, mt, bag_mean(xt, mt)).numpy()
    for b, n in enumerate(sizes):
        want_mean = x[b, :n].mean(axis=0) if n else np.zeros(DIM)
        want_std = np.maximum(x[b, :n].std(axis=0), BAG_STD_FLOOR) if n else np.full(DIM, BAG_STD_FLOOR)
        np.testing.assert_allclose(means[b, 0], want_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stds[b, 0], want_std, rtol=1e-5, atol=1e-6)
    full = torch.from_numpy(x[:1, :23].copy())  # a batch without padding: the unmasked path
    ones = torch.ones(1, 23, dtype=torch.bool)
    np.testing.assert_allclose(bag_mean(full, ones)[0, 0].numpy(), x[0].mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bag_std(full, ones, bag_mean(full, ones))[0, 0].numpy(), x[0].std(axis=0), rtol=1e-5)


@pytest.mark.parametrize("how", ["mean", "median", "zscore"])
@pytest.mark.parametrize("name", ["chowder", "weldon", "max", "lse"])
def test_a_centred_head_ignores_a_slide_offset_and_padding(name: str, how: str) -> None:
    """The point of the option: adding one vector to every tile of a slide (its stain or scanner
    offset) changes nothing (``zscore``: nor does scaling each of its features), and neither does
    padding it in a batch with a larger bag."""
    torch.manual_seed(0)
    head = create_head(name, DIM, 2, bag_centring=how).eval()
    plain = create_head(name, DIM, 2, bag_centring="none").eval()
    plain.load_state_dict(head.state_dict())
    bag = torch.randn(1, 40, DIM)
    shifted = bag + 3.0 * torch.randn(1, 1, DIM)
    if how == "zscore":
        shifted = shifted * (0.5 + 2.0 * torch.rand(1, 1, DIM))
    one = torch.ones(1, 40, dtype=torch.bool)
    with torch.no_grad():
        z, s = head(bag, one)
        z2, s2 = head(shifted, one)
        torch.testing.assert_close(z2, z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s2, s, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(plain(shifted, one)[0], plain(bag, one)[0], atol=1e-3)  # the test can fail
        padded = torch.cat([bag, torch.full((1, 25, DIM), 100.0)], dim=1)
        batch = torch.cat([padded, torch.randn(1, 65, DIM)])
        mask = torch.ones(2, 65, dtype=torch.bool)
        mask[0, 40:] = False
        zb, sb = head(batch, mask)
        torch.testing.assert_close(zb[:1], z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sb[:1, :40], s, atol=1e-5, rtol=1e-5)


def test_standardised_in_place_inference_gives_the_same_scores() -> None:
    """``forward(standardized=True)`` (a model run's whole-bag path) centres the caller's copy in place."""
    torch.manual_seed(1)
    head = create_head("chowder", DIM, 2, bag_centring="median").eval()
    head.set_standardization(torch.randn(DIM), torch.rand(DIM) + 0.5)
    bag, mask = torch.randn(1, 30, DIM), torch.ones(1, 30, dtype=torch.bool)
    with torch.no_grad():
        want = head(bag, mask)
        own = bag.clone()
        head.standardize_(own)
        got = head(own, mask, standardized=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_feature_stats_of_centred_tiles() -> None:
    rng = np.random.default_rng(0)
    bags = [rng.standard_normal((n, DIM)).astype(np.float32) + rng.normal(0, 5, DIM).astype(np.float32)
            for n in (7, 12, 9)]
    centred = np.concatenate([b - _lower_median(b) for b in bags])
    bagset = BagSet(bags, torch.device("cpu"))
    mean, std, *_ = bagset.feature_stats([0, 1, 2], centring="median")
    np.testing.assert_allclose(mean.numpy(), centred.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(std.numpy(), centred.std(axis=0), rtol=1e-5)
    by_mean = np.concatenate([b - b.mean(axis=0) for b in bags])
    mean, std, *_ = bagset.feature_stats([0, 1, 2], centring="mean")
    np.testing.assert_allclose(mean.numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), by_mean.std(axis=0), rtol=1e-5)


def test_auto_centres_slides_for_heads_that_rank_tiles_in_classification_only() -> None:
    rng = np.random.default_rng(0)
    sizes = [SLIDE_BAG_MIN_TILES] * 3 + [SLIDE_BAG_MIN_TILES - 1] * 3
    bags = BagSet([rng.standard_normal((n, DIM)).astype(np.float32) for n in sizes])
    slides, instances = np.arange(3), np.arange(3, 6)

    def settled(positions: np.ndarray, **kw: object) -> str:
        return settle_bag_defaults(TrainConfig(**kw), bags, positions).head_options.bag_centring  # type: ignore[arg-type]

    for head in ("chowder", "weldon", "max", "lse"):
        assert settled(slides, head=head) == "mean"  # zscore only with feature_components (wide features)
        assert settled(instances, head=head) == "none"  # classic MIL bags: the bag mean is the signal
    for head in ("mean", "logistic", "attention"):
        assert settled(slides, head=head) == "none"  # mean pooling would lose its signal
    for task in ("survival", "regression"):
        assert settled(slides, head="chowder", task=task) == "none"
    assert settled(instances, head="chowder", head_options={"bag_centring": "median"}) == "median"
    assert settled(slides, head="chowder", head_options={"bag_centring": "none"}) == "none"
    assert create_head("chowder", DIM, 2).bag_centring() == "none"  # built directly: auto reads as none


def test_zscore_scales_by_one_common_scale_so_features_that_hardly_vary_stay_small() -> None:
    """``zscore``: every feature shares one scale (the median std), then each bag's own std divides it, floored at
    BAG_STD_FLOOR: a nearly dead feature (std 1e-4 of the others') is not blown up to unit variance."""
    rng = np.random.default_rng(0)
    bags = [rng.standard_normal((50, DIM)).astype(np.float32) * np.array([1e-4, 1, 2, 1, 3, 1], np.float32)
            for _ in range(4)]
    bagset = BagSet(bags, torch.device("cpu"))
    head = create_head("chowder", DIM, 2, bag_centring="zscore")
    head.set_standardization(*bagset.feature_stats([0, 1, 2, 3], "zscore")[:2])
    scale = head.feature_scale.numpy()
    np.testing.assert_allclose(scale, scale[0])  # one scale for every feature
    with torch.no_grad():
        x = head.prepare(torch.from_numpy(bags[0])[None], torch.ones(1, 50, dtype=torch.bool))[0].numpy()
    np.testing.assert_allclose(x[:, 1:].std(axis=0), 1.0, rtol=1e-3)  # the bag's own std divides each feature
    assert x[:, 0].std() < 1e-2  # the nearly dead feature: divided by the floor, not by its own tiny std
    per_feature = create_head("chowder", DIM, 2, bag_centring="mean")
    per_feature.set_standardization(*bagset.feature_stats([0, 1, 2, 3], "mean")[:2])
    assert per_feature.feature_scale[0] > 1000 * per_feature.feature_scale[1]  # other centrings: per feature
