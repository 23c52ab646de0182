"""The pretrain stage: a job's patch stores -> a SimCLR-trained encoder folder.

``run_pretrain(job, out_dir, cfg)`` checks everything that can be wrong before any training (no
tiles, a batch larger than the tiles, an unknown architecture, an input size the architecture
refuses, a corrupt checkpoint, an output folder in the way) so that bad input never overwrites
anything. The encoder folder (``encoder.json`` + ``encoder.safetensors``, see
:func:`wsi_mil.encoders.save_encoder_dir`) is written atomically by rank 0 at the end; the
training checkpoint lives in ``JOB/pretrain/{name}/checkpoint.pt`` (``name``: the output
folder's name), written after every epoch, so re-running with ``--resume`` continues a killed run.
Re-running a finished command with the same config does nothing (the folder is kept).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from wsi_mil.config import config_to_dict
from wsi_mil.encoders import create_encoder, is_encoder_dir, read_encoder_json, save_encoder_dir
from wsi_mil.encoders.dataconfig import DataConfig
from wsi_mil.errors import EncoderError, StoreError, WsiMilError
from wsi_mil.jobdir import patches_dir, pretrain_checkpoint_path
from wsi_mil.outputs import ENCODER_FOLDER, check_replaceable, check_writable
from wsi_mil.ssl.config import PretrainConfig
from wsi_mil.ssl.train import DistInfo, ProgressEvent, init_distributed, train_simclr
from wsi_mil.stores.patches import is_complete_patch_store, list_patch_stores, open_patch_store


@dataclass
class PretrainSummary:
    """What ``run_pretrain`` did. ``skipped``: the folder already held this config's encoder."""

    out_dir: Path
    arch: str
    embed_dim: int
    n_stores: int
    n_tiles: int
    checkpoint: Path
    skipped: bool = False
    global_step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None
    seconds: float = 0.0
    tiles_per_s: float = 0.0
    world_size: int = 1
    notes: list[str] = field(default_factory=list)


def open_job_stores(job: str | Path) -> tuple[list[Any], list[Path], list[str]]:
    """The complete patch stores of ``job`` with at least one tile.

    Returns (stores, paths, notes). Raises :class:`StoreError` when the job has no tiles at all.
    """

    job = Path(job)
    if not job.is_dir():
        raise StoreError(f"{job}: job folder not found; run 'wsi-mil tile SLIDES -o {job}' first")
    paths = list_patch_stores(job)
    notes = []
    complete = [p for p in paths if is_complete_patch_store(p)]
    if len(complete) < len(paths):
        notes.append(f"{len(paths) - len(complete)} incomplete patch store(s) ignored; re-run 'wsi-mil tile' to finish them")
    stores, used = [], []
    for p in complete:
        store = open_patch_store(p)
        if store.n_tiles > 0:
            stores.append(store)
            used.append(p)
    if not stores:
        raise StoreError(f"{job}: no tiles to train on ({len(paths)} patch store(s) in {patches_dir(job)}, "
                         f"{len(complete)} complete, none with tiles); run 'wsi-mil tile' on slides with tissue first")
    return stores, used, notes


def prepare_backbone(cfg: PretrainConfig) -> tuple[torch.nn.Module, int, DataConfig, int]:
    """Build the random-init backbone; returns (model, embed_dim, data_config, view size).

    Raises :class:`EncoderError` for an unknown architecture or one that refuses the view size.
    """

    enc = create_encoder(cfg.arch, f"random:{cfg.seed}")
    h, w = enc.input_size
    size = int(cfg.input_size or h)
    if cfg.input_size is None and h != w:
        raise EncoderError(f"architecture '{cfg.arch}' expects {h}x{w} inputs; SimCLR views are square: "
                           "set --set input_size=N")
    model = enc.model
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, 3, size, size))
    except Exception as exc:
        msg = " ".join(str(exc).split())[:160]
        raise EncoderError(f"architecture '{cfg.arch}' cannot take {size}x{size} views ({type(exc).__name__}: {msg}); "
                           f"use its own input size {h} (drop input_size) or another architecture") from exc
    if out.ndim != 2 or out.shape[1] != enc.embed_dim:
        raise EncoderError(f"architecture '{cfg.arch}' gives features of shape {tuple(out.shape)}, "
                           f"expected (B, {enc.embed_dim}); it cannot be used as an encoder")
    model.train()
    return model, enc.embed_dim, enc.data_config.with_side(size), size


def _check_output(out_dir: Path, cfg: PretrainConfig, store_paths: list[Path], overwrite: bool) -> bool:
    """True if ``out_dir`` already holds the encoder this config would write (nothing to do)."""

    if not out_dir.exists():
        return False
    if not is_encoder_dir(out_dir):
        check_replaceable(out_dir, ENCODER_FOLDER)  # an empty folder passes; a job, a file or a foreign folder not
        return False
    meta = read_encoder_json(out_dir)
    training = meta.get("training") or {}
    same = training.get("config") == config_to_dict(cfg) and meta.get("patch_stores") == [str(p) for p in store_paths]
    if same and not overwrite:
        return True
    if not overwrite:
        raise WsiMilError(f"{out_dir}: an encoder trained with another config or other tiles is already there; "
                          "pass --overwrite to replace it or choose another -o path")
    return False


def run_pretrain(
    job: str | Path,
    out_dir: str | Path,
    cfg: PretrainConfig,
    resume: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    progress: Callable[[ProgressEvent], None] | None = None,
    checkpoint_every: int | None = None,
    dist_info: DistInfo | None = None,
) -> PretrainSummary:
    """Train a SimCLR encoder on the tiles of ``job`` and write it to ``out_dir``.

    Works in one process or under ``torchrun`` (one process per GPU; DDP initialised from the
    environment). ``device``: ``auto``, ``cuda`` or ``cpu``. See the module docstring.
    """
    job, out_dir = Path(job), Path(out_dir)
    di = dist_info or init_distributed(device)
    stores, store_paths, notes = open_job_stores(job)
    n_tiles = sum(s.n_tiles for s in stores)
    ckpt = pretrain_checkpoint_path(job, out_dir)
    if _check_output(out_dir, cfg, store_paths, overwrite):

        meta = read_encoder_json(out_dir)
        return PretrainSummary(out_dir, cfg.arch, int(meta["embed_dim"]), len(stores), n_tiles, ckpt, skipped=True,
                               notes=notes + [f"{out_dir} already holds this encoder; nothing to do"])
    check_writable(out_dir)  # before hours of training, not after them
    check_writable(ckpt)
    if cfg.batch_size > n_tiles:
        raise WsiMilError(f"--batch-size {cfg.batch_size} is larger than the {n_tiles} tiles in {patches_dir(job)}; "
                          "lower --batch-size or tile more slides")
    backbone, embed_dim, data_config, size = prepare_backbone(cfg)
    if ckpt.is_file() and not resume:
        notes.append(f"starting over: {ckpt} is replaced after the first epoch (use --resume to continue it)")
    elif resume and not ckpt.is_file():
        notes.append(f"--resume: no checkpoint at {ckpt}; starting from scratch")

    result = train_simclr(
        backbone, embed_dim, stores, [str(p) for p in store_paths], cfg, size,
        data_config.mean, data_config.std, ckpt, resume=resume, dist_info=di, progress=progress,
        checkpoint_every=checkpoint_every,
    )
    rate = result.tiles_seen / result.seconds if result.seconds > 0 else 0.0
    if di.is_main:

        training = {
            "method": "simclr",
            "config": config_to_dict(cfg),
            "world_size": di.world,
            "global_step": result.global_step,
            "total_steps": result.total_steps,
            "steps_per_epoch": result.steps_per_epoch,
            "epoch_losses": result.epoch_losses,
            "n_tiles": n_tiles,
            "device": str(di.device),
        }
        save_encoder_dir(out_dir, result.model.backbone, cfg.arch, data_config, training, store_paths)
    if di.world > 1:

        dist.barrier()
    return PretrainSummary(
        out_dir=out_dir, arch=cfg.arch, embed_dim=embed_dim, n_stores=len(stores), n_tiles=n_tiles,
        checkpoint=ckpt, global_step=result.global_step, total_steps=result.total_steps,
        steps_per_epoch=result.steps_per_epoch, epoch_losses=result.epoch_losses,
        resumed_from=result.resumed_from, seconds=result.seconds, tiles_per_s=rate, world_size=di.world,
        notes=notes,
    )
