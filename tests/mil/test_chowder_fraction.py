"""CHOWDER's min-max layer over a share of the bag (``r`` a fraction): hand reference, padding,
gradients, the exact orientation, and the task-dependent default ``r``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsi_mil.mil import create_head
from wsi_mil.mil.heads import ChowderOptions
from wsi_mil.mil.heads.chowder import DEFAULT_R_CLASSES, DEFAULT_R_ONE_OUTPUT
from wsi_mil.mil.minmax import extreme_quantiles


def _reference(scores: np.ndarray, q: float, points: int) -> np.ndarray:
    """Hand-written: the ceil(q n) top (descending) and bottom (ascending) scores read at evenly spaced ranks."""
    k = max(1, math.ceil(q * len(scores)))
    top, bottom = np.sort(scores)[::-1][:k], np.sort(scores)[:k]
    ranks = np.linspace(0.0, k - 1, points) if points > 1 else np.zeros(1)
    return np.concatenate([np.interp(ranks, np.arange(k), top), np.interp(ranks, np.arange(k), bottom)])


@pytest.mark.parametrize(("n", "q", "points"), [(37, 0.1, 10), (200, 0.05, 7), (5, 0.1, 4), (60, 1.0, 3), (9, 0.3, 1)])
def test_quantiles_match_hand_reference_and_ignore_padding(n: int, q: float, points: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.standard_normal(n)
    pad = 6
    scores = torch.zeros(2, n + pad, 1, dtype=torch.float64)
    scores[0, :n, 0] = torch.from_numpy(values)
    scores[0, n:, 0] = 1e6  # padding must never be read
    scores[1, :3, 0] = torch.tensor([2.0, -1.0, 0.5])
    mask = torch.zeros(2, n + pad, dtype=torch.bool)
    mask[0, :n] = True
    mask[1, :3] = True
    out = extreme_quantiles(scores, mask, q, points)
    assert out.shape == (2, 2 * points, 1)
    np.testing.assert_allclose(out[0, :, 0].numpy(), _reference(values, q, points), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[1, :, 0].numpy(), _reference(np.array([2.0, -1.0, 0.5]), q, points), atol=1e-12)


def test_quantiles_empty_bag_is_zero_and_gradients_reach_real_tiles_only() -> None:
    scores = torch.randn(2, 30, 1, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :20] = True  # bag 1 is empty
    out = extreme_quantiles(scores, mask, 0.2, 5)
    assert out[1].abs().sum().item() == 0.0
    out.sum().backward()
    assert scores.grad is not None
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 20:].abs().sum().item() == 0.0 and scores.grad[1].abs().sum().item() == 0.0
    assert scores.grad[0, :20].abs().sum().item() > 0.0


def test_fraction_head_shapes_padding_invariance_and_exact_orientation() -> None:
    torch.manual_seed(0)
    head = create_head("chowder", 6, 2, r=0.2, r_points=4, n_members=3, hidden=[5, 4]).eval()
    x = torch.randn(1, 40, 6, dtype=torch.float32)
    m = torch.ones(1, 40, dtype=torch.bool)
    logits0, tiles0 = head(x, m)
    assert logits0.shape == (1, 2) and tiles0.shape == (1, 40, 2)
    padded = torch.cat([x, torch.full((1, 9, 6), 50.0)], dim=1)
    pm = torch.cat([m, torch.zeros(1, 9, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(head(padded, pm)[0], logits0)
    head.flip_(torch.tensor([[True], [False], [True]]))
    torch.testing.assert_close(head(x, m)[0], logits0)  # the reparameterisation keeps predictions
    head.orient_([(x, m)])
    assert (head.output_slope([(x, m)]) >= 0).all()
    torch.testing.assert_close(head(x, m)[0], logits0)


def test_default_r_depends_on_the_task_and_bad_r_is_refused() -> None:
    assert create_head("chowder", 4, 2).r == DEFAULT_R_CLASSES == 0.5  # classification: half the bag
    assert create_head("chowder", 4, 1).r == DEFAULT_R_ONE_OUTPUT == 0.1  # survival / regression: share
    assert create_head("chowder", 4, 1, r=3).r == 3  # an explicit r wins
    assert create_head("chowder", 4, 2).dropout.p == 0.5 and create_head("chowder", 4, 1).dropout.p == 0.0
    assert create_head("chowder", 4, 1, dropout=0.2).dropout.p == 0.2
    head = create_head("chowder", 4, 1, r_points=6)
    assert head.weights[0].shape[2] == 12  # 2 x r_points MLP inputs
    with pytest.raises(ValueError, match="whole number of tiles or a fraction"):
        ChowderOptions(r=2.5)


def test_tile_hidden_scorer_flips_exactly_and_has_no_linear_start() -> None:
    """``tile_hidden``: a ReLU layer per member before the tile score; ``flip_`` stays an exact reparameterisation."""
    torch.manual_seed(0)
    head = create_head("chowder", 9, 2, tile_hidden=16, n_members=4)
    head.eval()
    x, mask = torch.randn(3, 40, 9), torch.ones(3, 40, dtype=torch.bool)
    mask[2, 25:] = False
    before, scores = head.member_outputs(x, mask)[0], head.tile_scores_all(x)
    flip = torch.tensor([[True], [False], [True], [False]])
    head.flip_(flip)
    after, flipped = head.member_outputs(x, mask)[0], head.tile_scores_all(x)
    assert torch.allclose(before, after, atol=1e-5)
    sign = torch.where(flip[:, 0], -1.0, 1.0)
    assert torch.allclose(flipped, scores * sign)
    assert head.tile_scorer_layer() is None  # tile_init auto keeps the random start; outliers is refused
    with pytest.raises(ValueError, match="no linear tile scorer"):
        head.init_tile_scorer(torch.zeros(9), 0.0)
