"""``wsi-mil pretrain``: SimCLR on a job's own tiles -> an encoder folder for ``extract --weights``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console, device_name
from wsi_mil.config import build_config
from wsi_mil.jobdir import pretrain_checkpoint_path
from wsi_mil.ssl.config import PretrainConfig

if TYPE_CHECKING:
    from wsi_mil.ssl.train import ProgressEvent


def _print_event(ev: ProgressEvent) -> None:
    """One console line per progress event of rank 0."""
    if ev.kind == "start":
        where = f"resuming at step {ev.global_step}" if ev.global_step else "starting"
        console.print(f"pretrain: {where}; {ev.steps} steps per epoch, {ev.total_steps} steps in all")
    elif ev.kind == "step":
        console.print(f"epoch {ev.epoch + 1}/{ev.epochs}  step {ev.step}/{ev.steps}  loss {ev.loss:.4f}  "
                      f"lr {ev.lr:.2e}  {ev.tiles_per_s:,.0f} tiles/s")
    elif ev.kind == "epoch":
        console.print(f"[bold]epoch {ev.epoch}/{ev.epochs} done[/bold]  mean loss {ev.loss:.4f}  (checkpoint saved)")


@app.command()
def pretrain(
    job: Annotated[Path, typer.Argument(help="job folder with patch stores in JOB/patches")],
    out: Annotated[Path, typer.Option("-o", "--out", help="encoder folder to write (for 'extract --weights')")],
    arch: Annotated[Optional[str], typer.Option(help="timm architecture or encoder entry (default resnet18)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="passes over the tiles (default 10)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="tiles per step per process, 2 views each (default 256)")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="NT-Xent temperature (default 0.1)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate (default 1e-3 adamw, 0.3*B/256 lars)")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw (default) or lars")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="stop after this many steps (short runs, demos)")] = None,
    max_tiles: Annotated[Optional[int], typer.Option(help="cap on tiles per epoch per process")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="view side in pixels (default: the architecture's)")] = None,
    device: Annotated[str, typer.Option(help="auto, cuda or cpu", callback=device_name)] = "auto",
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile",
                                                    help="torch.compile the model (long GPU runs)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from JOB/pretrain/NAME/checkpoint.pt")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing encoder folder")] = False,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="also checkpoint every N steps", min=1)] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file (whole study or its 'pretrain' section)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override, e.g. --set augment.blur_p=0")] = None,
    progress: Annotated[bool, typer.Option(help="print loss and tiles/s while training")] = True,
) -> None:
    """Train a timm encoder with SimCLR on the job's own tiles (works under torchrun for DDP)."""
    from wsi_mil.ssl.stage import run_pretrain

    cfg = build_config(
        PretrainConfig, config, set_, section="pretrain", section_optional=True,
        cli=dict(arch=arch, epochs=epochs, batch_size=batch_size, temperature=temperature, lr=lr,
                 optimizer=optimizer, max_steps=max_steps, max_tiles=max_tiles, input_size=input_size,
                 compile=compile),
    )

    ckpt = pretrain_checkpoint_path(job, out)

    def show(ev: ProgressEvent) -> None:
        if ev.kind == "start":
            console.print(f"checkpoints: {ckpt} (after an interruption, run the same command with --resume)")
        _print_event(ev)

    summary = run_pretrain(job, out, cfg, resume=resume, device=device, overwrite=overwrite,
                           progress=show if progress else None, checkpoint_every=checkpoint_every)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return
    for note in summary.notes:
        console.print(f"note: {note}")
    if summary.skipped:
        return
    losses = ", ".join(f"{v:.3f}" for v in summary.epoch_losses[-3:])
    console.print(
        f"[bold]pretrain[/bold]: {summary.arch} (dim {summary.embed_dim}) on {summary.n_tiles} tiles from "
        f"{summary.n_stores} stores; {summary.global_step} steps in {summary.seconds:.1f} s "
        f"({summary.tiles_per_s:,.0f} tiles/s, {summary.world_size} process(es)); last epoch losses: {losses or '-'}; "
        f"encoder: {summary.out_dir}"
    )
