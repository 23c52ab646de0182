"""Options of every MIL head (``train.head_options``), torch-free, each registered under its head's name.

Importing this module registers the names, descriptions and options models of the built-in
heads; their ``nn.Module`` classes register against the same names in their own modules.
Each options model also declares its ``search_space``: what ``train --tune on`` searches
(``head_options.<key>`` for options, plain keys for the training loop; see ``docs/train.md``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import AfterValidator, Field, PlainValidator

from wsi_mil.mil.heads._registry import (
    SLIDE_BAG_MIN_TILES,
    Choice,
    FloatRange,
    HeadOptions,
    SearchSpace,
    register_options,
)


def _count_or_fraction(value: int | float) -> int | float:
    """A tile count (whole number >= 1) or a fraction of the bag (float in (0, 1]), as the min-max layer reads it."""
    if isinstance(value, float) and value > 1.0 and not value.is_integer():
        raise ValueError(f"must be a whole number of tiles or a fraction of the bag in (0, 1], got {value}")
    return value


#: a number of tiles (int) or a share of the bag (float in (0, 1]); see :mod:`wsi_mil.mil.minmax`
TileCount = Annotated[int | float, AfterValidator(_count_or_fraction)]


def _auto_or_count(value: object) -> int | float | str:
    """``auto``, or a :data:`TileCount` > 0 (one clear error for anything else)."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("must be auto, a whole number of tiles >= 1 or a fraction of the bag in (0, 1]")
    return _count_or_fraction(value)


#: ``auto`` (settled from the training bags) or a :data:`TileCount` > 0
AutoTileCount = Annotated[int | float | Literal["auto"], PlainValidator(_auto_or_count)]

#: CHOWDER's and WELDON's ``tile_hidden: auto`` is a hidden layer of AUTO_TILE_HIDDEN units when the median
#: training bag holds fewer than SLIDE_BAG_MIN_TILES tiles (bags of instances and small slides, such as the
#: demo's ~80; from that size on, slides keep the linear scorer the outlier start needs; docs/mil-defaults.md)
AUTO_TILE_HIDDEN = 64

#: WELDON's ``k_top`` / ``k_bottom: auto`` on slides (the paper's order of magnitude) and, as a share of the
#: bag, on bags of instances and small slides (5 x 10-fold classic sets: docs/mil-defaults.md)
SLIDE_K = 10
BAG_SHARE_K = 0.5

_LR = FloatRange(1e-4, 1e-2, log=True)
#: AdamW's decoupled weight decay: the L2 of heads without an ``l2`` option
_WD = FloatRange(1e-5, 1.0, log=True)


class TileHiddenOptions(HeadOptions):
    """Options of the min-max heads whose tile scorer may take a hidden layer (``tile_hidden``)."""

    tile_hidden: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="ReLU units of a hidden layer before the tile score (a non-linear tile scorer; "
                            "tile_init auto then keeps the random start); null = the paper's linear tile scorer; "
                            "auto = 64 for classification when the median training bag holds < 200 tiles (bags of "
                            "instances, small slides), else null (slides, survival, regression, tile_init outliers or contrast; "
                            "docs/mil-defaults.md)")

    @property
    def hidden_units(self) -> int | None:
        """The ReLU units the head builds before its tile score, or None (linear). ``auto`` unsettled by
        training (a head built directly, a run saved before the option) is the paper's linear scorer."""
        return None if self.tile_hidden == "auto" else self.tile_hidden

    def for_bags(self, task: str, median_tiles: float, tile_init: str, dim: int) -> Self:
        """``bag_centring`` and ``feature_components: auto`` settled (see :class:`HeadOptions`), and
        ``tile_hidden: auto``: 64 for classification on bags of < 200 tiles (median) unless the
        outlier or contrast start, which needs the linear scorer, is asked for; else null."""
        settled = super().for_bags(task, median_tiles, tile_init, dim)
        if self.tile_hidden != "auto":
            return settled
        small = task == "classification" and median_tiles < SLIDE_BAG_MIN_TILES and tile_init not in ("outliers", "contrast")
        return settled.model_copy(update={"tile_hidden": AUTO_TILE_HIDDEN if small else None})


@register_options("weldon", "WELDON: linear tile scores, mean of top-k + bottom-k")
class WeldonOptions(TileHiddenOptions):
    """WELDON hyper-parameters; k is a tile count (int) or a fraction of the bag (float in (0, 1])."""

    centres_slides: ClassVar[bool] = True

    k_top: AutoTileCount = Field(
        "auto", description="tiles of positive evidence: a count, or a share of the bag in (0, 1]; auto = "
                                  "half of the bag for classification when the median training bag holds < 200 tiles "
                                  "(bags of instances, small slides); on larger slides, the k of 1, 2, 3, 5, 10, 1 %, "
                                  "2 % or 5 % whose pooling of the warm start's tile scores best separates the training "
                                  "slides; 10 for survival, regression or without a start (docs/mil-defaults.md)")
    k_bottom: AutoTileCount | None = Field(
        "auto", description="tiles of negative evidence (as k_top; auto as k_top's); null = none")
    negative_weight: float = Field(0.5, ge=0, description="weight of the negative evidence (WILDCAT alpha)")

    @property
    def top_k(self) -> int | float:
        """The k_top the pooling reads; ``auto`` unsettled by training (a head built directly, a run saved
        before the option) is :data:`SLIDE_K`."""
        return SLIDE_K if self.k_top == "auto" else self.k_top

    @property
    def bottom_k(self) -> int | float | None:
        """The k_bottom the pooling reads (None: no negative evidence); ``auto`` unsettled is :data:`SLIDE_K`."""
        return SLIDE_K if self.k_bottom == "auto" else self.k_bottom

    def for_bags(self, task: str, median_tiles: float, tile_init: str, dim: int) -> Self:
        """As :meth:`TileHiddenOptions.for_bags`, and ``k_top`` / ``k_bottom: auto``: :data:`BAG_SHARE_K` of the
        bag for classification on bags of < 200 tiles (median); left ``auto`` for classification on larger bags
        with a linear tile scorer and a warm start (``tile_init`` not random): the fit chooses them from the start
        (:mod:`wsi_mil.mil.kchoice`), and they read as :data:`SLIDE_K` where no start runs (more than two classes);
        else :data:`SLIDE_K` (survival, regression, a hidden tile scorer, the random start). Settled values stay
        unset (``model_fields_set``), so a search still searches them."""
        settled = super().for_bags(task, median_tiles, tile_init, dim)
        small = task == "classification" and median_tiles < SLIDE_BAG_MIN_TILES
        if task == "classification" and not small and tile_init != "random" and settled.tile_hidden is None:
            return settled  # chosen from the warm start at fit time (Weldon.settle_from_start); SLIDE_K without one
        update = {key: BAG_SHARE_K if small else SLIDE_K for key in ("k_top", "k_bottom") if getattr(self, key) == "auto"}
        if not update:
            return settled
        out = settled.model_copy(update=update)
        out.__pydantic_fields_set__ = set(self.model_fields_set)
        return out

    search_space: ClassVar[SearchSpace] = {
        # counts, and fractions of the bag: 0.5 top + 0.5 bottom with negative_weight 1 is the
        # mean tile score, i.e. logistic regression on the mean-pooled features
        "head_options.k_top": Choice((1, 2, 3, 5, 10, 0.1, 0.5)),
        "head_options.k_bottom": Choice((None, 1, 2, 3, 5, 10, 0.1, 0.5)),
        "head_options.negative_weight": FloatRange(0.0, 1.0),
        "weight_decay": _WD,  # WELDON's L2 (decoupled)
        "lr": _LR,
    }


@register_options("chowder", "CHOWDER: ensemble of 1-d embedding + min-max + MLP")
class ChowderOptions(TileHiddenOptions):
    """CHOWDER hyper-parameters (paper values by default, except a 10-member ensemble and ``l2`` 0:
    the paper's 0.5 flattened the tile scores; see docs/mil-defaults.md)."""

    centres_slides: ClassVar[bool] = True

    r: TileCount | None = Field(
        None, gt=0, description="top and bottom tiles kept by the min-max layer: a count, or a fraction of the bag in "
                                "(0, 1] read at r_points ranks; null = half of the bag for classification, 10 % for "
                                "survival and regression (docs/mil-defaults.md)")
    r_points: int = Field(10, ge=1, description="MLP inputs per side when r is a fraction (evenly spaced ranks)")
    n_members: int = Field(10, ge=1, description="ensemble size E")
    hidden: list[int] = Field(default_factory=lambda: [200, 100], description="MLP sigmoid layers")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="dropout after each hidden layer; null = 0.5 for classification, 0 for survival "
                                      "and regression (noise on a Cox risk or a value costs more than it regularises)")
    l2: float = Field(0.0, ge=0, description="L2 penalty on the tile embedding weights (per member; AdamW weight_decay also applies)")
    search_space: ClassVar[SearchSpace] = {
        "head_options.l2": FloatRange(1e-4, 1.0, log=True),
        "head_options.r": Choice((1, 2, 3, 5, 10, 0.05, 0.1, 0.2, 0.5)),
        "lr": _LR,
        "head_options.dropout": FloatRange(0.0, 0.6),
        "patience": Choice((5, 10, 20)),  # early stopping
        "head_options.n_members": Choice((1, 5, 10)),
    }


@register_options("mean", "baseline: mean of tile logits")
class PoolOptions(HeadOptions):
    """Mean/max pooling: optional hidden layer of the tile scorer."""

    hidden: int | None = Field(None, ge=1, description="hidden ReLU units; null = linear tile scorer")
    dropout: float = Field(0.0, ge=0, lt=1)


@register_options("max", "baseline: max of tile logits")
class MaxPoolOptions(PoolOptions):
    """Max pooling: ranks tiles, so ``bag_centring: auto`` centres slides."""

    centres_slides: ClassVar[bool] = True


@register_options("attention", "baseline: gated attention MIL (Ilse 2018)")
class AttentionOptions(HeadOptions):
    """Attention MIL sizes (Ilse et al. used L=500, D=128 on small images)."""

    hidden: int = Field(256, ge=1, description="tile embedding size L")
    attention_dim: int = Field(128, ge=1, description="attention network size D")
    gated: bool = True
    dropout: float = Field(0.25, ge=0, lt=1)

    search_space: ClassVar[SearchSpace] = {
        "lr": _LR, "weight_decay": _WD, "head_options.dropout": FloatRange(0.0, 0.5),
    }


@register_options("lse", "LSE: linear tile scores, log-sum-exp pooling (mean to max)")
class LSEOptions(HeadOptions):
    """Log-sum-exp pooling with temperature r (Durand et al.'s generalised pooling, WILDCAT line)."""

    centres_slides: ClassVar[bool] = True

    r: float = Field(5.0, gt=0, description="temperature: mean of tile scores as r -> 0, max as r -> inf")
    learn_r: bool = Field(False, description="learn r (kept positive by a softplus; r is its start value)")
    l2: float = Field(0.0, ge=0, description="L2 penalty on the tile scorer's weights")

    search_space: ClassVar[SearchSpace] = {
        "head_options.r": FloatRange(0.1, 20.0, log=True),
        "head_options.l2": FloatRange(1e-5, 1.0, log=True),
        "lr": _LR,
    }


@register_options("logistic", "baseline: logistic regression on the bag's mean feature")
class LogisticOptions(HeadOptions):
    """Mean-pooled logistic regression: one linear layer on the mean tile feature, L2-penalised."""

    l2: float = Field(1e-3, ge=0, description="L2 penalty on the weights (sum of squares; bias not penalised)")

    search_space: ClassVar[SearchSpace] = {
        "lr": FloatRange(1e-4, 3e-2, log=True), "head_options.l2": FloatRange(1e-5, 1.0, log=True),
    }
