"""A linear layer that reads very sparse, wide tile features as a sum of weight columns.

Bags of instances such as web_recommendation_1's (5,863-d word counts, 0.34 % of the values non-zero, which
max-abs standardisation keeps zero) spend a hidden tile layer's time in a dense GEMM over zeros: a training step
of 480 tiles into 640 units costs ~118 ms on one core (AMD EPYC), the product and the weight gradient. Read as
sparse rows, the layer's output is, per tile, the sum of the weight columns of its non-zero features scaled by
their values: ``torch.nn.functional.embedding_bag`` (mode ``sum`` with per-sample weights) over a transposed copy
of the weight, whose own backward scatters the weight gradient; ~22 ms for the same step, the two transposes
of the (H, D) weight included. Same values and gradients as ``nn.Linear`` up to float rounding (a test
compares both). It is used where it pays (:func:`use_sparse_rows`), else the layer is ``nn.Linear`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the sparse path is used from this feature width on (narrower layers are cheap as dense products)
MIN_DIM = 1024
#: ... on at least this many tiles (the weight's two transposes must be paid for by the rows)
MIN_ROWS = 64
#: ... when at most this share of the values is non-zero (a gathered column costs ~50x a dense multiply-add)
MAX_DENSITY = 1 / 64


def use_sparse_rows(x: Tensor) -> bool:
    """Whether ``x`` (..., D) is wide and sparse enough for :func:`sparse_rows_linear` to pay: on CPU, with
    no gradient asked for ``x``; counts its non-zero values (one pass) only when its shape qualifies."""
    d = x.shape[-1]
    if x.device.type != "cpu" or x.requires_grad or d < MIN_DIM or x.numel() < MIN_ROWS * d:
        return False
    return int(torch.count_nonzero(x)) <= MAX_DENSITY * x.numel()


def sparse_rows_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` for ``x`` (..., D), ``weight`` (H, D), ``bias`` (H,) or None -> (..., H),
    computed over the non-zero values of ``x`` only; differentiable in ``weight`` and ``bias``."""
    lead, d = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, d)
    rows, cols = flat.nonzero(as_tuple=True)  # row-major: rows ascending
    values = flat[rows, cols].to(weight.dtype)
    offsets = torch.searchsorted(rows, torch.arange(flat.shape[0], device=x.device))  # each row's first value
    out = F.embedding_bag(cols, weight.t().contiguous(), offsets, mode="sum", per_sample_weights=values)
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, weight.shape[0])


class SparseAwareLinear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and values) that takes :func:`sparse_rows_linear` on inputs
    :func:`use_sparse_rows` accepts: the first layer of a hidden tile scorer on wide bag-of-words features."""

    def forward(self, x: Tensor) -> Tensor:
        if use_sparse_rows(x):
            return sparse_rows_linear(x, self.weight, self.bias)
        return super().forward(x)
