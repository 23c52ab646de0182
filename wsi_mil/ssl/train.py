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

import torch
import torch.distributed as dist
from torch import nn

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
from wsi_mil.ssl.data import BatchReader, TileSource, generator, list_chunks, rank_groups, steps_per_epoch
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


def _to_device(tiles: Any, device: torch.device) -> torch.Tensor:
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
    device = di.device
    t_start = time.perf_counter()
    chunks = list_chunks(sources)
    n_total = sum(e - s for _, s, e in chunks)
    spe = steps_per_epoch(chunks, di.world, cfg.batch_size, cfg.max_tiles)
    if spe < 1:
        per = f" over {di.world} processes (at least {cfg.batch_size} tiles each)" if di.world > 1 else ""
        raise WsiMilError(f"batch size {cfg.batch_size} is larger than the {n_total} tiles available{per}; "
                          "lower --batch-size or tile more slides")
    total = spe * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = min(total, int(round(cfg.warmup_epochs * spe)))

    torch.manual_seed(cfg.seed + di.rank)  # any global-RNG use in the model (dropout, drop path)
    model = build_model(backbone, embed_dim, cfg).to(device)
    bf16 = use_bf16(cfg, device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if di.world > 1 and cfg.sync_batchnorm and device.type == "cuda":  # torch: SyncBatchNorm is GPU-only
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = build_optimizer(model, cfg.optimizer, cfg.peak_lr(), cfg.decay())
    sched = build_scheduler(opt, warmup, total, cfg.min_lr_ratio)

    config = config_to_dict(cfg)
    data_fp = _data_fingerprint(sources, source_names)
    epoch, step, global_step = 0, 0, 0
    epoch_losses: list[float] = []
    history: list[dict[str, float]] = []
    resumed_from = None
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        ckpt = load_checkpoint(checkpoint_path)
        check_compatible(checkpoint_path, ckpt, config, data_fp, di.world)
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{checkpoint_path}: checkpoint does not fit this model ({str(exc).splitlines()[0][:160]}); "
                                  "delete it or run without --resume") from exc
        epoch, step, global_step = int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt["global_step"])
        epoch_losses = [float(v) for v in ckpt.get("epoch_losses", [])]
        history = list(ckpt.get("history", []))
        set_rng_state(ckpt["rng"][di.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        resumed_from = global_step

    ddp_model: nn.Module = model
    if di.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # the plain ``model`` keeps the state-dict names; only the forward is compiled
        ddp_model = torch.compile(ddp_model)

    augment = SimCLRAugment(cfg.augment, input_size, tuple(mean), tuple(std))  # type: ignore[arg-type]

    def report(ev: ProgressEvent) -> None:
        if progress is not None and di.is_main:
            progress(ev)

    def checkpoint(next_epoch: int, next_step: int) -> None:
        if checkpoint_path is None:
            return
        states = _gather_rng(di)
        if di.is_main:
            save_checkpoint(checkpoint_path, {
                "config": config, "data": data_fp, "world_size": di.world,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": states, "epoch": next_epoch, "step": next_step, "global_step": global_step,
                "epoch_losses": epoch_losses, "history": history,
            })
        if di.world > 1:
            dist.barrier()

    report(ProgressEvent("start", epoch, cfg.epochs, step, spe, global_step, total))
    tiles_seen = 0
    model.train()
    while global_step < total and epoch < cfg.epochs:
        groups = rank_groups(chunks, cfg.seed, epoch, di.rank, di.world, cfg.shuffle_chunks)
        reader = BatchReader(sources, groups, cfg.batch_size, threads=cfg.read_threads)
        last_step = min(spe, step + (total - global_step))
        loss_sum = torch.zeros((), device=device)
        window_sum = torch.zeros((), device=device)
        window_n, epoch_n = 0, 0
        t_window = time.perf_counter()
        for tiles_np in reader.iter_batches(step, last_step):
            tiles = _to_device(tiles_np, device)
            gen = generator(cfg.seed, 3, epoch, step, di.rank)
            loss = simclr_step_loss(ddp_model, tiles, augment, gen, cfg.temperature, bf16, channels_last)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            detached = loss.detach()
            loss_sum += detached
            window_sum += detached
            window_n += 1
            epoch_n += 1
            step += 1
            global_step += 1
            tiles_seen += cfg.batch_size * di.world
            if global_step % cfg.log_every == 0 or step == last_step:
                mean_loss = float(window_sum) / window_n
                if not math.isfinite(mean_loss):
                    raise WsiMilError(f"training diverged at step {global_step} (loss {mean_loss}); lower the "
                                      "learning rate (--set lr=...) or use --set precision=fp32")
                now = time.perf_counter()
                rate = window_n * cfg.batch_size * di.world / max(now - t_window, 1e-9)
                history.append({"global_step": global_step, "loss": mean_loss, "lr": sched.get_last_lr()[0]})
                report(ProgressEvent("step", epoch, cfg.epochs, step, spe, global_step, total, mean_loss,
                                     sched.get_last_lr()[0], rate))
                window_sum.zero_()
                window_n = 0
                t_window = now
            if checkpoint_every and global_step % checkpoint_every == 0 and step < spe:
                checkpoint(epoch, step)
            if on_step_end is not None:
                on_step_end(global_step)
        if step >= spe:
            epoch_loss = float(loss_sum) / max(epoch_n, 1) if epoch_n else math.nan
            epoch_losses.append(epoch_loss)
            epoch, step = epoch + 1, 0
            checkpoint(epoch, step)
            report(ProgressEvent("epoch", epoch, cfg.epochs, spe, spe, global_step, total, epoch_loss,
                                 sched.get_last_lr()[0]))
        else:  # stopped by max_steps inside an epoch
            checkpoint(epoch, step)
            break
    report(ProgressEvent("done", epoch, cfg.epochs, step, spe, global_step, total))
    return TrainResult(model=model, global_step=global_step, total_steps=total, steps_per_epoch=spe,
                       epoch_losses=epoch_losses, resumed_from=resumed_from,
                       seconds=time.perf_counter() - t_start, tiles_seen=tiles_seen, history=history)


def _gather_rng(di: DistInfo) -> Any:
    """RNG states of every process (a list by rank under DDP, one dict otherwise)."""
    state = rng_state()
    if di.world == 1:
        return state
    states: list[Any] = [None] * di.world
    dist.all_gather_object(states, state)
    return states
