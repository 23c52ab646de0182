"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020).

For N tiles with views z1, z2 (N, D): the 2N projections are L2-normalised; each one's positive
is the other view of its tile and its negatives are the other 2N - 2 projections. With
s(i, k) = cos(z_i, z_k) / T,

    loss = mean over the 2N anchors i of  -log( exp(s(i, pos(i))) / sum_{k != i} exp(s(i, k)) ).

Under DDP the projections of every process are gathered with a gradient-preserving all-gather,
so each anchor sees the negatives of the whole global batch (2 N_global - 2), and the gradient is
that of the loss on the global batch: with DDP's gradient averaging, a run over W processes of
N tiles each computes the same loss and gradient as one process over the W N tiles.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n, D) from every process in rank order -> (W n, D), keeping gradients.

    Without an initialised process group this returns ``x``.
    """
    _, world = _world()
    if world == 1:
        return x

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a functional collective whose
        warnings.simplefilter("ignore", FutureWarning)  # backward (reduce-scatter) gloo lacks
        return torch.cat(all_gather(x.contiguous()), dim=0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = True) -> torch.Tensor:
    """NT-Xent loss of two views. z1, z2: (N, D) projections (any scale); returns a scalar.

    The loss is computed in float32 (float64 for float64 inputs) whatever the input dtype: bf16
    logits lose the ranking of close negatives. With ``gather`` and an initialised process group, the negatives come from
    every process (see the module docstring); the value returned is this process's mean over
    its own 2N anchors.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 1:
        raise ValueError("nt_xent needs at least one pair")
    dtype = torch.float64 if z1.dtype == torch.float64 else torch.float32
    z1 = F.normalize(z1.to(dtype), dim=1)
    z2 = F.normalize(z2.to(dtype), dim=1)
    rank, world = _world() if gather else (0, 1)
    if world > 1:
        k1, k2 = gather_with_grad(z1), gather_with_grad(z2)
    else:
        k1, k2 = z1, z2
    n_all = k1.shape[0]
    keys = torch.cat([k1, k2], dim=0)  # (2 N_all, D): all first views, then all second views
    queries = torch.cat([z1, z2], dim=0)  # (2N, D)
    logits = queries @ keys.T / temperature  # (2N, 2 N_all)
    local = torch.arange(n, device=z1.device) + rank * n
    self_idx = torch.cat([local, local + n_all])  # each anchor's own column
    pos_idx = torch.cat([local + n_all, local])  # each anchor's positive column
    rows = torch.arange(2 * n, device=z1.device)
    logits = logits.masked_fill(
        torch.zeros_like(logits, dtype=torch.bool).index_put_((rows, self_idx), torch.tensor(True, device=z1.device)),
        float("-inf"),
    )
    return F.cross_entropy(logits, pos_idx)
