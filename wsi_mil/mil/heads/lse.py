"""LSE pooling (Durand et al.'s generalised pooling of the WELDON/WILDCAT line): log-sum-exp of
linear tile scores with a temperature ``r``.

Tile scores ``s_i = W x_i + b``; slide score per output ``(1/r) log(mean_i exp(r s_i))`` over the
bag's real tiles: the mean of the scores as ``r -> 0``, their maximum as ``r -> inf`` (always
between the two). Computed with a max shift (no overflow); padded tiles never enter it and an
empty bag scores 0. With ``learn_r`` the temperature is a parameter ``r = softplus(rho)`` (one per
output, starting at the option's ``r``). Each tile's weight in the pooling is
``softmax_i(r s_i)``, highest for the highest score: the arg-max tile is marked as selected.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_mil.mil.heads._registry import register_head
from wsi_mil.mil.heads.base import MILHead, score_tiles
from wsi_mil.mil.heads.options import LSEOptions
from wsi_mil.mil.minmax import KSpec


def lse_pool(scores: Tensor, mask: Tensor, r: Tensor | float) -> Tensor:
    """``(1/r) log(mean_i exp(r s_i))`` over the real tiles.

    Arguments:
        scores: Tile scores of shape `(B, N, O)`.
        mask: Bool mask of shape `(B, N)`, True on real tiles.
        r: Temperature, a positive float or a tensor broadcastable to `(O,)`.

    Returns:
        pooled: Slide scores of shape `(B, O)`; 0 for a bag without tiles.
    """
    r_t = torch.as_tensor(r, dtype=scores.dtype, device=scores.device)
    n = mask.sum(dim=1, keepdim=True)  # (B, 1)
    empty = (n == 0).unsqueeze(-1)  # (B, 1, 1)
    fill = torch.where(empty, 0.0, float("-inf")).to(scores.dtype)  # finite everywhere in an empty bag
    scaled = torch.where(mask.unsqueeze(-1), scores * r_t, fill)
    pooled = (torch.logsumexp(scaled, dim=1) - torch.log(n.clamp(min=1).to(scores.dtype))) / r_t
    return torch.where(empty.squeeze(-1), torch.zeros_like(pooled), pooled)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for large y


@register_head("lse")
class LSEPool(MILHead):
    """Linear tile scorer + LSE pooling. Output shapes as in :class:`MILHead`."""

    def __init__(self, in_dim: int, n_classes: int, opts: LSEOptions | None = None) -> None:
        opts = opts or LSEOptions()
        super().__init__(in_dim, n_classes, opts)
        self.opts = opts
        self.scorer = nn.Linear(self.score_dim, self.n_outputs)
        rho = torch.full((self.n_outputs,), _inverse_softplus(self.opts.r))
        if self.opts.learn_r:
            self.rho = nn.Parameter(rho)
        else:
            self.register_buffer("rho", rho)

    def temperature(self) -> Tensor:
        """(O,) the temperature r > 0."""
        return F.softplus(self.rho) if self.opts.learn_r else torch.full_like(self.rho, self.opts.r)

    representation = "the pooled LSE score, (B, O)"

    def member_outputs(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """LSE of linear tile scores: slide `(B, 1, O)`, tiles `(B, N, O)` from features `(B, N, D)`, mask `(B, N)`."""
        slide, tiles, _ = self.member_outputs_with_representation(features, mask)
        return slide, tiles

    def representation_dim(self) -> int:
        return self.n_outputs

    def member_outputs_with_representation(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`member_outputs`, and the pooled score (B, O) itself as the representation."""
        tiles = score_tiles(self.scorer, features, mask)
        pooled = lse_pool(tiles, mask, self.temperature().to(tiles.dtype))
        return pooled.unsqueeze(1), tiles, pooled

    def selection_k(self) -> tuple[KSpec | None, KSpec | None]:
        return 1, None

    def regularization(self) -> Tensor:
        return self.opts.l2 * self.scorer.weight.pow(2).sum()
