"""SparseAwareLinear against nn.Linear: values, weight and bias gradients, the rule, the state dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsi_mil.mil.heads import sparse_linear
from wsi_mil.mil.heads.sparse_linear import SparseAwareLinear, sparse_rows_linear, use_sparse_rows


def sparse_features(rows: int, dim: int, per_row: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(rows, dim) with ``per_row`` random non-zero values per row (some rows left all zero)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(rows, dim, dtype=dtype)
    cols = torch.randint(0, dim, (rows, per_row), generator=g)
    x.scatter_(1, cols, torch.rand(rows, per_row, generator=g, dtype=dtype) + 0.1)
    x[::7] = 0.0  # tiles with no word at all: their output is the bias
    return x


@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_match_nn_linear(bias: bool) -> None:
    x = sparse_features(200, 2048, 12).reshape(4, 50, 2048)  # (B, N, D): any leading shape
    torch.manual_seed(0)
    dense = nn.Linear(2048, 96, bias=bias)
    ours = SparseAwareLinear(2048, 96, bias=bias)
    ours.load_state_dict(dense.state_dict())
    assert use_sparse_rows(x)
    g = torch.randn(4, 50, 96)
    (dense(x) * g).sum().backward()
    (ours(x) * g).sum().backward()
    torch.testing.assert_close(ours(x), dense(x), rtol=1e-5, atol=1e-6)
    assert ours.weight.grad is not None and dense.weight.grad is not None
    torch.testing.assert_close(ours.weight.grad, dense.weight.grad, rtol=1e-5, atol=1e-6)
    if bias:
        torch.testing.assert_close(ours.bias.grad, dense.bias.grad)


def test_gradcheck_in_float64() -> None:
    x = sparse_features(70, 1100, 5, dtype=torch.float64)
    w = torch.randn(8, 1100, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, b: sparse_rows_linear(x, w, b), (w, b))


def test_rule_takes_the_dense_path_where_sparse_would_not_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    wide_sparse = sparse_features(100, 2048, 10)
    assert use_sparse_rows(wide_sparse)
    assert not use_sparse_rows(torch.rand(100, 2048))  # dense features (a CNN's)
    assert not use_sparse_rows(sparse_features(100, 512, 2))  # narrow: a dense product is cheap
    assert not use_sparse_rows(sparse_features(10, 2048, 10))  # too few tiles for the weight's transposes
    assert not use_sparse_rows(wide_sparse.clone().requires_grad_())  # a gradient for the features
    # the dense path really is nn.Linear's: a layer whose sparse path would fail is never called on dense input
    monkeypatch.setattr(sparse_linear, "sparse_rows_linear", lambda *a: (_ for _ in ()).throw(AssertionError))
    layer = SparseAwareLinear(2048, 4)
    x = torch.rand(100, 2048)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_state_dict_is_nn_linear_s() -> None:
    assert SparseAwareLinear(3000, 5).state_dict().keys() == nn.Linear(3000, 5).state_dict().keys()
    nn.Linear(3000, 5).load_state_dict(SparseAwareLinear(3000, 5).state_dict())
