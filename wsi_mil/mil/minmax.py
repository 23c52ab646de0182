"""The min-max layer of WELDON and CHOWDER: the k highest and k lowest tile scores of a bag.

Shapes: ``scores`` (B, N, C) tile scores per class, ``mask`` (B, N) bool, True for a real tile
and False for padding. Padded positions never enter a result and never receive a gradient.

``k`` is an int (a number of tiles) or a float in (0, 1] (a fraction of the bag, rounded up,
at least one tile). Each bag uses ``k_b = min(k, n_b)``: a bag with fewer than ``k`` tiles uses
all of them, and a bag with fewer than ``2k`` tiles lets the same tile count as top and bottom
evidence (as in the papers' reference implementations). A bag with no tile gives 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KSpec = int | float


def bag_sizes(mask: Tensor) -> Tensor:
    """(B,) int64 number of real tiles per bag."""
    return mask.sum(dim=1).to(torch.int64)


def is_fraction(k: KSpec) -> bool:
    """True for a float in (0, 1] (a share of the bag); ints and whole floats > 1 are counts."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k <= 0:
        raise ValueError(f"k must be a positive int or a fraction in (0, 1], got {k!r}")
    if isinstance(k, float) and k > 1.0 and not k.is_integer():
        raise ValueError(f"k must be a whole number of tiles or a fraction in (0, 1], got {k!r}")
    return isinstance(k, float) and k <= 1.0


def resolve_k(k: KSpec, n: Tensor) -> Tensor:
    """Per-bag number of tiles ``k_b`` (B,) int64 for a count or fraction ``k`` and sizes ``n`` (B,)."""
    if is_fraction(k):
        kb = torch.ceil(n.to(torch.float64) * float(k)).to(torch.int64).clamp(min=1)
    else:
        kb = torch.full_like(n, int(k))
    return torch.minimum(kb, n)


def max_k(k: KSpec, n_max: int) -> int:
    """The largest ``k_b`` any bag of at most ``n_max`` tiles can use (>= 1 for topk calls)."""
    if is_fraction(k):
        return max(1, min(n_max, math.ceil(n_max * float(k))))
    return max(1, min(n_max, int(k)))


def _masked_topk(scores: Tensor, mask: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Top (or bottom) ``k`` values per bag and class, sorted, with padding pushed to the end.

    Returns values (B, k, C) and tile indices (B, k, C); ``k`` must be <= N.
    """
    fill = float("-inf") if largest else float("inf")
    masked = scores.masked_fill(~mask.unsqueeze(-1), fill)
    return torch.topk(masked, k, dim=1, largest=largest, sorted=True)


def _rank_valid(kb: Tensor, k: int) -> Tensor:
    """(B, k, 1) bool: rank r < k_b."""
    return (torch.arange(k, device=kb.device).unsqueeze(0) < kb.unsqueeze(1)).unsqueeze(-1)


def extreme_mean(scores: Tensor, mask: Tensor, k: KSpec, largest: bool) -> Tensor:
    """Mean of the ``k_b`` highest (``largest``) or lowest tile scores per bag and class: (B, C)."""
    n = bag_sizes(mask)
    kb = resolve_k(k, n)
    kmax = max_k(k, scores.shape[1])
    if scores.shape[1] == 0:
        return scores.new_zeros(scores.shape[0], scores.shape[2])
    values, _ = _masked_topk(scores, mask, kmax, largest)
    valid = _rank_valid(kb, kmax)
    total = torch.where(valid, values, torch.zeros_like(values)).sum(dim=1)
    return total / kb.clamp(min=1).unsqueeze(-1).to(scores.dtype)


def minmax_pool(
    scores: Tensor, mask: Tensor, k_top: KSpec, k_bottom: KSpec | None, negative_weight: float = 1.0
) -> Tensor:
    """WELDON/WILDCAT pooling: mean of top ``k_top`` + ``negative_weight`` x mean of bottom ``k_bottom``.

    ``k_bottom=None`` (or ``negative_weight=0``) keeps positive evidence only. Returns (B, C).
    """
    out = extreme_mean(scores, mask, k_top, largest=True)
    if k_bottom is not None and negative_weight != 0.0:
        out = out + negative_weight * extreme_mean(scores, mask, k_bottom, largest=False)
    return out


def extreme_values(scores: Tensor, mask: Tensor, r: int) -> Tensor:
    """CHOWDER's min-max input: R highest (descending) then R lowest (ascending) scores, (B, 2R, C).

    A bag with fewer than R tiles repeats its last available rank (the top list continues with
    its smallest value, the bottom list with its largest), so the MLP always sees 2R numbers
    computed from real tiles only. A bag with no tile gives zeros.
    """
    b, n_pad, c = scores.shape
    if n_pad == 0:
        return scores.new_zeros(b, 2 * r, c)
    n = bag_sizes(mask)
    k = min(r, n_pad)
    ranks = torch.arange(r, device=scores.device).unsqueeze(0)
    ranks = torch.minimum(ranks, (n - 1).clamp(min=0).unsqueeze(1))  # (B, R)
    index = ranks.unsqueeze(-1).expand(b, r, c)
    parts = []
    for largest in (True, False):
        values, _ = _masked_topk(scores, mask, k, largest)
        picked = values.gather(1, index)
        parts.append(torch.where((n > 0).view(b, 1, 1), picked, torch.zeros_like(picked)))
    return torch.cat(parts, dim=1)


def extreme_quantiles(scores: Tensor, mask: Tensor, q: float, points: int) -> Tensor:
    """CHOWDER's min-max input for a fraction ``q`` of the bag: (B, 2P, C).

    The ``k_b = ceil(q n_b)`` highest scores (descending) and lowest (ascending) of each bag, each
    list read at ``P = points`` evenly spaced ranks ``j (k_b - 1) / (P - 1)`` with linear
    interpolation (one point: rank 0). The MLP thus sees the shape of the bag's top and bottom
    share whatever its size, so the share of lesion tiles (not only their count) reaches it.
    Gradients reach the interpolated scores. A bag with no tile gives zeros.
    """
    b, n_pad, c = scores.shape
    if n_pad == 0:
        return scores.new_zeros(b, 2 * points, c)
    n = bag_sizes(mask)
    kb = resolve_k(q, n).clamp(min=1)  # (B,)
    kmax = max_k(q, n_pad)
    step = torch.linspace(0.0, 1.0, points, device=scores.device, dtype=torch.float64) if points > 1 else \
        torch.zeros(1, device=scores.device, dtype=torch.float64)
    pos = step.unsqueeze(0) * (kb - 1).unsqueeze(1).to(torch.float64)  # (B, P) fractional ranks
    lo = pos.floor().to(torch.int64).clamp(max=kmax - 1)
    hi = (lo + 1).clamp(max=(kb - 1).unsqueeze(1)).clamp(max=kmax - 1)
    frac = (pos - lo.to(torch.float64)).to(scores.dtype).unsqueeze(-1)  # (B, P, 1)
    parts = []
    for largest in (True, False):
        values, _ = _masked_topk(scores, mask, kmax, largest)  # (B, kmax, C)
        v_lo = values.gather(1, lo.unsqueeze(-1).expand(b, points, c))
        v_hi = values.gather(1, hi.unsqueeze(-1).expand(b, points, c))
        picked = v_lo + frac * (v_hi - v_lo)
        parts.append(torch.where((n > 0).view(b, 1, 1), picked, torch.zeros_like(picked)))
    return torch.cat(parts, dim=1)


def selection_marks(scores: Tensor, mask: Tensor, k_top: KSpec | None, k_bottom: KSpec | None) -> Tensor:
    """(B, N, C) int8: +1 for a tile among the top ``k_top``, -1 among the bottom ``k_bottom``, else 0.

    A tile that is both (a bag with fewer than k_top + k_bottom tiles) is marked +1.
    """
    b, n_pad, c = scores.shape
    marks = torch.zeros(b, n_pad, c, dtype=torch.int8, device=scores.device)
    if n_pad == 0:
        return marks
    n = bag_sizes(mask)
    for k, largest, value in ((k_bottom, False, -1), (k_top, True, 1)):
        if k is None:
            continue
        kb = resolve_k(k, n)
        kmax = max_k(k, n_pad)
        _, idx = _masked_topk(scores.detach(), mask, kmax, largest)
        valid = _rank_valid(kb, kmax).expand_as(idx)
        src = torch.where(valid, torch.full_like(idx, value, dtype=torch.int8), marks.gather(1, idx))
        marks.scatter_(1, idx, src)
    return marks
