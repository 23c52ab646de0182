"""A hidden tile scorer of E members computed in cache-sized chunks, its hidden layer recomputed in backward.

CHOWDER's hidden tile scorer (``tile_hidden``) maps each tile's features ``x`` (D,) to one score per member
and output: ``s[e, o] = sum_h relu(W1 x + b1)[e, h] * W2[e, h, o] + b2[e, o]``. On narrow features (the classic
MIL sets: D = 9-38) the hidden activations (T, E * H) are ~30-70x larger than the features, and autograd's
plain path spends its time streaming them through memory: the ReLU, a permuted copy for the per-member
product, ReLU's backward, each a full pass over a (T, E * H) array that does not fit in cache.

:func:`hidden_tile_scores` computes the same function in chunks of tiles whose hidden block fits in cache and
keeps no hidden activations for backward: backward recomputes each chunk's ``W1 x + b1`` (a product of depth
D, cheap when D is small) and accumulates the four weight gradients chunk by chunk. Same values as the plain path up
to float rounding (a test compares both, value and every gradient). It is used where the recomputation is
cheap (:func:`use_fused`); features that need a gradient take the plain autograd path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: hidden values (tiles x E * H) per chunk: 2^18 float32 = 1 MiB, about a core's L2 cache
CHUNK_VALUES = 1 << 18
#: the fused path is used when the features are at most this share of the hidden width (D <= E * H / 8):
#: recomputing ``W1 x`` in backward then costs less than the memory passes it saves
MAX_DIM_SHARE = 1 / 8


def use_fused(in_dim: int, hidden_width: int, features: Tensor) -> bool:
    """Whether :func:`hidden_tile_scores` pays on ``features`` of ``in_dim`` into ``hidden_width`` (E * H) units:
    on CPU (the chunks are sized for its cache; on a GPU they would be many small kernel launches), narrow
    features, and no gradient asked for the features."""
    return features.device.type == "cpu" and in_dim <= MAX_DIM_SHARE * hidden_width and not features.requires_grad


def _chunk_rows(hidden_width: int) -> int:
    return max(16, CHUNK_VALUES // hidden_width)


def _member_scores(hidden: Tensor, w2: Tensor) -> Tensor:
    """hidden (c, E, H), w2 (E, H, O) -> (c, E, O)."""
    if w2.shape[-1] == 1:  # one output: a product and a sum over H, no permuted copy
        return (hidden * w2[:, :, 0]).sum(dim=-1, keepdim=True)
    return torch.einsum("ceh,eho->ceo", hidden, w2)


class _HiddenTileScores(torch.autograd.Function):
    """The bias of the first layer rides in its product: the tiles get a column of ones and W1^T a row b1
    (no broadcast copy of b1 per chunk; its gradient comes out of the same product as W1's)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        e, h, o = w2.shape
        rows = _chunk_rows(e * h)
        x_one = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # (T, D + 1): a column of ones
        w1b = torch.cat([w1.t(), b1[None]], dim=0)  # (D + 1, E * H)
        out = x.new_empty(x.shape[0], e, o)
        for start in range(0, x.shape[0], rows):
            hidden = torch.mm(x_one[start:start + rows], w1b).clamp_min_(0).view(-1, e, h)
            out[start:start + rows] = _member_scores(hidden, w2)
        out += b2
        ctx.save_for_backward(x_one, w1b, w2)
        return out.view(x.shape[0], e * o)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, Tensor, Tensor, Tensor]:
        x_one, w1b, w2 = ctx.saved_tensors
        e, h, o = w2.shape
        rows = _chunk_rows(e * h)
        grad = grad.reshape(x_one.shape[0], e, o)
        g_w1b, g_w2 = torch.zeros_like(w1b), torch.zeros_like(w2)
        for start in range(0, x_one.shape[0], rows):
            xc, gc = x_one[start:start + rows], grad[start:start + rows]  # (c, D + 1), (c, E, O)
            pre = torch.mm(xc, w1b)
            active = pre > 0
            hidden = pre.clamp_min_(0).view(-1, e, h)
            if o == 1:
                g_w2[:, :, 0] += (hidden * gc).sum(dim=0)
                g_hidden = gc * w2[:, :, 0]  # (c, E, H)
            else:
                g_w2 += torch.einsum("ceh,ceo->eho", hidden, gc)
                g_hidden = torch.einsum("ceo,eho->ceh", gc, w2)
            g_w1b.addmm_(xc.t(), g_hidden.reshape(-1, e * h).mul_(active))
        return None, g_w1b[:-1].t(), g_w1b[-1], g_w2, grad.sum(dim=0)


def hidden_tile_scores(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Member scores (..., E * O) of tiles ``x`` (..., D): ``relu(x W1^T + b1)`` per member (W1 (E * H, D),
    b1 (E * H,)) then its H units times W2 (E, H, O) plus b2 (E, O). ``x`` gets no gradient (see :func:`use_fused`)."""
    out: Tensor = _HiddenTileScores.apply(x.reshape(-1, x.shape[-1]), w1, b1, w2, b2)
    return out.reshape(*x.shape[:-1], out.shape[-1])
