"""``wsi-mil view``: a local web viewer of a job's slides with a heatmap run's tile scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import console
from wsi_mil.errors import ConfigError


@app.command()
def view(
    job: Annotated[Path, typer.Argument(help="job folder with patches/ (and heatmaps/{run}/ from 'wsi-mil heatmap')")],
    run: Annotated[Optional[str], typer.Option(help="heatmap run whose scores are shown [default: the job's only run]")] = None,
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 8765,
    host: Annotated[str, typer.Option(help="address to listen on; anything but 127.0.0.1 exposes the slides "
                                      "to other machines")] = "127.0.0.1",
    cache_mb: Annotated[float, typer.Option(help="memory for encoded tiles, MiB")] = 128.0,
) -> None:
    """Serve the job's slides (Deep Zoom) with the run's tile scores as a second layer, in the browser."""
    from wsi_mil.viewer.app import create_app
    from wsi_mil.viewer.server import serve

    if not cache_mb > 0:
        raise ConfigError(f"--cache-mb {cache_mb:g}: give a positive number of MiB")
    application = create_app(job, run, cache_mb=cache_mb)
    state = application.state.viewer
    shown = f"run {state.run}" if state.run else "no scores (several or no heatmap runs: pass --run)"
    console.print(f"viewer of {job} ({len(state.slides)} slides, {shown}): http://{host}:{port}/  (Ctrl-C stops)",
                  markup=False)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"warning: listening on {host}: other machines can reach the slides", markup=False)
    serve(application, host=host, port=port)
