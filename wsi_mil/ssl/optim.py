"""Optimizers and the learning-rate schedule for SimCLR: AdamW or LARS, warm-up then cosine.

Weights (tensors with 2+ dimensions) get weight decay (and, for LARS, the layer-wise trust
ratio); biases and normalisation parameters get neither, as in SimCLR and BYOL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) on SGD with momentum.

    For a parameter group with ``lars=True``: ``g <- g + wd * p``; ``g <- eta * |p| / |g| * g``
    (when both norms are positive); ``v <- momentum * v + g``; ``p <- p - lr * v``. Groups with
    ``lars=False`` are plain SGD with momentum (their ``weight_decay`` is applied too, usually 0).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm, torch.ones_like(p_norm)
                    )
                    g = g * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (ndim >= 2) with ``weight_decay``; biases and norms without."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> Optimizer:
    """``adamw`` (betas 0.9, 0.999) or ``lars`` (momentum 0.9, eta 0.001)."""
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        for g in groups:
            g.pop("lars")
        return torch.optim.AdamW(groups, lr=lr)
    if name == "lars":
        return LARS(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at ``step`` (0-based): linear ramp to 1 over ``warmup_steps``, then cosine
    decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(opt: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float) -> LambdaLR:
    """A per-step :class:`LambdaLR` with :func:`warmup_cosine`."""
    return LambdaLR(opt, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_ratio))
