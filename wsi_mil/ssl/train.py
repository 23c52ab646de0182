"""The SimCLR training loop: views on the device, NT-Xent, AdamW/LARS, checkpoints, exact resume.

One step: a batch of B uint8 tiles goes to the device, two views are drawn from a generator
seeded by (seed, epoch, step, rank), both views pass through backbone + head in one forward of
2B images (bf16 autocast on CUDA), NT-Xent over the global batch, one optimizer and one
scheduler step. A checkpoint is written after every epoch (and every ``checkpoint_every``
steps if asked); resuming from it continues with bit-identical data order, views, model and
optimizer state, so an interrupted run ends where an uninterrupted one would (on the CPU:
the same weights bit for bit).

Under ``torchrun`` every process trains on its own share of the chunks (see
:mod:`wsi_mil.ssl.data`), gradients are averaged by DDP and negatives are gathered from all
processes (:mod:`wsi_mil.ssl.loss`). Only rank 0 writes checkpoints and reports progress.

Pieces: :func:`plan_steps` (step counts), :func:`build_training` (model, optimizer, scheduler),
:class:`Checkpointer` (save / exact restore), :func:`wrap_forward` (DDP, ``torch.compile``) and
``_SimCLRLoop`` (epochs, steps, progress reports); :func:`train_simclr` joins them.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from wsi_mil.config import config_to_dict
from wsi_mil.errors import WsiMilError
from wsi_mil.ssl.augment import SimCLRAugment
from wsi_mil.ssl.checkpoint import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from wsi_mil.ssl.config import PretrainConfig
from wsi_mil.ssl.data import (
    BatchReader,
    Chunk,
    TileSource,
    generator,
    list_chunks,
    rank_groups,
    steps_per_epoch,
)
from wsi_mil.ssl.head import ProjectionHead, SimCLRModel
from wsi_mil.ssl.loss import nt_xent
from wsi_mil.ssl.optim import build_optimizer, build_scheduler


@dataclass(frozen=True)
class DistInfo:
    """Where this process runs: rank, world size and device (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Set up DDP from the ``torchrun`` environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    ``device``: ``cuda``, ``cpu`` or ``auto`` (CUDA when available). Process group backend: NCCL
    on CUDA, gloo on the CPU. Without WORLD_SIZE > 1 nothing is initialised.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise WsiMilError(f"--device '{device}': use cuda, cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise WsiMilError("--device cuda: no CUDA device is visible to torch; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world=world, local_rank=local, device=dev)


@dataclass
class ProgressEvent:
    """A progress report from rank 0. ``kind``: ``start``, ``step``, ``epoch`` or ``done``.

    ``loss``: mean NT-Xent since the previous report (``step``) or over the epoch (``epoch``);
    ``tiles_per_s``: tiles (all processes) per second of wall time since the previous report.
    """

    kind: str
    epoch: int
    epochs: int
    step: int
    steps: int
    global_step: int
    total_steps: int
    loss: float = math.nan
    lr: float = math.nan
    tiles_per_s: float = math.nan


@dataclass
class TrainResult:
    """The outcome of :func:`train_simclr`. ``model`` is the unwrapped backbone + head (CPU copy
    not made: it lives on the training device)."""

    model: SimCLRModel
    global_step: int
    total_steps: int
    steps_per_epoch: int
    epoch_losses: list[float]
    resumed_from: int | None
    seconds: float
    tiles_seen: int
    history: list[dict[str, float]] = field(default_factory=list)


def build_model(backbone: nn.Module, embed_dim: int, cfg: PretrainConfig) -> SimCLRModel:
    """Backbone + projection head (``proj_layers`` layers, ``proj_hidden_dim`` -> ``proj_dim``)."""
    head = ProjectionHead(embed_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers)
    return SimCLRModel(backbone, head)


def use_bf16(cfg: PretrainConfig, device: torch.device) -> bool:
    """bf16 autocast: ``precision=bf16``, or ``auto`` on CUDA."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def _autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to_device(tiles: NDArray[np.uint8] | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(tiles) if not isinstance(tiles, torch.Tensor) else tiles
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def simclr_step_loss(
    model: nn.Module,
    tiles: torch.Tensor,
    augment: SimCLRAugment,
    gen: torch.Generator,
    temperature: float,
    bf16: bool,
    channels_last: bool,
) -> torch.Tensor:
    """The NT-Xent loss of one batch: two views of ``tiles`` (B, S, S, 3) uint8 on the device."""
    b = tiles.shape[0]
    v1 = augment(tiles, gen)
    v2 = augment(tiles, gen)
    x = torch.cat([v1, v2], dim=0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with _autocast(bf16, tiles.device):
        z = model(x)
    return nt_xent(z[:b], z[b:], temperature)


def _data_fingerprint(sources: Sequence[TileSource], names: Sequence[str]) -> dict[str, Any]:
    return {"sources": [[str(n), int(s.n_tiles)] for n, s in zip(names, sources)]}


@dataclass(frozen=True)
class StepPlan:
    """Step counts of a run, per process: ``steps_per_epoch``, ``total`` (epochs x steps per epoch,
    capped by ``max_steps``) and ``warmup`` (steps of linear learning-rate warm-up)."""

    steps_per_epoch: int
    total: int
    warmup: int


def plan_steps(chunks: Sequence[Chunk], cfg: PretrainConfig, world: int) -> StepPlan:
    """The :class:`StepPlan` of ``cfg`` over ``chunks`` dealt to ``world`` processes.

    Raises :class:`WsiMilError` if the tiles cannot fill one batch per process.
    """
    n_total = sum(e - s for _, s, e in chunks)
    spe = steps_per_epoch(chunks, world, cfg.batch_size, cfg.max_tiles)
    if spe < 1:
        per = f" over {world} processes (at least {cfg.batch_size} tiles each)" if world > 1 else ""
        raise WsiMilError(f"batch size {cfg.batch_size} is larger than the {n_total} tiles available{per}; "
                          "lower --batch-size or tile more slides")
    total = spe * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    return StepPlan(spe, total, min(total, int(round(cfg.warmup_epochs * spe))))


@dataclass
class TrainState:
    """Where a run stands, as a checkpoint restores it: the next ``epoch`` and ``step`` within it,
    ``global_step`` (steps done over all epochs), ``epoch_losses`` (mean NT-Xent per finished
    epoch) and ``history`` (one ``{global_step, loss, lr}`` per progress report)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


def _channels_last(cfg: PretrainConfig, device: torch.device) -> bool:
    return cfg.channels_last and device.type == "cuda"


def build_training(
    backbone: nn.Module, embed_dim: int, cfg: PretrainConfig, di: DistInfo, plan: StepPlan,
) -> tuple[SimCLRModel, Optimizer, LambdaLR]:
    """Model (backbone + head on the device, seeded by ``cfg.seed + rank``), optimizer and scheduler.

    The model is the unwrapped one (its state-dict names are the checkpoint's); see
    :func:`wrap_forward` for the module the steps call.
    """
    torch.manual_seed(cfg.seed + di.rank)  # any global-RNG use in the model (dropout, drop path)
    model = build_model(backbone, embed_dim, cfg).to(di.device)
    if _channels_last(cfg, di.device):
        model = model.to(memory_format=torch.channels_last)
    if di.world > 1 and cfg.sync_batchnorm and di.device.type == "cuda":  # torch: SyncBatchNorm is GPU-only
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[assignment]
    opt = build_optimizer(model, cfg.optimizer, cfg.peak_lr(), cfg.decay())
    sched = build_scheduler(opt, plan.warmup, plan.total, cfg.min_lr_ratio)
    return model, opt, sched


def wrap_forward(model: nn.Module, cfg: PretrainConfig, di: DistInfo) -> nn.Module:
    """The module the steps call: ``model`` under DDP when ``world > 1``, compiled if ``cfg.compile``.

    The plain ``model`` keeps the state-dict names; only the forward is wrapped.
    """
    forward: nn.Module = model
    if di.world > 1:
        forward = DDP(model, device_ids=[di.device.index] if di.device.type == "cuda" else None)
    if cfg.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    return forward


class Checkpointer:
    """The run's checkpoint at ``path`` (None: never written, nothing to resume).

    ``config`` and ``data`` (the run's config dict and tile-source fingerprint) are stored with it
    and checked on resume. Under DDP every process takes part in :meth:`save` (RNG states are
    gathered), only rank 0 writes.
    """

    def __init__(self, path: str | Path | None, di: DistInfo, config: dict[str, Any], data: dict[str, Any]) -> None:
        self.path = path
        self.di = di
        self.config = config
        self.data = data

    def restore(self, model: nn.Module, opt: Optimizer, sched: LambdaLR) -> TrainState | None:
        """Load the checkpoint into ``model``/``opt``/``sched`` and this process's RNGs; its state.

        None if there is no checkpoint file. Raises :class:`CheckpointError` if it is corrupt,
        from another run or does not fit the model.
        """
        if self.path is None or not Path(self.path).is_file():
            return None
        ckpt = load_checkpoint(self.path)
        check_compatible(self.path, ckpt, self.config, self.data, self.di.world)
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.path}: checkpoint does not fit this model ({str(exc).splitlines()[0][:160]}); "
                                  "delete it or run without --resume") from exc
        state = TrainState(int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt["global_step"]),
                           [float(v) for v in ckpt.get("epoch_losses", [])], list(ckpt.get("history", [])))
        set_rng_state(ckpt["rng"][self.di.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        return state

    def save(self, model: nn.Module, opt: Optimizer, sched: LambdaLR, state: TrainState,
             next_epoch: int, next_step: int) -> None:
        """Write a checkpoint from which training continues at (``next_epoch``, ``next_step``)."""
        if self.path is None:
            return
        states = _gather_rng(self.di)
        if self.di.is_main:
            save_checkpoint(self.path, {
                "config": self.config, "data": self.data, "world_size": self.di.world,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": states, "epoch": next_epoch, "step": next_step, "global_step": state.global_step,
                "epoch_losses": state.epoch_losses, "history": state.history,
            })
        if self.di.world > 1:
            dist.barrier()


class _LossWindow:
    """NT-Xent summed on the device (no host sync per step) since the last progress report."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.n = 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss
        self.n += 1

    def take(self) -> tuple[float, int, float]:
        """(mean loss, steps, wall seconds) since the last take; starts a new window."""
        mean, n = float(self.total) / self.n, self.n
        now = time.perf_counter()
        seconds, self.t0 = now - self.t0, now
        self.total.zero_()
        self.n = 0
        return mean, n, seconds


@dataclass
class _SimCLRLoop:
    """The epochs and steps of one run, from ``state`` on (see :func:`train_simclr`)."""

    sources: Sequence[TileSource]
    chunks: list[Chunk]
    cfg: PretrainConfig
    di: DistInfo
    plan: StepPlan
    model: SimCLRModel
    forward: nn.Module
    opt: Optimizer
    sched: LambdaLR
    augment: SimCLRAugment
    checkpointer: Checkpointer
    state: TrainState
    progress: Callable[[ProgressEvent], None] | None = None
    checkpoint_every: int | None = None
    on_step_end: Callable[[int], None] | None = None
    tiles_seen: int = 0

    def __post_init__(self) -> None:
        self.bf16 = use_bf16(self.cfg, self.di.device)
        self.channels_last = _channels_last(self.cfg, self.di.device)

    def run(self) -> None:
        """Train until ``plan.total`` steps or ``cfg.epochs`` epochs are done."""
        self._report("start")
        self.model.train()
        while self.state.global_step < self.plan.total and self.state.epoch < self.cfg.epochs:
            if not self._epoch():
                break
        self._report("done")

    def _epoch(self) -> bool:
        """The rest of the current epoch; False if ``max_steps`` stopped it part-way."""
        s, cfg, di, spe = self.state, self.cfg, self.di, self.plan.steps_per_epoch
        groups = rank_groups(self.chunks, cfg.seed, s.epoch, di.rank, di.world, cfg.shuffle_chunks)
        reader = BatchReader(self.sources, groups, cfg.batch_size, threads=cfg.read_threads)
        last_step = min(spe, s.step + (self.plan.total - s.global_step))
        loss_sum = torch.zeros((), device=di.device)
        window = _LossWindow(di.device)
        epoch_n = 0
        for tiles_np in reader.iter_batches(s.step, last_step):
            loss = self._step(tiles_np)
            loss_sum += loss
            window.add(loss)
            epoch_n += 1
            s.step += 1
            s.global_step += 1
            self.tiles_seen += cfg.batch_size * di.world
            if s.global_step % cfg.log_every == 0 or s.step == last_step:
                self._log(window)
            if self.checkpoint_every and s.global_step % self.checkpoint_every == 0 and s.step < spe:
                self._checkpoint()
            if self.on_step_end is not None:
                self.on_step_end(s.global_step)
        if s.step < spe:  # stopped by max_steps inside an epoch
            self._checkpoint()
            return False
        epoch_loss = float(loss_sum) / max(epoch_n, 1) if epoch_n else math.nan
        s.epoch_losses.append(epoch_loss)
        s.epoch, s.step = s.epoch + 1, 0
        self._checkpoint()
        self._report("epoch", step=spe, loss=epoch_loss, lr=self._lr())
        return True

    def _step(self, tiles_np: NDArray[np.uint8]) -> torch.Tensor:
        """One optimizer and scheduler step on a (B, S, S, 3) uint8 batch; the loss, detached."""
        s, cfg = self.state, self.cfg
        tiles = _to_device(tiles_np, self.di.device)
        gen = generator(cfg.seed, 3, s.epoch, s.step, self.di.rank)
        loss = simclr_step_loss(self.forward, tiles, self.augment, gen, cfg.temperature, self.bf16, self.channels_last)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss.detach()

    def _log(self, window: _LossWindow) -> None:
        """A ``step`` report and history entry; raises :class:`WsiMilError` if the loss is not finite."""
        s, cfg = self.state, self.cfg
        mean_loss, n, seconds = window.take()
        if not math.isfinite(mean_loss):
            raise WsiMilError(f"training diverged at step {s.global_step} (loss {mean_loss}); lower the "
                              "learning rate (--set lr=...) or use --set precision=fp32")
        rate = n * cfg.batch_size * self.di.world / max(seconds, 1e-9)
        lr = self._lr()
        s.history.append({"global_step": s.global_step, "loss": mean_loss, "lr": lr})
        self._report("step", loss=mean_loss, lr=lr, tiles_per_s=rate)

    def _lr(self) -> float:
        return float(self.sched.get_last_lr()[0])

    def _checkpoint(self) -> None:
        self.checkpointer.save(self.model, self.opt, self.sched, self.state, self.state.epoch, self.state.step)

    def _report(self, kind: str, step: int | None = None, loss: float = math.nan, lr: float = math.nan,
                tiles_per_s: float = math.nan) -> None:
        if self.progress is None or not self.di.is_main:
            return
        s = self.state
        self.progress(ProgressEvent(kind, s.epoch, self.cfg.epochs, s.step if step is None else step,
                                    self.plan.steps_per_epoch, s.global_step, self.plan.total, loss, lr, tiles_per_s))


def train_simclr(
    backbone: nn.Module,
    embed_dim: int,
    sources: Sequence[TileSource],
    source_names: Sequence[str],
    cfg: PretrainConfig,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    checkpoint_path: str | Path | None,
    resume: bool = False,
    dist_info: DistInfo | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    checkpoint_every: int | None = None,
    on_step_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``backbone`` with SimCLR on ``sources``; returns the trained model (on the device).

    ``input_size``: view side in pixels; ``mean``/``std``: normalisation of [0, 1] pixels.
    ``checkpoint_path``: where checkpoints go (None: never written). ``resume``: continue from
    it if it exists (:class:`~wsi_mil.ssl.checkpoint.CheckpointError` if it is corrupt or from
    another run). ``on_step_end(global_step)`` is called after every step (tests use it to
    interrupt a run). Raises :class:`WsiMilError` if the tiles cannot fill one batch.
    """
    di = dist_info or DistInfo()
    t_start = time.perf_counter()
    chunks = list_chunks(sources)
    plan = plan_steps(chunks, cfg, di.world)
    model, opt, sched = build_training(backbone, embed_dim, cfg, di, plan)
    checkpointer = Checkpointer(checkpoint_path, di, config_to_dict(cfg), _data_fingerprint(sources, source_names))
    restored = checkpointer.restore(model, opt, sched) if resume else None
    resumed_from = None if restored is None else restored.global_step
    forward = wrap_forward(model, cfg, di)
    augment = SimCLRAugment(cfg.augment, input_size, tuple(mean), tuple(std))  # type: ignore[arg-type]
    loop = _SimCLRLoop(sources, chunks, cfg, di, plan, model, forward, opt, sched, augment, checkpointer,
                       restored or TrainState(), progress, checkpoint_every, on_step_end)
    loop.run()
    s = loop.state
    return TrainResult(model=model, global_step=s.global_step, total_steps=plan.total,
                       steps_per_epoch=plan.steps_per_epoch, epoch_losses=s.epoch_losses,
                       resumed_from=resumed_from,
                       seconds=time.perf_counter() - t_start, tiles_seen=loop.tiles_seen, history=s.history)


def _gather_rng(di: DistInfo) -> Any:
    """RNG states of every process (a list by rank under DDP, one dict otherwise)."""
    state = rng_state()
    if di.world == 1:
        return state
    states: list[Any] = [None] * di.world
    dist.all_gather_object(states, state)
    return states
