"""CHOWDER (Courtiol et al., 2018): an ensemble of min-max MLP models over 1-d tile embeddings.

Each member ``e`` scores tiles with a linear layer (``tile_hidden``: a ReLU layer first) to one value per output (L2-regularised
weights), takes the R highest (descending) and R lowest (ascending) scores of the bag (the
min-max layer, :func:`~wsi_mil.mil.minmax.extreme_values`; with ``r`` a fraction of the bag, that
share's top and bottom lists read at ``r_points`` ranks, :func:`~wsi_mil.mil.minmax.extreme_quantiles`,
the default: half of the bag for classification, 10 % for survival and regression) and feeds these 2R numbers to an MLP
(200 then 100 sigmoid units with dropout, then one output). The E members are initialised
independently and have disjoint parameters; they are trained side by side (the loss is the mean
of the members' losses, so each member receives its own gradient) and their probabilities are
averaged. Tile scores are the mean of the members' tile scores.

Sign of the tile scores: the MLP can learn to *decrease* with the scores, which would make
lesion tiles the lowest. :meth:`Chowder.orient_` fixes this after training with an exact
reparameterisation: a member whose output falls with its scores gets ``s -> -s`` and its MLP's
first layer re-wired (``top(-s) = -bottom(s)``), which leaves its predictions unchanged and makes
high tile scores mean evidence for the class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from wsi_mil.mil.heads._registry import register_head
from wsi_mil.mil.heads.base import MILHead, score_real_tiles, score_tiles
from wsi_mil.mil.heads.dropout import CheapDropout
from wsi_mil.mil.heads.fused_scorer import hidden_tile_scores, use_fused
from wsi_mil.mil.heads.options import ChowderOptions
from wsi_mil.mil.heads.sparse_linear import SparseAwareLinear
from wsi_mil.mil.minmax import KSpec, extreme_quantiles, extreme_values, is_fraction

#: default ``r`` of a classification head and of a survival/regression head (shares of the bag; docs/mil-defaults.md)
DEFAULT_R_CLASSES: KSpec = 0.5
DEFAULT_R_ONE_OUTPUT: KSpec = 0.1
#: default MLP dropout of a classification head and of a survival/regression head (docs/mil-defaults.md)
DEFAULT_DROPOUT_CLASSES = 0.5
DEFAULT_DROPOUT_ONE_OUTPUT = 0.0


@register_head("chowder")
class Chowder(MILHead):
    """CHOWDER ensemble. Output shapes as in :class:`MILHead`; member logits (B, E, C)."""

    def __init__(self, in_dim: int, n_classes: int, opts: ChowderOptions | None = None) -> None:
        opts = opts or ChowderOptions()
        super().__init__(in_dim, n_classes, opts)
        self.opts = opts
        #: tiles per side of the min-max layer (count or fraction); ``r: null`` depends on the task
        self.r: KSpec = self.opts.r if self.opts.r is not None else (
            DEFAULT_R_ONE_OUTPUT if n_classes == 1 else DEFAULT_R_CLASSES)
        e, o, r = self.opts.n_members, self.n_outputs, self.n_points
        #: ReLU units before the tile score, or None (linear): :attr:`~wsi_mil.mil.heads.options.TileHiddenOptions.hidden_units`
        self.tile_hidden = opts.hidden_units
        h = self.tile_hidden
        if h is None:  # the paper's 1-d linear tile embedding
            self.embedding = nn.Linear(self.score_dim, e * o)  # column e * O + o: member e, output o
        else:  # a ReLU layer of h units per member before its tile score (members keep disjoint parameters)
            self.tile_hidden_layer = SparseAwareLinear(self.score_dim, e * h)
            bound = 1.0 / math.sqrt(h)
            self.tile_out_weight = nn.Parameter(torch.empty(e, h, o).uniform_(-bound, bound))
            self.tile_out_bias = nn.Parameter(torch.empty(e, o).uniform_(-bound, bound))
        sizes = [2 * r, *self.opts.hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(e, o, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(e, o, 1, fan_out).uniform_(-bound, bound)))
        self.dropout = CheapDropout(self.opts.dropout if self.opts.dropout is not None else (
            DEFAULT_DROPOUT_ONE_OUTPUT if n_classes == 1 else DEFAULT_DROPOUT_CLASSES))

    @property
    def n_points(self) -> int:
        """MLP inputs per side P: ``r`` for a count, ``r_points`` for a fraction of the bag."""
        return self.opts.r_points if is_fraction(self.r) else int(self.r)

    def _mlp(self, x: Tensor) -> Tensor:
        """x (E, O, B, 2R) -> (E, O, B, 1)."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.matmul(x, w) + b
            if i < last:
                x = self.dropout(torch.sigmoid(x))
        return x

    def _extremes(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Member tile scores (B, N, E, O) and MLP inputs (E, O, B, 2R)."""
        b, n, _ = features.shape
        e, o = self.opts.n_members, self.n_outputs
        scores = self.tile_scores_all(features, mask)  # (B, N, E*O)
        r = self.r
        if is_fraction(r):
            ext = extreme_quantiles(scores, mask, r, self.opts.r_points)  # (B, 2P, E*O)
        else:
            ext = extreme_values(scores, mask, int(r))  # (B, 2R, E*O)
        x = ext.reshape(b, 2 * self.n_points, e, o).permute(2, 3, 0, 1)
        return scores.reshape(b, n, e, o), x

    def tile_scores_all(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """Every member's tile scores (B, N, E * O) from standardised features (B, N, D); with the
        ``mask`` (B, N), a batch mostly of padding is scored on its real tiles only (:func:`score_tiles`)."""
        if self.tile_hidden is None:
            return self.embedding(features)
        if use_fused(features.shape[-1], self.tile_hidden_layer.out_features, features):
            return self._fused_scores(features, mask)
        if mask is None:
            return self._hidden_scores(features)
        return score_tiles(self._hidden_scores, features, mask)

    def _fused_scores(self, features: Tensor, mask: Tensor | None) -> Tensor:
        """The hidden tile scorer on narrow features (:mod:`~wsi_mil.mil.heads.fused_scorer`): (B, N, D) ->
        (B, N, E * O), on the real tiles only where a ``mask`` (B, N) is given (padding gets 0)."""
        layer = self.tile_hidden_layer

        def scores(x: Tensor) -> Tensor:
            return hidden_tile_scores(x, layer.weight, layer.bias, self.tile_out_weight, self.tile_out_bias)

        return scores(features) if mask is None else score_real_tiles(scores, features, mask)

    def _hidden_scores(self, features: Tensor) -> Tensor:
        """Hidden tile scorer: features (..., D) -> every member's scores (..., E * O)."""
        lead = features.shape[:-1]
        e, o = self.opts.n_members, self.n_outputs
        hidden = torch.relu(self.tile_hidden_layer(features)).reshape(*lead, e, -1)
        scores = torch.einsum("...eh,eho->...eo", hidden, self.tile_out_weight) + self.tile_out_bias
        return scores.reshape(*lead, e * o)

    def _score_weight(self) -> Tensor:
        """The weights of the last tile-scoring layer (what ``l2`` penalises)."""
        return self.embedding.weight if self.tile_hidden is None else self.tile_out_weight

    representation = "the members' min-max vectors (R highest and R lowest tile scores), (B, E * O * 2R)"

    def member_outputs(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Member MLP outputs: slide `(B, E, O)`; tiles `(B, N, O)` = members' mean score; mask `(B, N)`."""
        slide, tiles, _ = self.member_outputs_with_representation(features, mask)
        return slide, tiles

    def representation_dim(self) -> int:
        return self.opts.n_members * self.n_outputs * 2 * self.n_points

    def member_outputs_with_representation(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`member_outputs`, and the min-max vectors (B, E * O * 2R) the MLPs read."""
        scores, x = self._extremes(features, mask)
        slide = self._mlp(x).squeeze(-1).permute(2, 0, 1)  # (B, E, O)
        rep = x.permute(2, 0, 1, 3).reshape(x.shape[2], -1)  # (B, E * O * 2R)
        return slide, scores.mean(dim=2), rep

    def tile_scorer_layer(self) -> nn.Linear | None:
        return self.embedding if self.tile_hidden is None else None

    def selection_k(self) -> tuple[KSpec | None, KSpec | None]:
        return self.r, self.r

    def regularization(self) -> Tensor:
        return self.opts.l2 * self._score_weight().pow(2).sum() / self.opts.n_members

    def output_slope(self, batches: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
        """(E, O) summed derivative of each member's output w.r.t. its 2R inputs, over the bags."""
        was_training = self.training
        self.eval()
        total = torch.zeros(self.opts.n_members, self.n_outputs, device=self._score_weight().device)
        with torch.enable_grad():
            for features, mask in batches:
                with torch.no_grad():
                    _, x = self._extremes(self.prepare(features, mask), mask)
                x = x.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self._mlp(x).sum(), x)
                total += grad.sum(dim=(2, 3))
        self.train(was_training)
        return total

    @torch.no_grad()
    def flip_(self, flip: Tensor) -> None:
        """Reparameterise members/outputs where ``flip`` (E, O) bool: s -> -s, same predictions."""
        e, o, r = self.opts.n_members, self.n_outputs, self.n_points
        sign = torch.where(flip, -1.0, 1.0).to(self._score_weight().dtype)  # (E, O)
        if self.tile_hidden is None:
            self.embedding.weight.mul_(sign.reshape(e * o, 1))
            self.embedding.bias.mul_(sign.reshape(e * o))
        else:
            self.tile_out_weight.mul_(sign.unsqueeze(1))
            self.tile_out_bias.mul_(sign)
        w1 = self.weights[0]  # (E, O, 2R, H)
        swapped = -torch.cat([w1[:, :, r:], w1[:, :, :r]], dim=2)
        w1.copy_(torch.where(flip.view(e, o, 1, 1), swapped, w1))

    @torch.no_grad()
    def orient_(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """Make high tile scores mean evidence for the class (see the module docstring)."""
        self.flip_(self.output_slope(batches) < 0)
