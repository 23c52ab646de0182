"""The final model of a tuned run (``tune_final: ensemble``): the outer-fold models, averaged.

Each member is a head fitted on one outer fold's training slides with the settings that fold's
search chose (members may differ in their options), with its own standardisation. Slide
probabilities are the mean of the members' probabilities (``slide_logits`` = their log, as a
CHOWDER ensemble; one-output tasks: the mean of the members' outputs); tile scores are the mean
of the members' tile scores; a tile is selected (+1 / -1) when any member's own rule (its ``k``)
selects it on those mean scores (+1 wins).
Not a registered head: a model run records it in ``config.json`` (``final_model.kind``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsi_mil.mil.heads.base import MILHead, check_inputs


class FoldEnsemble(MILHead):
    """Mean of ``members`` (same input dimension and classes). Shapes as in :class:`MILHead`."""

    def __init__(self, members: Sequence[MILHead]) -> None:
        if not members:
            raise ValueError("a fold ensemble needs at least one member")
        super().__init__(members[0].in_dim, members[0].n_classes)
        self.members = nn.ModuleList(members)

    def standardize_(self, features: Tensor) -> Tensor:
        """No-op: every member standardises the raw features with its own statistics."""
        return features

    def forward(self, features: Tensor, mask: Tensor, standardized: bool = False,
                prepared: bool = False) -> tuple[Tensor, Tensor]:
        """Mean member probabilities (as logits `(B, C)`) and mean tile scores `(B, N, C)` of raw features
        `(B, N, D)` (each member prepares them its own way: ``prepared`` features cannot be shared)."""
        if prepared:
            raise ValueError("a fold ensemble reads raw features: its members prepare them each their own way")
        check_inputs(features, mask, self.in_dim)
        first, *rest = self.members
        logits, tiles = first(features, mask)
        if self.n_classes == 1:  # one-output task: the mean of the members' risk scores / values
            for m in rest:
                lg, tl = m(features, mask)
                logits, tiles = logits + lg, tiles + tl
            return logits / len(self.members), tiles / len(self.members)
        probs = torch.softmax(logits.float(), dim=-1)
        for m in rest:
            lg, tl = m(features, mask)
            probs = probs + torch.softmax(lg.float(), dim=-1)
            tiles = tiles + tl
        k = len(self.members)
        return torch.log((probs / k).clamp(min=torch.finfo(probs.dtype).tiny)), tiles / k

    def select(self, tile_scores: Tensor, mask: Tensor) -> Tensor:
        """int8 marks `(B, N, C)`: +1 where any member selects a top tile, else -1 for a bottom one."""
        top = torch.zeros(tile_scores.shape, dtype=torch.bool, device=tile_scores.device)
        bottom = torch.zeros_like(top)
        for m in self.members:
            marks = m.select(tile_scores, mask)  # type: ignore[operator]
            top |= marks == 1
            bottom |= marks == -1
        one = torch.ones_like(top, dtype=torch.int8)
        return torch.where(top, one, torch.where(bottom, -one, torch.zeros_like(one)))
