"""WELDON (Durand et al., CVPR 2016) with WILDCAT's negative-evidence weight (Durand et al. 2017).

Tile scores ``s = W x + b`` (a 1x1 convolution over the tiles: one linear layer; with ``tile_hidden``, a
ReLU layer first, the default below 200 tiles per bag), slide score per class = mean of the ``k_top``
highest + ``negative_weight`` x mean of the ``k_bottom`` lowest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from wsi_mil.mil.heads._registry import register_head
from wsi_mil.mil.heads.base import MILHead, score_tiles, tile_scorer
from wsi_mil.mil.heads.options import WeldonOptions
from wsi_mil.mil.minmax import KSpec, extreme_mean, minmax_pool


@register_head("weldon")
class Weldon(MILHead):
    """WELDON: tile scorer (linear, or ``tile_hidden`` ReLU units then linear) + min-max pooling. Output shapes
    as in :class:`MILHead`."""

    def __init__(self, in_dim: int, n_classes: int, opts: WeldonOptions | None = None) -> None:
        opts = opts or WeldonOptions()
        super().__init__(in_dim, n_classes, opts)
        self.opts = opts
        #: ReLU units before the tile score, or None (linear): :attr:`~wsi_mil.mil.heads.options.TileHiddenOptions.hidden_units`
        self.tile_hidden = opts.hidden_units
        self.scorer = tile_scorer(self.score_dim, self.n_outputs, self.tile_hidden)

    representation = "the mean of the k_top highest and of the k_bottom lowest tile scores, (B, 2 O) (B, O without k_bottom)"

    def member_outputs(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k + bottom-k mean of linear tile scores: slide `(B, 1, O)`, tiles `(B, N, O)` from features `(B, N, D)`, mask `(B, N)`."""
        tiles = score_tiles(self.scorer, features, mask)  # (B, N, O)
        slide = minmax_pool(tiles, mask, self.opts.top_k, self._k_bottom(), self.opts.negative_weight)
        return slide.unsqueeze(1), tiles

    def _k_bottom(self) -> KSpec | None:
        """k_bottom, or None when the bottom tiles do not count (no k_bottom, or negative_weight 0)."""
        return self.opts.bottom_k if self.opts.negative_weight > 0 else None

    def representation_dim(self) -> int:
        return self.n_outputs * (1 if self._k_bottom() is None else 2)

    def member_outputs_with_representation(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`member_outputs`, and the top-k and bottom-k means (B, 2 O) the slide score adds up."""
        tiles = score_tiles(self.scorer, features, mask)
        top = extreme_mean(tiles, mask, self.opts.top_k, largest=True)  # (B, O)
        k_bottom = self._k_bottom()
        if k_bottom is None:
            return top.unsqueeze(1), tiles, top
        bottom = extreme_mean(tiles, mask, k_bottom, largest=False)
        slide = top + self.opts.negative_weight * bottom
        return slide.unsqueeze(1), tiles, torch.cat([top, bottom], dim=-1)

    @torch.no_grad()
    def settle_from_start(self, bags: Sequence[Tensor], labels: npt.NDArray[np.int64]) -> dict[str, Any]:
        """``k_top`` / ``k_bottom`` still ``auto`` (slides: :meth:`WeldonOptions.for_bags`) chosen from the started tile
        scorer by :func:`wsi_mil.mil.kchoice.choose_k` over the training ``bags`` (N_i, score_dim) and 0/1 ``labels``."""
        from wsi_mil.mil.kchoice import choose_k

        top_auto, bottom_auto = self.opts.k_top == "auto", self.opts.k_bottom == "auto"
        if not (top_auto or bottom_auto) or self.n_outputs != 1:
            return {}
        uses_bottom = self.opts.negative_weight > 0 and self.opts.k_bottom is not None
        scores = [self.scorer(bags[i])[:, 0] for i in range(len(bags))]
        k_top, k_bottom, aucs = choose_k(
            scores, labels, None if top_auto else self.opts.top_k, self.opts.bottom_k if uses_bottom else None,
            self.opts.negative_weight, bottom_auto and uses_bottom)
        if bottom_auto and not uses_bottom:
            k_bottom = k_top  # negative_weight 0: k_bottom is not read; it follows k_top
        update = {key: value for key, value in (("k_top", k_top), ("k_bottom", k_bottom))
                  if getattr(self.opts, key) == "auto"}
        fields_set = set(self.opts.model_fields_set)
        self.opts = self.opts.model_copy(update=update)
        self.opts.__pydantic_fields_set__ = fields_set
        return {**update, "training_auc_per_k": aucs}

    def selection_k(self) -> tuple[KSpec | None, KSpec | None]:
        return self.opts.top_k, self._k_bottom()
