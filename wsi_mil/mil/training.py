"""Fitting one MIL head: AdamW, tile sampling, class weighting, early stopping, seeds.

Training steps sample ``tiles_per_bag`` tiles per bag (fresh every step); validation and
prediction use whole bags. The loss is the class-weighted cross-entropy of every ensemble member
(averaged over members) plus the head's regularisation; survival: the Cox partial likelihood
(Breslow ties) over each batch's slides, with batches drawn so that each holds events; regression:
MSE or Huber on targets standardised with the training slides' mean and std. Early stopping watches the validation
loss (or AUC) of the whole-bag ensemble prediction from ``min_epochs`` on (a noisy small
validation set must not pick an untrained epoch 1) and restores the best epoch's weights.
Features are standardised with the mean and standard deviation of the training tiles of the
fit (stored in the head, so prediction applies the same transform). Everything random (initialisation, batch order, tile draws, dropout) follows ``seed``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.components import fit_feature_components
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.domain import DomainAdversary, make_adversary
from wsi_mil.mil.fitcache import FitCache, fit_key
from wsi_mil.mil.heads._registry import SLIDE_BAG_MIN_TILES
from wsi_mil.mil.heads.base import MILHead
from wsi_mil.mil.metrics import classification_metrics
from wsi_mil.mil.prepared import scoring_bags
from wsi_mil.mil.registry import create_head
from wsi_mil.mil.regression import regression_loss
from wsi_mil.mil.scaling import FeatureStats, apply_scaling
from wsi_mil.mil.survival import cox_loss
from wsi_mil.mil.targets import SURVIVAL, task_metrics, task_score

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """A :data:`Log` that prints nothing."""
    return None


@dataclass
class FitResult:
    """The weights kept (CPU copies), the epoch they come from (1-based), per-epoch history, and the head
    options settled from the warm start (:meth:`MILHead.settle_from_start`; empty when none were)."""

    state: dict[str, Tensor]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float | None]] = field(default_factory=list)
    settled: dict[str, Any] = field(default_factory=dict)
    #: the feature scaling applied (``standardize`` resolved: zscore, maxabs or none; :mod:`wsi_mil.mil.scaling`)
    scaling: str = "zscore"


def class_weights(targets: npt.NDArray[np.int64], n_classes: int, mode: str) -> Tensor:
    """(C,) loss weights: ``n / (C * n_c)`` for 'balanced' (absent classes get 0), ones for 'none'."""
    if mode == "none":
        return torch.ones(n_classes)
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(targets) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def build_head(cfg: TrainConfig, in_dim: int, n_classes: int, seed: int) -> MILHead:
    """A freshly initialised head; initialisation depends only on ``seed``."""
    torch.manual_seed(seed)
    return create_head(cfg.head, in_dim, n_classes, cfg.head_options)


def logits_loss(head: MILHead, logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Class-weighted cross-entropy of member logits (B, E, C) averaged over members, plus the head's
    regularisation."""
    b, e, c = logits.shape
    ce = F.cross_entropy(logits.reshape(b * e, c), targets.repeat_interleave(e), weight=weights)
    return ce + head.regularization()


def train_epoch(
    head: MILHead, opt: torch.optim.Optimizer, bags: BagSet, positions: npt.NDArray[np.int64], targets: Tensor,
    weights: Tensor, cfg: TrainConfig, rng: np.random.Generator, gen: torch.Generator,
    adversary: DomainAdversary | None = None,
) -> float:
    """One pass over ``positions`` in shuffled batches; returns the mean training loss (with an
    ``adversary``: the label loss plus its weighted site loss, see :mod:`wsi_mil.mil.domain`)."""
    train_mode(head, adversary)
    order = rng.permutation(positions)
    total, count = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start:start + cfg.batch_size].tolist()
        feats, mask = bags.sample_batch(batch, cfg.tiles_per_bag, gen)
        logits, site_loss = step_outputs(head, adversary, feats, mask, batch, bags.prepared)
        loss = logits_loss(head, logits, targets[batch], weights)
        if site_loss is not None:
            loss = loss + site_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(batch)
        count += len(batch)
    return total / max(count, 1)


@torch.no_grad()
def predict_probs(head: MILHead, bags: BagSet, positions: Sequence[int], tile_budget: int) -> npt.NDArray[np.float64]:
    """(len(positions), C) class probabilities from whole bags, in the order of ``positions``
    (a one-output head: (len(positions), 1) risk scores or values). ``bags`` may be prepared ones
    (:mod:`wsi_mil.mil.prepared`) of this head."""
    head.eval()
    out = np.zeros((len(positions), head.n_classes), dtype=np.float64)
    where = {p: i for i, p in enumerate(positions)}
    for batch, feats, mask in bags.whole_batches(list(positions), tile_budget):
        logits, _ = head(feats, mask, prepared=True) if bags.prepared else head(feats, mask)
        if head.n_classes == 1:  # one-output task: the risk score / value itself
            probs = logits.float().cpu().numpy()
        else:
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        for p, row in zip(batch, probs, strict=True):
            out[where[p]] = row
    return out


def _weighted_nll(probs: npt.NDArray[np.float64], y: npt.NDArray[np.int64], weights: npt.NDArray[np.float32]) -> float:
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    w = weights[y]
    return float(-(w * np.log(p)).sum() / max(w.sum(), 1e-12))


class EarlyStopping:
    """Best-epoch tracking of one fit: the best validation score from ``min_epochs`` on (a noisy small
    validation set must not pick an untrained epoch 1), a copy of that epoch's weights, and the
    stop after ``patience`` epochs without improvement."""

    def __init__(self, min_epochs: int, patience: int) -> None:
        self.min_epochs, self.patience = min_epochs, patience
        self.best_score: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, Tensor] | None = None
        self.stale = 0

    def update(self, epoch: int, score: float, head: MILHead) -> None:
        """Record epoch ``epoch``'s validation ``score`` (higher is better)."""
        if epoch < self.min_epochs:
            return  # warm-up: the best epoch is searched from min_epochs on
        if self.best_score is None or score > self.best_score + 1e-9:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            self.best_state = copy.deepcopy(head.state_dict())
        else:
            self.stale += 1

    def should_stop(self, epoch: int) -> bool:
        return self.stale >= self.patience and epoch >= self.min_epochs

    def restore(self, head: MILHead, epochs_run: int) -> int:
        """Load the best weights into ``head``; returns their epoch (the last one when none was kept)."""
        if self.best_state is None:
            return epochs_run
        head.load_state_dict(self.best_state)
        return self.best_epoch


@dataclass
class Loop:
    """The optimiser, site adversary (or None), random streams and early stopping of one fit."""

    opt: torch.optim.Optimizer
    adversary: DomainAdversary | None
    rng: np.random.Generator
    gen: torch.Generator
    max_epochs: int
    use_val: bool
    stopping: EarlyStopping


def make_optimizer(params: Sequence[Tensor], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (``cfg.lr``, ``cfg.weight_decay``) over ``params``: torch's fused kernel on CPU and CUDA (one pass
    over each parameter: 2.4x faster than the multi-tensor one on a CHOWDER head's 10 tensors on one core),
    the multi-tensor one elsewhere."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None,
                             foreach=None if fused else True)


def start_loop(head: MILHead, cfg: TrainConfig, domains: npt.NDArray[np.int64] | None, train_pos: npt.NDArray[np.int64],
               val_pos: npt.NDArray[np.int64], n_epochs: int | None, seed: int) -> Loop:
    """What :func:`fit` and :func:`fit_task` set up before their first epoch (``head`` already on its device
    and standardised): AdamW over the head (and the site classifier with ``cfg.domain_adversarial``), the
    batch-order / tile-draw streams and dropout seeded by ``seed``; early stopping unless ``n_epochs`` is set."""
    max_epochs = n_epochs or cfg.max_epochs
    adversary = make_adversary(cfg, head, domains, train_pos, max_epochs, seed)
    params = list(head.parameters()) + (adversary.parameters() if adversary is not None else [])
    opt = make_optimizer(params, cfg)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    return Loop(opt, adversary, rng, gen, max_epochs, len(val_pos) > 0 and n_epochs is None,
                EarlyStopping(cfg.min_epochs, cfg.patience))


def train_mode(head: MILHead, adversary: DomainAdversary | None) -> None:
    head.train()
    if adversary is not None:
        adversary.train()


def step_outputs(head: MILHead, adversary: DomainAdversary | None, features: Tensor, mask: Tensor,
                 batch: list[int], prepared: bool = False) -> tuple[Tensor, Tensor | None]:
    """One step's member logits (B, E, O) and, with an adversary, its weighted site loss (else None);
    ``prepared``: the features are the head's prepared tiles (:mod:`wsi_mil.mil.prepared`)."""
    if adversary is None:
        return head.member_logits(features, mask, prepared), None
    return adversary.outputs(head, features, mask, batch, prepared)


def epoch_row(epoch: int, train_loss: float, adversary: DomainAdversary | None) -> dict[str, float | None]:
    """The start of one epoch's history row: epoch, training loss, and the adversary's site loss and lambda."""
    row: dict[str, float | None] = {"epoch": epoch, "train_loss": train_loss}
    if adversary is not None:
        row["site_loss"], row["grl_lambda"] = adversary.pop_epoch_loss(), adversary.lam
    return row


def fit(
    head: MILHead, bags: BagSet, targets: npt.NDArray[np.int64], train_pos: npt.NDArray[np.int64],
    val_pos: npt.NDArray[np.int64],
    cfg: TrainConfig, seed: int, n_epochs: int | None = None, log: Log | None = None, class_names: list[str] | None = None,
    stats: FeatureStats | None = None, domains: npt.NDArray[np.int64] | None = None,
    cache: FitCache | None = None,
) -> FitResult:
    """Train ``head`` on ``train_pos``; early-stop on ``val_pos`` unless it is empty or ``n_epochs`` is set.

    ``targets`` (n_bags,) int class index per bag position. ``stats``: the feature statistics of
    the ``train_pos`` tiles when already computed (a search reuses them across its trials);
    ``cache``: what fits on the same ``train_pos``, ``val_pos`` and ``stats`` share (the feature components,
    the prepared bags, the outlier start: a search's trials on one inner fold, :mod:`wsi_mil.mil.fitcache`).
    ``domains`` (n_bags,) int site index per bag position: needed with ``cfg.domain_adversarial``
    (a site classifier on the head's slide representation, trained through gradient reversal with
    Ganin's schedule over the planned steps; used in training only, not kept in the weights).
    Returns the best weights (or the last ones when there is no validation part). Survival and
    regression (``cfg.task``): ``targets`` as :func:`wsi_mil.mil.targets.task_arrays`, see :func:`fit_task`.
    """
    if cfg.task != "classification":
        return fit_task(head, bags, np.asarray(targets, dtype=np.float64), train_pos, val_pos, cfg, seed, n_epochs,
                        log, stats, domains, cache)
    device = bags.device
    head.to(device)
    scaling = set_feature_transform(head, bags, train_pos, cfg, stats, cache)
    bags = scoring_bags(head, bags, train_pos, val_pos, cfg.eval_tiles_per_batch, cache)
    start = warm_start_method(cfg, head, bags, train_pos)
    settled: dict[str, Any] = {}
    if start is not None:
        warm_start_tile_scorer(head, bags, targets, train_pos, cfg.eval_tiles_per_batch, seed, cache, start)
        settled = head.settle_from_start(_StandardisedBags(head, bags, train_pos, cfg.eval_tiles_per_batch),
                                         targets[train_pos])
        if settled and log is not None:
            log(f"  head_options from the {start} start: {settled}")
    names = class_names or [str(i) for i in range(head.n_classes)]
    weights = class_weights(targets[train_pos], head.n_classes, cfg.class_weighting)
    weights_dev = weights.to(device)
    targets_dev = torch.as_tensor(targets, dtype=torch.int64, device=device)
    loop = start_loop(head, cfg, domains, train_pos, val_pos, n_epochs, seed)
    opt, adversary, rng, gen, use_val, stopping = (loop.opt, loop.adversary, loop.rng, loop.gen, loop.use_val,
                                                   loop.stopping)
    history: list[dict[str, float | None]] = []
    for epoch in range(1, loop.max_epochs + 1):
        t0 = time.perf_counter()
        train_loss = train_epoch(head, opt, bags, train_pos, targets_dev, weights_dev, cfg, rng, gen, adversary)
        row = epoch_row(epoch, train_loss, adversary)
        if use_val:
            probs = predict_probs(head, bags, val_pos.tolist(), cfg.eval_tiles_per_batch)
            y = targets[val_pos]
            val_loss = _weighted_nll(probs, y, weights.numpy())
            val_auc = classification_metrics(y, probs, names)["auc"]
            row["val_loss"], row["val_auc"] = val_loss, val_auc
            stopping.update(epoch, -val_loss if cfg.monitor == "loss" or val_auc is None else val_auc, head)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if log is not None:
            log(f"  epoch {epoch:3d}  train loss {train_loss:.4f}"
                + (f"  val loss {val_loss:.4f}  val auc {val_auc if val_auc is None else round(val_auc, 4)}" if use_val else ""))
        if use_val and stopping.should_stop(epoch):
            break
    best_epoch = stopping.restore(head, len(history))
    state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    return FitResult(state, best_epoch, len(history), history, settled, scaling)


def set_feature_transform(
    head: MILHead, bags: BagSet, train_pos: npt.NDArray[np.int64], cfg: TrainConfig,
    stats: FeatureStats | None = None, cache: FitCache | None = None,
) -> str:
    """Set ``head``'s feature scaling (``cfg.standardize`` from ``stats``, or those of the ``train_pos`` tiles)
    and fit its ``feature_components`` on those tiles, label-free. With ``cache``, fits on the same positions
    and standardisation share them: taken from it when there, else fitted and stored in it. Returns the
    scaling applied (:func:`wsi_mil.mil.scaling.apply_scaling`)."""
    scaling = "none"
    if cfg.standardize != "none":
        scaling = apply_scaling(head, stats if stats is not None
                                else bags.feature_stats(train_pos.tolist(), head.bag_centring()), cfg.standardize)
    if not head.projects_features():
        return scaling
    key = fit_key(head, train_pos)
    if cache is not None and key in cache.components:
        head.set_projection(*cache.components[key])
        return scaling
    fit_feature_components(head, bags, train_pos.tolist())
    if cache is not None:
        cache.components[key] = (head.feature_projection.clone(), head.projection_shift.clone())
    return scaling


def settle_bag_defaults(cfg: TrainConfig, bags: BagSet, train_pos: npt.NDArray[np.int64], log: Log = quiet) -> TrainConfig:
    """``cfg`` with the head's data-dependent defaults (``auto`` options) settled from the median size of the
    training bags ``train_pos`` (sizes only, no labels: the same for every fold); idempotent."""
    median = bags.median_size(train_pos)
    opts = cfg.head_options.for_bags(cfg.task, median, cfg.tile_init, bags.dim)
    if opts == cfg.head_options:
        return cfg
    before = cfg.head_options.model_dump()
    changed = {k: v for k, v in opts.model_dump().items() if v != before[k]}
    log(f"head_options {changed} (auto; median training bag {median:.0f} tiles)")
    return cfg.model_copy(update={"head_options": opts})


#: the warm starts of a linear tile scorer (``tile_init`` less ``auto`` and ``random``)
WarmStart = Literal["contrast", "outliers"]
#: the start ``tile_init: auto`` takes for binary classification on slides (docs/mil-defaults.md)
AUTO_TILE_INIT: WarmStart = "contrast"


def warm_start_method(cfg: TrainConfig, head: MILHead, bags: BagSet,
                      train_pos: npt.NDArray[np.int64]) -> WarmStart | None:
    """How this fit starts its tile scorer (``cfg.tile_init``; see its description): ``contrast``,
    ``outliers``, or None for the random start."""
    if cfg.tile_init == "random":
        return None
    if cfg.tile_init != "auto":
        return cfg.tile_init
    slides = (head.n_classes == 2 and head.tile_scorer_layer() is not None and len(train_pos) > 0
              and bags.median_size(train_pos) >= SLIDE_BAG_MIN_TILES)
    return AUTO_TILE_INIT if slides else None


class _StandardisedBags(Sequence[Tensor]):
    """Bags ``positions`` of a :class:`BagSet` as the head standardises them, read one at a time: (N_i, D) on
    the bags' device."""

    def __init__(self, head: MILHead, bags: BagSet, positions: npt.NDArray[np.int64], tile_budget: int) -> None:
        self.head, self.bags, self.positions, self.tile_budget = head, bags, positions, tile_budget

    def __len__(self) -> int:
        return len(self.positions)

    @torch.no_grad()
    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        for _, feats, mask in self.bags.whole_batches([int(self.positions[i])], self.tile_budget):
            x = feats if self.bags.prepared else self.head.prepare(feats.float(), mask)
            return x[0, mask[0]]
        raise IndexError(i)


def warm_start_tile_scorer(head: MILHead, bags: BagSet, targets: npt.NDArray[np.int64], train_pos: npt.NDArray[np.int64],
                           tile_budget: int, seed: int, cache: FitCache | None, method: WarmStart) -> None:
    """``tile_init: contrast`` or ``outliers`` (``method``): start ``head``'s linear tile scorer from
    :func:`wsi_mil.mil.warmstart.contrast_direction` or :func:`~wsi_mil.mil.warmstart.outlier_direction` over the
    standardised training bags ``train_pos`` (binary ``targets``); with ``cache``, the start computed by an earlier fit
    on the same bags, transform, seed and method when there."""
    from wsi_mil.mil.warmstart import contrast_direction, outlier_direction

    if head.n_classes != 2:
        raise ValueError(f"tile_init: {method} needs two classes, not {head.n_classes}; use tile_init: random")
    labels = targets[train_pos]
    start = contrast_direction if method == "contrast" else outlier_direction

    def direction() -> tuple[npt.NDArray[np.float64], float]:
        return start(_StandardisedBags(head, bags, train_pos, tile_budget), labels, seed=seed)

    weight, bias = (direction() if cache is None
                    else cache.warm_start(fit_key(head, train_pos), labels, seed, direction, method))
    head.init_tile_scorer(torch.as_tensor(weight, dtype=torch.float32), bias)


def event_batches(order: npt.NDArray[np.int64], event: npt.NDArray[np.bool_], batch_size: int) -> list[list[int]]:
    """Batches of about ``batch_size`` slide positions from ``order``, each with at least one event.

    ``event`` (n_bags,) bool by position. Events, then censored slides, are dealt round-robin over
    ``min(ceil(n / batch_size), n_events)`` batches (fewer, larger batches when events are rare).
    """
    ev = [int(p) for p in order if event[p]]
    ce = [int(p) for p in order if not event[p]]
    n_batches = max(1, min(math.ceil(len(order) / batch_size), len(ev)))
    batches: list[list[int]] = [[] for _ in range(n_batches)]
    for i, p in enumerate(ev + ce):
        batches[i % n_batches].append(p)
    return [b for b in batches if b]


def task_loss(head: MILHead, logits: Tensor, y: Tensor, task: str, kind: str) -> Tensor:
    """Cox loss (survival; ``y`` (B, 2) time, event) or MSE/Huber (regression; ``y`` (B,) standardised) of
    member outputs ``logits`` (B, E, 1), averaged over members, plus the head's regularisation."""
    out = logits[..., 0]  # (B, E)
    loss = cox_loss(out, y[:, 0], y[:, 1]) if task == SURVIVAL else regression_loss(out, y, kind)
    return loss + head.regularization()


def fit_task(
    head: MILHead, bags: BagSet, y: npt.NDArray[np.float64], train_pos: npt.NDArray[np.int64],
    val_pos: npt.NDArray[np.int64], cfg: TrainConfig, seed: int, n_epochs: int | None = None, log: Log | None = None,
    stats: FeatureStats | None = None, domains: npt.NDArray[np.int64] | None = None,
    cache: FitCache | None = None,
) -> FitResult:
    """:func:`fit` for a one-output head (``n_classes = 1``): survival (``y`` (n_bags, 2) time, event)
    or regression (``y`` (n_bags,) target). Early stopping watches the validation loss (Cox loss of the
    validation slides as one risk set, or the regression loss) or, with ``monitor: auc``, the task's
    score (c-index, -MAE). A survival head's risk is finally standardised over its training slides."""
    device = bags.device
    head.to(device)
    task = cfg.task
    scaling = set_feature_transform(head, bags, train_pos, cfg, stats, cache)
    bags = scoring_bags(head, bags, train_pos, val_pos, cfg.eval_tiles_per_batch, cache)
    if task == SURVIVAL:
        y_loss = y
    else:
        mean, std = float(y[train_pos].mean()), float(y[train_pos].std())
        std = std if std > 0 else 1.0
        head.set_output_scaling(mean, std)
        y_loss = (y - mean) / std
    y_dev = torch.as_tensor(y_loss, dtype=torch.float32, device=device)
    event = y[:, 1] > 0 if task == SURVIVAL else None
    loop = start_loop(head, cfg, domains, train_pos, val_pos, n_epochs, seed)
    opt, adversary, rng, gen, use_val, stopping = (loop.opt, loop.adversary, loop.rng, loop.gen, loop.use_val,
                                                   loop.stopping)
    history: list[dict[str, float | None]] = []
    for epoch in range(1, loop.max_epochs + 1):
        t0 = time.perf_counter()
        train_mode(head, adversary)
        order = rng.permutation(train_pos)
        if event is not None:
            batches = event_batches(order, event, cfg.batch_size)
        else:
            batches = [order[i:i + cfg.batch_size].tolist() for i in range(0, len(order), cfg.batch_size)]
        total = 0.0
        for batch in batches:
            feats, mask = bags.sample_batch(batch, cfg.tiles_per_bag, gen)
            logits, site_loss = step_outputs(head, adversary, feats, mask, batch, bags.prepared)
            loss = task_loss(head, logits, y_dev[batch], task, cfg.regression_loss)
            if site_loss is not None:
                loss = loss + site_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        train_loss = total / max(len(order), 1)
        row = epoch_row(epoch, train_loss, adversary)
        if use_val:
            out = predict_probs(head, bags, val_pos.tolist(), cfg.eval_tiles_per_batch)
            val_loss = _task_val_loss(head, out, y[val_pos], task, cfg.regression_loss)
            val_score = task_score(task, task_metrics(task, y[val_pos], out))
            row["val_loss"], row["val_score"] = val_loss, val_score
            stopping.update(epoch, -val_loss if cfg.monitor == "loss" or val_score is None else val_score, head)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if log is not None:
            log(f"  epoch {epoch:3d}  train loss {train_loss:.4f}"
                + (f"  val loss {row['val_loss']:.4f}  val score {row['val_score']}" if use_val else ""))
        if use_val and stopping.should_stop(epoch):
            break
    best_epoch = stopping.restore(head, len(history))
    if task == SURVIVAL:
        _center_risk(head, bags, train_pos, cfg.eval_tiles_per_batch)
    state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    return FitResult(state, best_epoch, len(history), history, scaling=scaling)


def _center_risk(head: MILHead, bags: BagSet, train_pos: npt.NDArray[np.int64], tile_budget: int) -> None:
    """Rescale a Cox head's risk to mean 0, std 1 over its training slides (exact: ranks and the
    partial likelihood's ordering are unchanged), so risks of models from different folds compare."""
    out = predict_probs(head, bags, train_pos.tolist(), tile_budget)[:, 0]
    mean, std = float(out.mean()), float(out.std())
    std = std if std > 1e-12 else 1.0
    head.set_output_scaling(-mean / std, 1.0 / std)


def _task_val_loss(head: MILHead, out: npt.NDArray[np.float64], y: npt.NDArray[np.float64], task: str,
                   kind: str) -> float:
    """Validation loss of whole-bag outputs ``out`` (n, 1): Cox loss of the slides as one risk set, or the
    regression loss in standardised units."""
    pred = torch.as_tensor(out, dtype=torch.float64)
    if task == SURVIVAL:
        yt = torch.as_tensor(y, dtype=torch.float64)
        return float(cox_loss(pred[:, 0], yt[:, 0], yt[:, 1]))
    shift, scale = float(head.output_shift), float(head.output_scale)
    target = torch.as_tensor((y - shift) / scale, dtype=torch.float64)
    return float(regression_loss((pred - shift) / scale, target, kind))
