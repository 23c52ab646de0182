"""CheapDropout against nn.Dropout's contract: keep share, scaling, gradient, eval identity, seeding."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

from wsi_mil.mil.heads.dropout import CheapDropout, cheap_dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_keep_share_is_one_minus_p_within_sampling_error(p: float) -> None:
    torch.manual_seed(0)
    n = 1_000_001  # odd: the last 64-bit draw is used in part
    kept = int(keep_mask(torch.Size([n]), round(p * 65536)).sum())
    # two-sided binomial test at 0.1 %: a biased bit (e.g. the sign of int64 draws) would fail by far
    assert stats.binomtest(kept, n, 1 - p).pvalue > 1e-3


def test_mask_bits_are_independent_of_position_in_the_draw() -> None:
    """Each of a draw's four 16-bit integers keeps at the same rate (no lane is biased)."""
    torch.manual_seed(1)
    keep = keep_mask(torch.Size([400_000]), 32768).view(-1, 4).float().mean(dim=0)
    assert torch.all((keep - 0.5).abs() < 0.005)


def test_values_are_zero_or_scaled_and_unbiased() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 500) + 0.5
    y = cheap_dropout(x, 0.5)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * 2.0)
    assert abs(float(y.mean() / x.mean()) - 1.0) < 0.01


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    y = cheap_dropout(x, 0.25)
    y.sum().backward()
    assert x.grad is not None
    expected = (y.detach() != 0).float() / 0.75
    torch.testing.assert_close(x.grad, expected)


def test_eval_mode_and_the_limits() -> None:
    x = torch.randn(10, 7)
    module = CheapDropout(0.5).eval()
    assert module(x) is x
    assert cheap_dropout(x, 0.0) is x
    assert torch.equal(cheap_dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="dropout probability"):
        CheapDropout(1.5)


def test_seeded_like_nn_dropout_and_state_dict_compatible() -> None:
    x = torch.randn(3, 40, 50)
    torch.manual_seed(7)
    a = cheap_dropout(x, 0.3)
    torch.manual_seed(7)
    b = cheap_dropout(x, 0.3)
    assert torch.equal(a, b)
    assert CheapDropout(0.3).state_dict().keys() == nn.Dropout(0.3).state_dict().keys()


def test_matches_nn_dropout_in_distribution() -> None:
    """Same kept share (within sampling error) and the same kept values as torch's dropout."""
    x = torch.ones(2000, 100)
    torch.manual_seed(0)
    ours, theirs = cheap_dropout(x, 0.4), nn.functional.dropout(x, 0.4, True)
    assert abs(float((ours != 0).float().mean()) - float((theirs != 0).float().mean())) < 0.01
    # p acts in steps of 1 / 65,536: 0.4 is 26,214 / 65,536, a 1e-5 relative difference in the scale
    torch.testing.assert_close(ours[ours != 0].unique(), theirs[theirs != 0].unique(), rtol=2e-5, atol=0)
