"""``wsi-mil synth``: write a synthetic labelled cohort with tile-level ground truth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from wsi_mil.cli._app import app
from wsi_mil.cli.common import finite_positive
from wsi_mil.errors import ConfigError


def _multiple_of_16(value: int) -> int:
    if value % 16:
        raise typer.BadParameter(f"{value} is not a multiple of 16 (TIFF tiles are), e.g. {max(16, value // 16 * 16)}")
    return value


def _prevalences(given: list[str] | None, extra: list[str]) -> list[float] | None:
    """The per-site positive shares of ``--site-prevalence P1 P2 ...`` (or ``P1,P2``, or the option repeated):
    the option's value(s) and the bare values that follow it."""
    if not given:
        if extra:
            raise ConfigError(f"unexpected argument(s) {' '.join(extra)}: wsi-mil synth takes only options "
                              "(per-site positive shares go after --site-prevalence)")
        return None
    values = []
    for item in [*given, *extra]:
        for part in item.split(","):
            try:
                v = float(part)
            except ValueError:
                raise ConfigError(f"site_prevalence: {part!r} is not a number; give one share (0-1) per site, "
                                  "e.g. --site-prevalence 0.3 0.5 0.8") from None
            if not math.isfinite(v):
                raise ConfigError(f"site_prevalence: every share must be within 0-1, got {part}")
            values.append(v)
    return values


@app.command("synth", context_settings={"allow_extra_args": True})
def synth(
    ctx: typer.Context,
    out: Path = typer.Option(..., "-o", "--out", help="Cohort folder to write (created if missing)."),
    slides: int = typer.Option(..., "--slides", "-n", help="Number of slides (>= 1)."),
    positive_fraction: float = typer.Option(0.5, "--positive-fraction", help="Share of positive slides (0-1)."),
    size: tuple[int, int] = typer.Option((4096, 4096), "--size", help="Level-0 width and height in pixels."),
    mpp: float = typer.Option(0.5, "--mpp", help="Microns per pixel at level 0 (0.25 = '40x', 0.5 = '20x').",
                              callback=finite_positive),
    lesion_fraction: tuple[float, float] = typer.Option(
        (0.01, 0.05), "--lesion-fraction", help="Range of the lesion share of the tissue on positive slides."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same cohort.", min=0),
    tile_size: int = typer.Option(512, "--tile-size", help="TIFF tile edge in pixels (multiple of 16).", min=16,
                                  callback=_multiple_of_16),
    jpeg_quality: int = typer.Option(85, "--jpeg-quality", help="JPEG quality of the slide tiles (1-100).", min=1, max=100),
    overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate slides that already exist."),
    workers: int = typer.Option(
        0, "--workers", help="Local Dask processes that generate slides in parallel (0: in this process, no Dask).",
        min=0),
    scheduler: str = typer.Option(None, "--scheduler", help="Existing Dask scheduler (tcp://HOST:PORT)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Print each slide as it is written."),
    sites: int = typer.Option(1, "--sites", help="Simulated hospitals, each with its own stain, scanner colour "
                              "response, blur and JPEG quality (1: one site, no site effects).", min=1),
    site_prevalence: Optional[list[str]] = typer.Option(
        None, "--site-prevalence", metavar="P1 P2 ...",
        help="Positive share of each site (one per site; default: --positive-fraction at every site)."),
    stain_shift: float = typer.Option(1.0, "--stain-shift", help="How far the sites differ in stain and "
                                      "scanning (0: only in prevalence, 1: default, 2: strong)."),
) -> None:
    """Write N pyramidal JPEG TIFF slides textured from real H&E tissue, labels.csv and lesion ground truth.

    Positive slides carry a few small lesions (denser, darker, larger nuclei); their polygons (level-0 px)
    go to ground_truth/{slide_id}.geojson and a mask to ground_truth/{slide_id}_mask.png. Re-running the
    same command skips slides that are already complete. With --sites N the slides come from N simulated
    hospitals (labels.csv gains a site column; cohort.json records each site's stain and scanner).
    """
    from wsi_mil.synth import make_cohort, read_cohort_manifest

    folder = make_cohort(
        out, slides, positive_fraction=positive_fraction, size=size, mpp=mpp,
        lesion_fraction=lesion_fraction, seed=seed, tile_size=tile_size, jpeg_quality=jpeg_quality,
        overwrite=overwrite, progress=progress, workers=workers, scheduler=scheduler,
        sites=sites, site_prevalence=_prevalences(site_prevalence, list(ctx.args)), stain_shift=stain_shift,
    )
    manifest = read_cohort_manifest(folder)
    n_pos = sum(1 for s in manifest["slides"] if s["label"] == 1)
    print(f"wrote {len(manifest['slides'])} slides ({n_pos} positive) to {folder}")
    for site in manifest.get("sites", []):
        print(f"  {site['site']}: {site['n_slides']} slides ({site['n_positive']} positive), "
              f"H x{site['stain_amounts']['hematoxylin']:.2f}, E x{site['stain_amounts']['eosin']:.2f}, "
              f"blur {site['blur_sigma_um']:.2f} um, JPEG {site['jpeg_quality']}")
    print(f"labels: {folder / 'labels.csv'}  ground truth: {folder / 'ground_truth'}")
