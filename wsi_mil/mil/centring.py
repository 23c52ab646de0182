"""Per-bag centring (``head_options.bag_centring``): each bag's mean or median tile, per feature (``zscore``:
the mean, then each feature scaled by the bag's standard deviation).

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


#: ``zscore`` divides by a bag's standard deviation of a feature, or by this when it is smaller. The head
#: first scales every feature by one common scale (the median of the training tiles' feature standard
#: deviations), so this is a tenth of a typical feature's spread: features that hardly vary (dead units of
#: an encoder, constant within a slide) stay small instead of being blown up to unit variance
#: (docs/mil-defaults.md)
BAG_STD_FLOOR = 0.1


def bag_std(x: Tensor, mask: Tensor, centres: Tensor) -> Tensor:
    """(B, 1, D) per-feature standard deviation of each bag's real tiles around ``centres`` (B, 1, D), floored at
    :data:`BAG_STD_FLOOR` (a bag with no tile: the floor)."""
    dev = torch.where(mask.unsqueeze(-1), x - centres, torch.zeros((), dtype=x.dtype, device=x.device))
    var = (dev * dev).sum(dim=1, keepdim=True) / mask.sum(dim=1).clamp(min=1).to(x.dtype).view(-1, 1, 1)
    return var.sqrt().clamp(min=BAG_STD_FLOOR)


def bag_centres(x: Tensor, mask: Tensor, centring: str) -> Tensor | None:
    """(B, 1, D) the tile each bag is centred on for ``centring`` (``bag_centring``), or None when it is not centred."""
    how = applied_centring(centring)
    if how == "none":
        return None
    if how in ("mean", "zscore"):
        return bag_mean(x, mask)
    if how == "median":
        return bag_median(x, mask)
    raise ValueError(f"unknown bag_centring {centring!r}; choose auto, none, mean, median or zscore")


def centre_bags_(x: Tensor, mask: Tensor, centring: str) -> Tensor:
    """``x`` (B, N, D) with each bag centred (and with ``zscore`` scaled) as ``centring`` says, in place; returns ``x``.

    ``mean`` / ``median``: minus the bag's mean / median tile; ``zscore``: minus its mean tile, then each
    feature divided by its standard deviation over the bag's real tiles (:func:`bag_std`).
    """
    centres = bag_centres(x, mask, centring)
    if centres is None:
        return x
    if applied_centring(centring) == "zscore":
        scales = bag_std(x, mask, centres)
        return x.sub_(centres).div_(scales)
    return x.sub_(centres)
