"""The contract every MIL head follows (``forward(features, mask)``), and binary handling.

Shapes: ``features`` (B, N, D) float, ``mask`` (B, N) bool (True = real tile, False = padding).
``forward`` returns ``slide_logits`` (B, C) and ``tile_scores`` (B, N, C); padded positions
never change a result and get tile score 0.

Binary problems (C = 2) are computed with one output, as in the WELDON and CHOWDER papers: the
head scores class 1 with ``z`` (slide) and ``s`` (tiles), and the public outputs are
``slide_logits = [0, z]`` (so softmax gives ``sigmoid(z)``) and ``tile_scores = [-s, s]``.
For binary problems, read class 1 (column 1) for localisation. Multi-class heads have C outputs.

One-output tasks (survival, regression): ``n_classes = 1`` builds a head with one output and no
expansion: ``slide_logits`` (B, 1) is the slide's risk score (survival) or value (regression),
``tile_scores`` (B, N, 1) the tiles' scores of that output. Such a head holds buffers
``output_shift`` and ``output_scale`` (1,) (identity by default; regression sets them from the
training targets' mean and std, so the head trains on standardised targets and predicts in the
labels' unit): ``slide = raw * scale + shift``, ``tiles = raw_tiles * scale``. An ensemble's
one-output prediction is the mean of its members' outputs.

Feature standardisation: every head holds buffers ``feature_shift`` and ``feature_scale`` (D,)
and scores ``x * scale + shift`` (identity by default). Training sets them from the training
tiles (:meth:`MILHead.set_standardization`), so they travel with the weights. With
``head_options.bag_centring: mean`` or ``median`` every bag is then centred on its own mean or
median tile (per feature, over its real tiles: :mod:`wsi_mil.mil.centring`) before the tiles are
scored, at training and at inference alike (:meth:`MILHead.prepare`); the statistics are then
those of centred tiles. ``bag_centring: zscore`` also divides each feature by its standard
deviation within the bag.

Feature components: with ``head_options.feature_components: K`` the head also holds buffers
``feature_projection`` (D, K) and ``projection_shift`` (K,), fitted on the prepared training tiles
(:mod:`wsi_mil.mil.components`): the tiles are scored as ``x @ projection + shift``, their top K
principal components, each of unit variance. The head's layers then read ``score_dim`` = K
inputs (else D).

Ensembles (CHOWDER) return E member logits for training; ``forward`` averages the members'
probabilities (``slide_logits`` = log of the mean probability, so softmax of it is that mean).

Slide representation (optional, for domain-adversarial training, :mod:`wsi_mil.mil.domain`): a
head that implements :meth:`MILHead.member_outputs_with_representation` also returns the (B, R)
vector its slide classifier reads (CHOWDER: the members' min-max vectors; attention: the pooled
embedding), says what it is in the class attribute ``representation`` and its size in
:meth:`MILHead.representation_dim`. Heads without one keep ``representation = None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from wsi_mil.mil.centring import applied_centring, centre_bags_
from wsi_mil.mil.heads._registry import HeadOptions, too_many_components
from wsi_mil.mil.heads.dropout import CheapDropout
from wsi_mil.mil.heads.sparse_linear import SparseAwareLinear
from wsi_mil.mil.minmax import KSpec, selection_marks


def check_inputs(features: Tensor, mask: Tensor, in_dim: int) -> None:
    """Raise ValueError on tensors that break the (B, N, D) / (B, N) contract (a programming error)."""
    if features.ndim != 3 or features.shape[-1] != in_dim:
        raise ValueError(f"features must be (B, N, {in_dim}), got {tuple(features.shape)}")
    if mask.shape != features.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (B, N) = {tuple(features.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")


def tile_scorer(in_dim: int, out: int, hidden: int | None, dropout: float = 0.0) -> nn.Module:
    """Tile features (..., in_dim) -> scores (..., out): a linear layer, or with ``hidden`` units a ReLU layer
    (then dropout) before it (``nn.Sequential``: Linear, ReLU, Dropout, Linear)."""
    if hidden is None:
        return nn.Linear(in_dim, out)
    return nn.Sequential(SparseAwareLinear(in_dim, hidden), nn.ReLU(), CheapDropout(dropout), nn.Linear(hidden, out))


#: a batch's real tiles are packed before a hidden tile layer when at most this share of its (B, N) positions
#: is real (a linear scorer is cheaper than the packing at any share: measured on web_recommendation_1's bags)
PACK_REAL_SHARE = 0.5
#: ... and its padded features hold at least this many values (smaller batches: the packing costs more)
PACK_MIN_VALUES = 1 << 20


def score_tiles(layers: Callable[[Tensor], Tensor], features: Tensor, mask: Tensor) -> Tensor:
    """Per-tile ``layers`` (..., D) -> (..., K) over a padded batch: (B, N, D) features, (B, N) mask -> (B, N, K).

    A hidden tile layer (an ``nn.Sequential`` or any callable but a plain ``nn.Linear``) on a batch mostly of
    padding (small, unequal bags: at most :data:`PACK_REAL_SHARE` real) runs on the real tiles only, packed,
    and padding gets 0; otherwise on the whole batch (padding gets whatever the layers give it). Real tiles get
    the same values either way (up to float rounding)."""
    if isinstance(layers, nn.Linear) or features.numel() < PACK_MIN_VALUES:
        return layers(features)
    real = int(mask.sum())
    if real > PACK_REAL_SHARE * mask.numel():
        return layers(features)
    return score_real_tiles(layers, features, mask)


def score_real_tiles(layers: Callable[[Tensor], Tensor], features: Tensor, mask: Tensor) -> Tensor:
    """Per-tile ``layers`` on the real tiles only: (B, N, D) features, (B, N) mask -> (B, N, K), padding 0."""
    packed = layers(features[mask])  # (real, K)
    out = packed.new_zeros(*mask.shape, packed.shape[-1])
    out[mask] = packed
    return out


def _reciprocal_or_zero(spread: Tensor, eps: float) -> Tensor:
    """(D,) per-feature scale ``1 / spread``, 0 where ``spread <= eps`` (a feature that does not vary in training)."""
    return torch.where(spread > eps, 1.0 / spread.clamp(min=eps), torch.zeros_like(spread))


class MILHead(nn.Module):
    """Base class: subclasses implement :meth:`member_outputs` and optionally the hooks below."""

    feature_shift: Tensor  # (D,) buffers: features are scored as x * scale + shift
    feature_scale: Tensor
    feature_projection: Tensor  # (D, K) and (K,) buffers of heads with feature_components K only
    projection_shift: Tensor
    output_shift: Tensor  # (1,) buffers of one-output heads only: slide = raw * scale + shift
    output_scale: Tensor
    #: what the slide representation is (docs and errors); None: the head has none
    representation: ClassVar[str | None] = None

    def __init__(self, in_dim: int, n_classes: int, opts: HeadOptions | None = None) -> None:
        """Registered heads are built as ``cls(in_dim, n_classes, opts)``, ``opts`` of their
        registered options model (subclasses narrow its type, keep it as ``self.opts`` and pass it
        here: ``feature_components`` decides ``score_dim``, the input size of their layers)."""
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"a MIL head needs 1 output (survival, regression) or at least 2 classes, got {n_classes}")
        self.in_dim = int(in_dim)
        self.n_classes = int(n_classes)
        self.n_outputs = 1 if n_classes <= 2 else n_classes
        self.register_buffer("feature_shift", torch.zeros(self.in_dim))
        self.register_buffer("feature_scale", torch.ones(self.in_dim))
        components = getattr(opts, "feature_components", None)
        components = None if components == "auto" else components  # unsettled (built directly, saved before it)
        if components is not None and components > self.in_dim:
            raise ValueError(too_many_components(components, self.in_dim))
        #: the size of the tile vectors the head's layers read: K with feature_components, else D
        self.score_dim = int(components) if components is not None else self.in_dim
        if components is not None:  # identity on the first K features until fitted
            self.register_buffer("feature_projection", torch.eye(self.in_dim, self.score_dim))
            self.register_buffer("projection_shift", torch.zeros(self.score_dim))
        if self.n_classes == 1:  # one-output task: predictions in the targets' unit
            self.register_buffer("output_shift", torch.zeros(1))
            self.register_buffer("output_scale", torch.ones(1))

    @torch.no_grad()
    def set_output_scaling(self, shift: float, scale: float) -> None:
        """One-output heads: predict ``raw * scale + shift`` (regression: the training targets' mean, std)."""
        if self.n_classes != 1:
            raise ValueError("output scaling is for one-output heads (n_classes = 1)")
        self.output_shift.fill_(float(shift))
        self.output_scale.fill_(float(scale))

    @torch.no_grad()
    def set_standardization(self, mean: Tensor, std: Tensor, eps: float = 1e-6) -> None:
        """Score ``(x - mean) / std`` per feature; features constant in training (std <= eps) get weight 0."""
        mean = mean.to(self.feature_shift)
        std = std.to(self.feature_scale)
        if self.bag_centring() == "zscore" and bool((std > eps).any()):
            # one scale for every feature (their median std): each bag's own std then scales each feature,
            # floored (BAG_STD_FLOOR) in units of this common scale, so features that hardly vary stay small
            std = torch.where(std > eps, std[std > eps].median(), std)
        scale = _reciprocal_or_zero(std, eps)
        self.feature_scale.copy_(scale)
        self.feature_shift.copy_(-mean * scale)

    @torch.no_grad()
    def set_max_abs_scaling(self, max_abs: Tensor, eps: float = 1e-12) -> None:
        """Score ``x / max_abs`` per feature, not centred (sparse features: :mod:`wsi_mil.mil.scaling`);
        features that are 0 on every training tile get weight 0."""
        self.feature_scale.copy_(_reciprocal_or_zero(max_abs.to(self.feature_scale), eps))
        self.feature_shift.zero_()

    def standardize(self, features: Tensor) -> Tensor:
        """(B, N, D) features -> standardised features (a new tensor; the input is not modified)."""
        return torch.addcmul(self.feature_shift, features, self.feature_scale)

    def bag_centring(self) -> str:
        """``head_options.bag_centring`` as this head applies it: ``none``, ``mean`` or ``median``
        (``auto``, unsettled, reads as ``none``; heads without options: ``none``)."""
        return applied_centring(str(getattr(getattr(self, "opts", None), "bag_centring", "none")))

    def projects_features(self) -> bool:
        """Whether the tiles are scored in their ``feature_components`` principal components."""
        return hasattr(self, "feature_projection")

    @torch.no_grad()
    def set_projection(self, projection: Tensor, shift: Tensor) -> None:
        """Score prepared tiles as ``x @ projection + shift`` (projection (D, K), shift (K,))."""
        if not self.projects_features():
            raise ValueError(f"{type(self).__name__} was built without head_options.feature_components")
        self.feature_projection.copy_(projection.to(self.feature_projection))
        self.projection_shift.copy_(shift.to(self.projection_shift))

    def centred(self, features: Tensor, mask: Tensor, standardized: bool = False) -> Tensor:
        """(B, N, D) features standardised (unless ``standardized``: done in place already, and then
        centred in place too), then centred (and scaled) per bag over its real tiles ``mask`` (B, N) as
        ``bag_centring`` says: the tiles the feature components are fitted on."""
        x = features if standardized else self.standardize(features)
        return centre_bags_(x, mask, self.bag_centring())  # x is ours: a new tensor, or the caller's in-place copy

    def prepare(self, features: Tensor, mask: Tensor, standardized: bool = False) -> Tensor:
        """(B, N, ``score_dim``) features as the tiles are scored: :meth:`centred`, then, with
        ``feature_components``, projected on the fitted components (a new, smaller tensor)."""
        x = self.centred(features, mask, standardized)
        if not self.projects_features():
            return x
        return torch.matmul(x, self.feature_projection).add_(self.projection_shift)

    @torch.no_grad()
    def standardize_(self, features: Tensor) -> Tensor:
        """Standardise float32 ``features`` in place (inference on large bags: no second copy)."""
        return features.mul_(self.feature_scale).add_(self.feature_shift)

    def tile_scorer_layer(self) -> nn.Linear | None:
        """The linear layer that scores tiles from standardised features (D -> one row per member and
        output), or None for heads without one (attention, hidden layers). By default the head's
        ``scorer`` submodule (built by :func:`tile_scorer`) when it is a plain linear layer."""
        scorer = self._modules.get("scorer")
        return scorer if isinstance(scorer, nn.Linear) else None

    @torch.no_grad()
    def init_tile_scorer(self, weight: Tensor, bias: float) -> None:
        """Start every row of the linear tile scorer at ``weight`` (D,) and ``bias`` (``tile_init: outliers``)."""
        layer = self.tile_scorer_layer()
        if layer is None or self.n_outputs != 1:
            raise ValueError(f"{type(self).__name__} has no linear tile scorer of one output (binary) to start "
                             "from outlier tiles")
        layer.weight.copy_(weight.to(layer.weight).unsqueeze(0).expand_as(layer.weight))
        layer.bias.fill_(float(bias))

    def settle_from_start(self, bags: Sequence[Tensor], labels: npt.NDArray[np.int64]) -> dict[str, Any]:
        """Settle options that read the warm start (called once after :meth:`init_tile_scorer`, before training):
        ``bags[i]`` the standardised training bags (N_i, ``score_dim``), ``labels`` their 0/1 classes. Returns what
        was settled (JSON-ready; empty: nothing, the default)."""
        return {}

    # -- to implement ------------------------------------------------------------------------
    def member_outputs(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Raw outputs of standardised features (O = ``n_outputs``: 1 for binary problems, else C).

        Arguments:
            features: Standardised tile features of shape `(B, N, D)`.
            mask: Bool mask of shape `(B, N)`, True on real tiles.

        Returns:
            slide: Member slide scores of shape `(B, E, O)` (E = 1 unless an ensemble).
            tiles: Tile scores of shape `(B, N, O)` (any value on padding; ``forward`` zeroes it).
        """
        raise NotImplementedError

    def selection_k(self) -> tuple[KSpec | None, KSpec | None]:
        """(k_top, k_bottom) tiles the pooling selects, or (None, None) for heads without selection."""
        return None, None

    def representation_dim(self) -> int | None:
        """R, the size of the slide representation, or None for a head without one."""
        return None

    def member_outputs_with_representation(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`member_outputs` and the slide representation `(B, R)` from one pass (optional).

        Heads with a representation implement it (and ``representation``, :meth:`representation_dim`);
        the others raise a TypeError naming the head.
        """
        raise TypeError(f"MIL head {type(self).__name__} has no slide representation (domain-adversarial "
                        "training needs one)")

    def regularization(self) -> Tensor:
        """A penalty added to the training loss (0 by default)."""
        return torch.zeros((), device=next(self.parameters()).device)

    @torch.no_grad()
    def orient_(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """Optional post-training step on training bags (CHOWDER fixes the sign of its tile scores)."""

    # -- shared --------------------------------------------------------------------------------
    def _expand(self, raw: Tensor, dim_is_tiles: bool) -> Tensor:
        if self.n_outputs == self.n_classes:
            return raw
        if dim_is_tiles:
            return torch.cat([-raw, raw], dim=-1)
        return torch.cat([torch.zeros_like(raw), raw], dim=-1)

    def scored_input(self, features: Tensor, mask: Tensor, standardized: bool = False, prepared: bool = False) -> Tensor:
        """What the head's layers read, (B, N, ``score_dim``): :meth:`prepare` of features (B, N, D), or, with
        ``prepared``, the features themselves, already (B, N, ``score_dim``) from :meth:`prepare` (a fit computes
        them once: :mod:`wsi_mil.mil.prepared`). ValueError on shapes that break the contract."""
        check_inputs(features, mask, self.score_dim if prepared else self.in_dim)
        return features if prepared else self.prepare(features, mask, standardized)

    def member_logits(self, features: Tensor, mask: Tensor, prepared: bool = False) -> Tensor:
        """Per-member slide logits, for the training loss.

        Arguments:
            features: Tile features of shape `(B, N, D)` (not standardised), or with ``prepared``
                `(B, N, score_dim)` from :meth:`prepare`.
            mask: Bool mask of shape `(B, N)`, True on real tiles.
            prepared: The features are :meth:`prepare`'s output already.

        Returns:
            logits: Member slide logits of shape `(B, E, C)`.
        """
        raw, _ = self.member_outputs(self.scored_input(features, mask, prepared=prepared), mask)
        return self._expand(raw, dim_is_tiles=False)

    def member_logits_and_representation(self, features: Tensor, mask: Tensor,
                                         prepared: bool = False) -> tuple[Tensor, Tensor]:
        """:meth:`member_logits` `(B, E, C)` and the slide representation `(B, R)` of features `(B, N, D)`
        (not standardised; with ``prepared``: `(B, N, score_dim)` from :meth:`prepare`), mask `(B, N)`,
        from one pass."""
        x = self.scored_input(features, mask, prepared=prepared)
        raw, _, rep = self.member_outputs_with_representation(x, mask)
        return self._expand(raw, dim_is_tiles=False), rep

    def forward(self, features: Tensor, mask: Tensor, standardized: bool = False,
                prepared: bool = False) -> tuple[Tensor, Tensor]:
        """Slide logits and tile scores of a batch of padded bags.

        Arguments:
            features: Tile features of shape `(B, N, D)`; padded positions may hold anything.
            mask: Bool mask of shape `(B, N)`, True on real tiles, False on padding.
            standardized: The features went through :meth:`standardize_` already.
            prepared: The features are :meth:`prepare`'s output, `(B, N, score_dim)`.

        Returns:
            slide_logits: Slide logits of shape `(B, C)` (an ensemble: log of the mean probability).
            tile_scores: Tile scores of shape `(B, N, C)`, 0 on padding (binary: `[-s, s]`).
        """
        raw, tiles = self.member_outputs(self.scored_input(features, mask, standardized, prepared), mask)
        logits = self._expand(raw, dim_is_tiles=False)
        if logits.shape[1] == 1:
            slide = logits[:, 0]
        elif self.n_classes == 1:  # one-output ensemble: the mean of the members' outputs
            slide = logits.mean(dim=1)
        else:
            slide = torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=1) - math.log(logits.shape[1])
        tiles = self._expand(tiles, dim_is_tiles=True)
        if self.n_classes == 1:
            slide = slide * self.output_scale + self.output_shift
            tiles = tiles * self.output_scale
        tiles = torch.where(mask.unsqueeze(-1), tiles, torch.zeros_like(tiles))
        return slide, tiles

    def select(self, tile_scores: Tensor, mask: Tensor) -> Tensor:
        """Selection marks of the tiles the pooling used.

        Arguments:
            tile_scores: Tile scores of shape `(B, N, C)` (from :meth:`forward`).
            mask: Bool mask of shape `(B, N)`.

        Returns:
            marks: int8 marks of shape `(B, N, C)`: +1 top, -1 bottom, 0 not selected or padding.
        """
        k_top, k_bottom = self.selection_k()
        return selection_marks(tile_scores, mask, k_top, k_bottom)
