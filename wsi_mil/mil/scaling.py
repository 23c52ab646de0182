"""How tile features are scaled before a head scores them (``TrainConfig.standardize``).

``zscore``: each feature minus its mean, over its standard deviation, both over the training tiles
(dense features: CNN / ViT embeddings, hand-made descriptors with units from 1e-4 to 1e3).
``maxabs``: each feature divided by its largest absolute value over the training tiles, not centred
(sparse features: word counts, one-hot codes). A z-score gives a feature that is non-zero on one
tile in p of them the value ~ 1 / sqrt(p) there (47 for one tile in 2,211): a few rare entries
then dominate every score, and centring turns the zeros into a dense offset; max-abs scaling keeps
them in [-1, 1] and zero where they were zero (scikit-learn's advice for sparse inputs).
``auto``: ``maxabs`` when at least :data:`SPARSE_ZERO_SHARE` of the training tiles' values are
exactly zero and the bags are not centred (``bag_centring`` none), else ``zscore``.
``none``: the features as stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor

if TYPE_CHECKING:
    from wsi_mil.mil.heads.base import MILHead

#: ``standardize: auto`` reads the features as sparse (``maxabs``) when at least this share of the
#: training tiles' values are exactly 0 (web_recommendation_1: 0.997; ResNet features: ~0.2)
SPARSE_ZERO_SHARE = 0.9


class FeatureStats(NamedTuple):
    """Statistics (D,) float32 of the training tiles: ``mean`` and ``std`` (of the tiles as the head
    centres them), ``max_abs`` (of the tiles as stored) and ``zero_share``, the share of values that are 0."""

    mean: Tensor
    std: Tensor
    max_abs: Tensor
    zero_share: float


def applied_scaling(mode: str, stats: FeatureStats, centring: str) -> str:
    """``mode`` (``auto``, ``zscore``, ``maxabs`` or ``none``) as it applies to features with ``stats`` and bags centred
    as ``centring`` says (the head's resolved ``bag_centring``)."""
    if mode != "auto":
        return mode
    return "maxabs" if stats.zero_share >= SPARSE_ZERO_SHARE and centring == "none" else "zscore"


def apply_scaling(head: MILHead, stats: FeatureStats, mode: str) -> str:
    """Set ``head``'s feature scaling from ``stats`` as ``mode`` says; returns the scaling applied."""
    scaling = applied_scaling(mode, stats, head.bag_centring())
    if scaling == "zscore":
        head.set_standardization(stats.mean, stats.std)
    elif scaling == "maxabs":
        if head.bag_centring() == "zscore":
            raise ValueError("standardize: maxabs does not combine with head_options.bag_centring: zscore (which "
                             "scales each bag by its own spread): use bag_centring: mean, or standardize: zscore")
        head.set_max_abs_scaling(stats.max_abs)
    return scaling
