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


#: elements (B x rows x D) of one block of :func:`masked_sum` on the CPU: a 4 MiB float32 block stays in cache,
#: where one (B, N, D) temporary of 16 slides of 10,000 tiles x 1,024-d (655 MB) costs more to allocate and fill
#: than the sum itself (mean 257 -> 67 ms, std 737 -> 100 ms per such batch on 2 cores; BENCHMARKS.md)
BLOCK_ELEMENTS = 1 << 20


def masked_sum(x: Tensor, mask: Tensor, centres: Tensor | None = None, square: bool = False) -> Tensor:
    """(B, 1, D) sum over each bag's real tiles of ``x`` (``centres`` (B, 1, D): of ``x - centres``; ``square``:
    of its squares). Padding may hold anything (inf, NaN): it is never read into the sum. On the CPU the
    tiles are summed a block of rows at a time (:data:`BLOCK_ELEMENTS`); on a GPU in one pass."""
    b, n, d = x.shape
    full = bool(mask.all())  # no padding: nothing to mask out
    if full and centres is None and not square:
        return x.sum(dim=1, keepdim=True)
    rows = n if x.device.type != "cpu" else max(1, BLOCK_ELEMENTS // max(b * d, 1))
    total = torch.zeros((b, 1, d), dtype=x.dtype, device=x.device)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    for start in range(0, n, rows):
        part = x[:, start:start + rows]
        if centres is not None:
            part = part - centres
        if square:
            part = part * part
        if not full:
            part = torch.where(mask[:, start:start + rows].unsqueeze(-1), part, zero)
        total += part.sum(dim=1, keepdim=True)
    return total


def _counts(x: Tensor, mask: Tensor) -> Tensor:
    """(B, 1, 1) real tiles per bag, at least 1 (an empty bag's sums are 0)."""
    return mask.sum(dim=1).clamp(min=1).to(x.dtype).view(-1, 1, 1)


def bag_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(B, 1, D) per-feature mean of each bag's real tiles; 0 for an empty bag."""
    return masked_sum(x, mask) / _counts(x, mask)


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
    var = masked_sum(x, mask, centres, square=True) / _counts(x, mask)
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
