"""Per-bag centring (``head_options.bag_centring``): each bag's mean or median tile, per feature.

One rule for the head (:meth:`wsi_mil.mil.heads.base.MILHead.prepare`, training and inference) and
for the standardisation statistics of centred tiles (:meth:`wsi_mil.mil.bags.BagSet.feature_stats`).
Shapes: ``x`` (B, N, D) float, ``mask`` (B, N) bool (True = real tile).
"""

from __future__ import annotations

import torch
from torch import Tensor


def applied_centring(value: str) -> str:
    """``bag_centring`` as it is applied: ``none``, ``mean`` or ``median`` (``auto``, unsettled, reads as ``none``)."""
    return "none" if value == "auto" else value


def bag_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, 1, D) per-feature mean of each bag's real tiles; 0 for an empty bag."""
    total = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1, keepdim=True)
    return total / mask.sum(dim=1).clamp(min=1).to(x.dtype).view(-1, 1, 1)


def bag_median(x: Tensor, mask: Tensor, block: int = 256) -> Tensor:
    """(B, 1, D) per-feature median of each bag's real tiles.

    The lower of the two middle values for an even count (as :func:`torch.median`); 0 for a bag
    with no tile. Computed ``block`` features at a time, so a 300,000-tile bag needs one
    (B, N, block) copy, not a second copy of the bag.
    """
    if x.shape[1] == 0:  # no tile in any bag of the batch
        return torch.zeros((x.shape[0], 1, x.shape[2]), dtype=x.dtype, device=x.device)
    out = torch.empty((x.shape[0], 1, x.shape[2]), dtype=x.dtype, device=x.device)
    full = bool(mask.all())
    for s in range(0, x.shape[2], block):
        part = x[..., s:s + block]
        if full:
            out[..., s:s + block] = part.median(dim=1, keepdim=True).values
        else:
            part = part.masked_fill(~mask.unsqueeze(-1), float("nan"))
            out[..., s:s + block] = part.nanmedian(dim=1, keepdim=True).values
    return torch.nan_to_num(out, nan=0.0) if not full else out


def bag_centres(x: Tensor, mask: Tensor, centring: str) -> Tensor | None:
    """(B, 1, D) the tile each bag is centred on for ``centring`` (``bag_centring``), or None when it is not centred."""
    how = applied_centring(centring)
    if how == "none":
        return None
    if how == "mean":
        return bag_mean(x, mask)
    if how == "median":
        return bag_median(x, mask)
    raise ValueError(f"unknown bag_centring {centring!r}; choose auto, none, mean or median")
