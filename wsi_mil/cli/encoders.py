"""``wsi-mil encoders``: the ready-made encoders, their shapes, licences and whether their weights are here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console


@app.command()
def encoders(
    weights_manifest: Annotated[Optional[Path], typer.Option(
        help="YAML weights manifest (entry: {path, sha256}); its pinned files count as found")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object per entry")] = False,
) -> None:
    """List the ready-made encoders: width, parameters, input size, licence, weights on this machine."""
    from wsi_mil.encoders.catalog import describe_entries, format_count
    from wsi_mil.encoders.manifest import load_manifest

    manifest = load_manifest(weights_manifest) if weights_manifest is not None else None
    rows = describe_entries(manifest)
    if as_json:
        for r in rows:
            typer.echo(json.dumps({"name": r.name, "width": r.width, "params": r.params,
                                   "input_size": list(r.input_size), "licence": r.licence,
                                   "weights": r.weights, "source": r.source}))
        return
    console.print(f"{'encoder':15s} {'width':>5s} {'params':>6s} {'input':7s} {'licence':40s} {'source':48s} weights here",
                  markup=False)
    for r in rows:
        console.print(f"{r.name:15s} {r.width:5d} {format_count(r.params):>6s} {r.input_size[0]}x{r.input_size[1]:<3d} "
                      f"{r.licence:40s} {r.source:48s} {r.weights or 'no'}", markup=False, soft_wrap=True)
    console.print("weights are never downloaded: 'wsi-mil extract --encoder NAME --weights hub' reads the local "
                  "Hugging Face cache, --weights DIR a folder from 'huggingface-cli download ORG/NAME --local-dir DIR'")
