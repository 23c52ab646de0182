"""Options of every MIL head (``train.head_options``), torch-free, each registered under its head's name.

Importing this module registers the names, descriptions and options models of the built-in
heads; their ``nn.Module`` classes register against the same names in their own modules.
"""

from __future__ import annotations

from pydantic import Field

from wsi_mil.mil.heads._registry import HeadOptions, register_options


@register_options("weldon", "WELDON: linear tile scores, mean of top-k + bottom-k")
class WeldonOptions(HeadOptions):
    """WELDON hyper-parameters; k is a tile count (int) or a fraction of the bag (float in (0, 1])."""

    k_top: int | float = Field(10, gt=0, description="tiles of positive evidence")
    k_bottom: int | float | None = Field(10, gt=0, description="tiles of negative evidence; null = none")
    negative_weight: float = Field(1.0, ge=0, description="weight of the negative evidence (WILDCAT alpha)")


@register_options("chowder", "CHOWDER: ensemble of 1-d embedding + min-max + MLP")
class ChowderOptions(HeadOptions):
    """CHOWDER hyper-parameters (paper values by default, except a 10-member ensemble)."""

    r: int = Field(5, ge=1, description="top and bottom tiles kept by the min-max layer")
    n_members: int = Field(10, ge=1, description="ensemble size E")
    hidden: list[int] = Field(default_factory=lambda: [200, 100], description="MLP sigmoid layers")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout after each hidden layer")
    l2: float = Field(0.5, ge=0, description="L2 penalty on the tile embedding weights (per member)")


@register_options("max", "baseline: max of tile logits")
@register_options("mean", "baseline: mean of tile logits")
class PoolOptions(HeadOptions):
    """Mean/max pooling: optional hidden layer of the tile scorer."""

    hidden: int | None = Field(None, ge=1, description="hidden ReLU units; null = linear tile scorer")
    dropout: float = Field(0.0, ge=0, lt=1)


@register_options("attention", "baseline: gated attention MIL (Ilse 2018)")
class AttentionOptions(HeadOptions):
    """Attention MIL sizes (Ilse et al. used L=500, D=128 on small images)."""

    hidden: int = Field(256, ge=1, description="tile embedding size L")
    attention_dim: int = Field(128, ge=1, description="attention network size D")
    gated: bool = True
    dropout: float = Field(0.25, ge=0, lt=1)
