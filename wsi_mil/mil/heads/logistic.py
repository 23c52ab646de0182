"""Mean-pooled logistic regression, the classic MIL baseline, as a head of the product.

The slide logit is a linear layer on the bag's mean feature, ``z = W mean_i(x_i) + b``, trained
by the same loop as every head with an L2 penalty ``l2 * ||W||^2`` (the bias is not
penalised). With the loop's balanced class weights this is scikit-learn's
``LogisticRegression(class_weight="balanced")`` with ``C = 1 / (2 * n_slides * l2)``, fitted by
AdamW instead of L-BFGS. Tile scores are each tile's linear score ``W x_i + b``, whose mean over
the bag is the slide logit; no tile is selected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsi_mil.mil.heads._registry import register_head
from wsi_mil.mil.heads.base import MILHead
from wsi_mil.mil.heads.options import LogisticOptions


@register_head("logistic")
class MeanLogistic(MILHead):
    """Logistic regression on the mean tile feature. Output shapes as in :class:`MILHead`."""

    def __init__(self, in_dim: int, n_classes: int, opts: LogisticOptions | None = None) -> None:
        opts = opts or LogisticOptions()
        super().__init__(in_dim, n_classes, opts)
        self.opts = opts
        self.linear = nn.Linear(self.score_dim, self.n_outputs)

    representation = "the slide logit, (B, O) (the mean feature before it has no trainable layer)"

    def member_outputs(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Linear layer on the mean feature: slide `(B, 1, O)`, tiles `(B, N, O)` from features `(B, N, D)`, mask `(B, N)`."""
        slide, tiles, _ = self.member_outputs_with_representation(features, mask)
        return slide, tiles

    def representation_dim(self) -> int:
        return self.n_outputs

    def member_outputs_with_representation(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`member_outputs`, and the slide logit (B, O) as the representation."""
        m = mask.unsqueeze(-1)
        total = torch.where(m, features, torch.zeros_like(features)).sum(dim=1)  # (B, D)
        mean = total / mask.sum(dim=1, keepdim=True).clamp(min=1).to(features.dtype)
        logit = self.linear(mean)
        return logit.unsqueeze(1), self.linear(features), logit

    def regularization(self) -> Tensor:
        return self.opts.l2 * self.linear.weight.pow(2).sum()
