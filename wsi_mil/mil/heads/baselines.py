"""Baselines: mean pooling, max pooling (instance space) and attention MIL (Ilse et al., 2018).

Mean and max pooling score every tile with the same network (a linear layer, or an MLP with one
hidden ReLU layer) and pool the tile scores over the bag: the slide logit is their mean or their
maximum. (Mean pooling of tile logits equals a linear classifier on the mean tile embedding.)

Attention MIL (gated, as in Ilse et al.): ``h_i = ReLU(V x_i)``, attention ``a = softmax_i(w^T
(tanh(U h_i) * sigmoid(G h_i)))`` over the real tiles, slide logits ``W (sum_i a_i h_i) + b``.
Its tile scores are each tile's exact share of the slide logit, ``a_i (W h_i + b)``, which sum
to the slide logits; no tile is "selected".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsi_mil.mil.heads._registry import register_head
from wsi_mil.mil.heads.base import MILHead, score_tiles, tile_scorer
from wsi_mil.mil.heads.dropout import CheapDropout
from wsi_mil.mil.heads.options import AttentionOptions, PoolOptions
from wsi_mil.mil.heads.sparse_linear import SparseAwareLinear
from wsi_mil.mil.minmax import KSpec, extreme_mean


class _ScoredTilesHead(MILHead):
    """A head that scores each tile with :func:`~wsi_mil.mil.heads.base.tile_scorer`, then pools the scores."""

    def __init__(self, in_dim: int, n_classes: int, opts: PoolOptions | None = None) -> None:
        opts = opts or PoolOptions()
        super().__init__(in_dim, n_classes, opts)
        self.opts = opts
        self.scorer = tile_scorer(self.score_dim, self.n_outputs, self.opts.hidden, self.opts.dropout)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, N, K) values -> (B, K) their mean over the real tiles (0 for an empty bag)."""
    total = torch.where(mask.unsqueeze(-1), x, torch.zeros_like(x)).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)


@register_head("mean")
class MeanPool(_ScoredTilesHead):
    """Slide logit = mean of tile logits over the real tiles."""

    representation = "the mean hidden activation, (B, hidden); without hidden: the mean tile logit, (B, O)"

    def member_outputs(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Mean of the tile logits over the real tiles: slide `(B, 1, O)`, tiles `(B, N, O)` from features `(B, N, D)`, mask `(B, N)`."""
        tiles = score_tiles(self.scorer, features, mask)
        return _masked_mean(tiles, mask).unsqueeze(1), tiles

    def representation_dim(self) -> int:
        return self.n_outputs if self.opts.hidden is None else self.opts.hidden

    def member_outputs_with_representation(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`member_outputs`, and the mean hidden activation (the last layer is linear, so the
        slide logit is that layer of it); without a hidden layer, the slide logit itself."""
        if not isinstance(self.scorer, nn.Sequential):
            tiles = score_tiles(self.scorer, features, mask)
            slide = _masked_mean(tiles, mask)
            return slide.unsqueeze(1), tiles, slide
        h = score_tiles(self.scorer[:-1], features, mask)  # (B, N, hidden): Linear, ReLU, Dropout
        tiles = self.scorer[-1](h)
        return _masked_mean(tiles, mask).unsqueeze(1), tiles, _masked_mean(h, mask)


@register_head("max")
class MaxPool(_ScoredTilesHead):
    """Slide logit = highest tile logit (per output); the arg-max tile is selected."""

    def member_outputs(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Highest tile logit: slide `(B, 1, O)`, tiles `(B, N, O)` from features `(B, N, D)`, mask `(B, N)`."""
        tiles = score_tiles(self.scorer, features, mask)
        return extreme_mean(tiles, mask, 1, largest=True).unsqueeze(1), tiles

    def selection_k(self) -> tuple[KSpec | None, KSpec | None]:
        return 1, None


@register_head("attention")
class AttentionMIL(MILHead):
    """Gated attention MIL; tile scores are each tile's share of the slide logit."""

    def __init__(self, in_dim: int, n_classes: int, opts: AttentionOptions | None = None) -> None:
        opts = opts or AttentionOptions()
        super().__init__(in_dim, n_classes, opts)
        self.opts = opts
        o = self.opts
        self.embed = nn.Sequential(SparseAwareLinear(self.score_dim, o.hidden), nn.ReLU(), CheapDropout(o.dropout))
        self.att_v = nn.Linear(o.hidden, o.attention_dim)
        self.att_u = nn.Linear(o.hidden, o.attention_dim) if o.gated else None
        self.att_w = nn.Linear(o.attention_dim, 1)
        self.classifier = nn.Linear(o.hidden, self.n_outputs)

    def attention(self, h: Tensor, mask: Tensor) -> Tensor:
        """Attention weights (B, N) over the real tiles (0 on padding) from embeddings (B, N, L)."""
        a = torch.tanh(self.att_v(h))
        if self.att_u is not None:
            a = a * torch.sigmoid(self.att_u(h))
        logits = self.att_w(a).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        return torch.where(mask, weights, torch.zeros_like(weights))  # empty bag: 0, not NaN

    representation = "the attention-pooled embedding sum_i a_i h_i, (B, hidden)"

    def member_outputs(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Attention pooling: slide `(B, 1, O)`, tiles `(B, N, O)` from features `(B, N, D)`, mask `(B, N)`."""
        slide, tiles, _ = self.member_outputs_with_representation(features, mask)
        return slide, tiles

    def representation_dim(self) -> int:
        return self.opts.hidden

    def member_outputs_with_representation(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`member_outputs`, and the pooled embedding (B, hidden) the classifier reads."""
        h = self.embed(features)
        h = torch.where(mask.unsqueeze(-1), h, torch.zeros_like(h))
        a = self.attention(h, mask)
        pooled = torch.einsum("bn,bnl->bl", a, h)
        slide = self.classifier(pooled)
        tiles = a.unsqueeze(-1) * self.classifier(h)
        return slide.unsqueeze(1), tiles, pooled
