"""Domain-adversarial MIL (Ganin et al., JMLR 2016): a site classifier on the head's slide
representation, connected through a gradient reversal layer, trained jointly with the slide label.

- :class:`GradientReversal`: identity forward; backward multiplies the gradient by ``-lambda``.
- :func:`ganin_lambda`: Ganin's schedule ``lambda_p = 2 / (1 + exp(-10 p)) - 1`` of the training
  progress ``p`` in [0, 1] (0 at the first step, about 1 from mid-training on).
- :class:`SiteClassifier`: Linear -> ReLU -> Linear, representation (B, R) -> site logits (B, S).
- :class:`DomainAdversary`: what a training loop needs: the classifier's parameters, one step's
  slide logits and weighted site loss (class-balanced cross-entropy x ``weight``), the progress.

The loss of a step is ``label_loss + weight * site_ce(classifier(GRL_lambda(rep)))``: the site
classifier descends the site loss, the head (through the reversal) ascends it, scaled by
``weight * lambda_p``. The classifier is used in training only: it is not part of the head's
weights, so prediction is unchanged. :meth:`DomainAdversary.outputs` is the hook of any training
loop (classification: :func:`wsi_mil.mil.training.fit`; a survival or regression loop can call it
the same way and add the site loss to its own).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_mil.errors import ConfigError
from wsi_mil.mil.config import DomainAdversarialConfig, TrainConfig
from wsi_mil.mil.heads.base import MILHead


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.neg() * ctx.lam, None


def gradient_reversal(x: Tensor, lam: float) -> Tensor:
    """``x`` unchanged forward; in backward the gradient becomes ``-lam * grad`` (any shape)."""
    return _Reverse.apply(x, float(lam))  # type: ignore[no-any-return]


class GradientReversal(nn.Module):
    """The gradient reversal layer as a module; ``lam`` can be set between steps."""

    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = float(lam)

    def forward(self, x: Tensor) -> Tensor:
        return gradient_reversal(x, self.lam)


def ganin_lambda(progress: float) -> float:
    """Ganin's schedule ``2 / (1 + exp(-10 p)) - 1`` for training progress ``p`` (clipped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


class SiteClassifier(nn.Module):
    """Slide representation (B, R) -> site logits (B, S): Linear(R, H), ReLU, Linear(H, S)."""

    def __init__(self, rep_dim: int, n_sites: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(rep_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_sites))

    def forward(self, rep: Tensor) -> Tensor:
        return self.net(rep)  # type: ignore[no-any-return]


def check_head_representation(head_name: str) -> None:
    """A ConfigError when head ``head_name`` has no slide representation for a site classifier."""
    from wsi_mil.mil.registry import head_class, list_with_representation

    if head_class(head_name).representation is None:
        raise ConfigError(f"train.domain_adversarial: head '{head_name}' has no slide representation for a site "
                          f"classifier; use one of {', '.join(list_with_representation())}, or remove "
                          "domain_adversarial")


def site_weights(domains: npt.NDArray[np.int64], n_sites: int) -> Tensor:
    """(S,) class-balanced weights ``n / (S_present * n_s)`` of the site cross-entropy (absent sites 0)."""
    counts = np.bincount(domains, minlength=n_sites).astype(np.float64)
    present = max(int((counts > 0).sum()), 1)
    w = np.where(counts > 0, len(domains) / (present * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


class DomainAdversary:
    """The site classifier of one fit and its schedule.

    ``domains`` (n_bags,) int site index per bag position; ``train_pos`` the fit's training bags
    (they set the class balance); ``total_steps`` the optimisation steps planned (``max_epochs`` x
    batches per epoch: the progress ``p`` of Ganin's schedule is ``step / total_steps``).
    """

    def __init__(self, cfg: DomainAdversarialConfig, head: MILHead, domains: npt.NDArray[np.int64],
                 train_pos: npt.NDArray[np.int64], n_sites: int, total_steps: int, seed: int) -> None:
        rep_dim = head.representation_dim()
        if rep_dim is None:
            raise ConfigError(f"train.domain_adversarial: head {type(head).__name__} has no slide representation "
                              "for a site classifier; remove domain_adversarial or choose another head")
        device = head.feature_shift.device
        torch.manual_seed(seed + 7)
        self.classifier = SiteClassifier(rep_dim, n_sites, cfg.hidden).to(device)
        self.weight = float(cfg.weight)
        self.domains = torch.as_tensor(domains, dtype=torch.int64, device=device)
        self.site_weight = site_weights(domains[train_pos], n_sites).to(device)
        self.total_steps = max(int(total_steps), 1)
        self.step = 0
        self._sum, self._count = 0.0, 0

    def parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())

    def train(self) -> None:
        self.classifier.train()

    @property
    def lam(self) -> float:
        """Ganin's lambda at the current step."""
        return ganin_lambda(self.step / self.total_steps)

    def outputs(self, head: MILHead, features: Tensor, mask: Tensor, batch: list[int],
                prepared: bool = False) -> tuple[Tensor, Tensor]:
        """One training step's member logits (B, E, C) of ``head`` and the weighted site loss (scalar),
        from one forward pass; advances the schedule by one step. ``prepared``: as
        :meth:`~wsi_mil.mil.heads.base.MILHead.member_logits`."""
        logits, rep = head.member_logits_and_representation(features, mask, prepared)
        site_logits = self.classifier(gradient_reversal(rep, self.lam))
        loss = F.cross_entropy(site_logits, self.domains[batch], weight=self.site_weight.to(site_logits.dtype))
        self.step += 1
        self._sum += float(loss.detach()) * len(batch)
        self._count += len(batch)
        return logits, self.weight * loss

    def pop_epoch_loss(self) -> float | None:
        """The mean site cross-entropy (unweighted) of the steps since the last call; None without steps."""
        mean = self._sum / self._count if self._count else None
        self._sum, self._count = 0.0, 0
        return mean


def make_adversary(cfg: TrainConfig, head: MILHead, domains: npt.NDArray[np.int64] | None,
                   train_pos: npt.NDArray[np.int64], max_epochs: int, seed: int) -> DomainAdversary | None:
    """The adversary of one fit of ``head`` (already on its device), or None when
    ``cfg.domain_adversarial`` is off. ``domains`` (n_bags,) site index per bag position (required
    when on); the schedule spans ``max_epochs`` epochs of ``ceil(len(train_pos) / batch_size)`` steps.

    The hook of any training loop: add ``adversary.parameters()`` to the optimiser, take a step's
    member logits and weighted site loss from :meth:`DomainAdversary.outputs`, add that loss to the
    step's own loss."""
    if cfg.domain_adversarial is None:
        return None
    if domains is None:
        raise ValueError("cfg.domain_adversarial needs the domains (site index per bag)")
    steps = max_epochs * math.ceil(len(train_pos) / cfg.batch_size)
    return DomainAdversary(cfg.domain_adversarial, head, domains, train_pos, int(domains.max()) + 1, steps, seed)
