"""``wsi-mil extract``: patch stores -> HDF5 feature files with a timm encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console, exit_with, print_batch_summary
from wsi_mil.config import build_config


@app.command()
def extract(
    job: Annotated[Optional[Path], typer.Argument(help="job folder holding patches/ (from 'wsi-mil tile'); "
                                                  "not needed with --list-encoders")] = None,
    encoder: Annotated[Optional[str], typer.Option(
        "--encoder", "-e",
        help="timm architecture or ready-made entry (resnet50_trunc, vit_b16_in21k, uni, virchow2, "
             "h_optimus_0, ...: 'wsi-mil encoders' lists them); optional with an encoder folder")] = None,
    weights: Annotated[Optional[str], typer.Option(
        "--weights", "-w",
        help="weights file (.safetensors/.pth/.bin), encoder folder from 'wsi-mil pretrain', "
             "publisher folder (huggingface-cli download ORG/NAME --local-dir DIR), 'hub' (the entry's "
             "repository in the local Hugging Face cache), 'timm' (local cache only) or 'random[:SEED]' "
             "(tests/baselines); see 'wsi-mil encoders'")] = None,
    weights_manifest: Annotated[Optional[Path], typer.Option(
        help="YAML entry -> {path, sha256}: pins the weights (used when --weights is not given; a different "
             "sha256 is refused)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda (all GPUs), cuda:N[,cuda:M] [default auto]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="tiles per forward pass [default 256]", min=1)] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the encoder")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32")] = None,
    features_dtype: Annotated[Optional[str], typer.Option(help="float32 (default) or float16")] = None,
    num_workers: Annotated[Optional[int], typer.Option(help="loader processes per device [default: cores-1 over GPUs]",
                                                       min=0)] = None,
    stain_norm: Annotated[Optional[str], typer.Option(
        help="stain normalisation of every tile before the encoder: none, macenko or reinhard (fitted once per "
             "slide; the encoder id gets -macenko/-reinhard) [default none]")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="existing Dask scheduler tcp://HOST:PORT (GPU workers)")] = None,
    slide: Annotated[Optional[list[str]], typer.Option(help="only these slide ids (repeatable)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file (whole study or its 'extract' section)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override, e.g. --set batch_size=512")] = None,
    overwrite: Annotated[bool, typer.Option(help="redo slides whose feature file is already valid")] = False,
    list_encoders: Annotated[bool, typer.Option("--list-encoders", help="print the ready-made encoders and exit")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Embed every tile of every patch store: one features/{encoder_id}/{slide_id}.h5 per slide."""
    from wsi_mil.extract import ExtractConfig, run_extract

    if list_encoders:
        from wsi_mil.encoders import list_entries

        for e in list_entries():
            console.print(f"{e.name:16s} {e.timm_arch:24s} {e.description}")
        return
    if job is None:
        raise typer.BadParameter("give the job folder (JOB), or --list-encoders to list the encoders", param_hint="JOB")
    cfg = build_config(
        ExtractConfig, config, set_, section="extract", section_optional=True,
        cli=dict(device=device, batch_size=batch_size, compile=compile, precision=precision,
                 features_dtype=features_dtype, num_workers=num_workers, stain_norm=stain_norm),
    )
    report = run_extract(job, encoder, weights, cfg, scheduler=scheduler, overwrite=overwrite,
                              slides=slide, progress=progress, manifest=weights_manifest)
    console.print(f"encoder id: {report.encoder_id}; features: {report.features_dir}")
    exit_with(print_batch_summary("extract", report.statuses, report.record_path))
