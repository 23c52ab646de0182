"""Feature components (``head_options.feature_components``): the top K whitened principal components.

Random-init and many pretrained encoders give tile features whose variance sits in a few
directions (the colour of the tile); a few lesion tiles then differ from the rest along directions
of small variance that a slide-level gradient hardly moves. Scoring the tiles in their top K
principal components, each scaled to unit variance, gives those directions the same footing and
drops the near-empty ones (keeping all of them scales noise up: docs/mil-defaults.md).

The components are fitted on the training bags' tiles as the head prepares them (standardised,
then centred per bag: :meth:`wsi_mil.mil.heads.base.MILHead.centred`), labels unused, and kept in
the head's buffers, so ``predict`` and heatmaps score the tiles the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.heads.base import MILHead

#: at most this many tiles (spread evenly over the training bags) enter the covariance: a D x D
#: estimate needs far fewer than the millions of a large cohort, and the cost stays one pass
MAX_TILES = 262_144
#: components whose variance is below this share of the largest are left at weight 0, not scaled up
RELATIVE_FLOOR = 1e-9


def tile_sample(sizes: Sequence[int], budget: int = MAX_TILES) -> list[int]:
    """Tiles taken from each bag of ``sizes`` tiles: every tile while the total fits ``budget``, else a
    share of each bag in proportion to its size (at least one tile of a non-empty bag)."""
    total = sum(sizes)
    if total <= budget:
        return list(sizes)
    return [min(n, max(1, n * budget // total)) if n else 0 for n in sizes]


def principal_components(x_sum: Tensor, outer: Tensor, count: int, k: int) -> tuple[Tensor, Tensor]:
    """(projection (D, K), shift (K,)) float32 of the top ``k`` whitened principal components, from the sum
    (D,) and the sum of outer products (D, D) float64 of ``count`` tiles: ``x @ projection + shift`` has
    mean 0 and variance 1 along each component."""
    if count < 2:
        raise ValueError(f"feature_components needs at least 2 training tiles, got {count}")
    mean = x_sum / count
    cov = (outer - count * torch.outer(mean, mean)) / (count - 1)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k]
    # a sign per component (largest loading positive) makes the fit independent of the solver's signs
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True))).squeeze(0)
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    floor = RELATIVE_FLOOR * float(values[0].clamp(min=0))
    scale = torch.where(values > floor, values.clamp(min=torch.finfo(values.dtype).tiny).rsqrt(), 0.0)
    projection = vectors * scale
    return projection.float(), (-mean @ projection).float()


@torch.no_grad()
def fit_feature_components(head: MILHead, bags: BagSet, positions: Sequence[int], budget: int = MAX_TILES) -> None:
    """Fit ``head``'s ``feature_components`` on the tiles of the bags at ``positions`` as the head centres
    them (after :meth:`~MILHead.set_standardization`), at most ``budget`` tiles; a head without the option
    is left as it is."""
    if not head.projects_features():
        return
    dim = head.in_dim
    take = tile_sample([int(bags.sizes[p]) for p in positions], budget)
    x_sum = torch.zeros(dim, dtype=torch.float64, device=bags.device)
    outer = torch.zeros((dim, dim), dtype=torch.float64, device=bags.device)
    count = 0
    for p, n in zip(positions, take, strict=True):
        if n == 0:
            continue
        bag = bags.bags[p].to(bags.device, torch.float32)[None]
        x = head.centred(bag, torch.ones(bag.shape[:2], dtype=torch.bool, device=bag.device))[0]
        if n < len(x):  # evenly spaced tiles: deterministic, and spread over the slide's rows
            x = x[torch.linspace(0, len(x) - 1, n, device=x.device).round().long()]
        x_sum += x.sum(dim=0, dtype=torch.float64)
        outer += (x.T @ x).double()  # one bag's products in float32 (half the float64 time), the cohort's in float64
        count += len(x)
    projection, shift = principal_components(x_sum, outer, count, head.score_dim)
    head.set_projection(projection, shift)
