"""``make_slide``: write one synthetic slide (pyramidal JPEG TIFF) and return its ground truth."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.synth.render import SlideRenderer, SlideSpec
from wsi_mil.synth.shapes import polygon_area, rasterize_polygons
from wsi_mil.synth.site import SiteEffect, SiteRenderer
from wsi_mil.synth.truth import SlideTruth, write_ground_truth
from wsi_mil.synth.writer import WriteStats, pyramid_levels, write_pyramidal_tiff


def make_slide(
    path: str | Path,
    width: int,
    height: int,
    mpp: float = 0.5,
    seed: int = 0,
    positive: bool = True,
    lesion_fraction: float | tuple[float, float] = (0.01, 0.05),
    *,
    slide_id: str | None = None,
    n_lesions: int | None = None,
    tile_size: int = 512,
    jpeg_quality: int = 85,
    level_downsample: int = 2,
    stain_strength: float = 1.0,
    lesion_texture: bool = True,
    ground_truth_dir: str | Path | None = None,
    params: dict | None = None,
    workers: int = 1,
    site: SiteEffect | None = None,
) -> SlideTruth:
    """Write a ``width`` x ``height`` px slide at ``mpp`` to ``path`` (atomically) and return its truth.

    The file is a tiled (``tile_size``) JPEG TIFF with levels reduced by ``level_downsample`` (2: a 0.25 mpp
    slide has a 0.5 mpp level) until the longest side is <= ``tile_size``; OpenSlide reports its mpp.
    Positive slides get ``n_lesions`` (default 1-3) lesions covering ``lesion_fraction`` of the tissue (a
    value, or a range to draw from). ``lesion_texture=False`` renders the same slide with the lesions
    left as normal tissue (for checks). ``stain_strength`` scales the per-slide colour variation.
    When ``ground_truth_dir`` is given the ground-truth files are written there too. ``workers`` > 1 renders
    rows of tiles in that many forked processes (same bytes; each worker holds its own texture sources,
    ~0.3 GB). ``site``: the rendered tissue is stained, blurred and colour-mapped as that site scans it
    (:mod:`wsi_mil.synth.site`; its JPEG quality is the caller's ``jpeg_quality``); the ground truth then
    records the site, its parameters and the slide's own stain variation.
    Memory: one tile plus the texture sources (~100 MB) and the coarse shape grids, at any slide size.
    """
    path = Path(path)
    sid = slide_id or path.name.split(".")[0]
    spec = SlideSpec.draw(width, height, mpp, seed, positive, lesion_fraction, n_lesions=n_lesions,
                          stain_strength=stain_strength)
    levels = pyramid_levels(width, height, level_downsample, min_size=tile_size)
    renderer = SlideRenderer(spec, lesion_texture=lesion_texture)
    render: Callable[[int, int, int, int], np.ndarray | None] = renderer
    background = spec.stain.background
    extra: dict[str, Any] = {}
    desc = (f"wsi_mil synthetic slide {sid}: {width}x{height} px, mpp {mpp}, seed {seed}, "
            f"{'positive' if positive else 'negative'}")
    if site is not None:
        render = SiteRenderer(renderer, site, mpp, width, height)
        background = site.colour(background)
        desc += f", {site.name}"
        extra = {"site": site.name, "site_effect": site.to_json(), "slide_stain": spec.stain.to_json()}
    stats: WriteStats = write_pyramidal_tiff(path, levels, mpp, render, background=background,
                                             tile_size=tile_size, quality=jpeg_quality, description=desc,
                                             workers=workers)
    ds = spec.mask_downsample
    polys = [les.polygon() for les in spec.lesions]
    truth = SlideTruth(
        slide_id=sid, path=path, width=width, height=height, mpp=mpp,
        level_dimensions=[(lv.width, lv.height) for lv in levels],
        level_downsamples=[lv.downsample for lv in levels],
        positive=positive, seed=seed, lesions=polys,
        lesion_area=float(sum(polygon_area(p) for p in polys)), tissue_area=spec.tissue_area,
        mask=rasterize_polygons(polys, width, height, ds),
        tissue_mask=spec.tissue.mask(ds), mask_downsample=ds,
        params={**(params or {}), "tile_size": tile_size, "jpeg_quality": jpeg_quality,
                "level_downsample": level_downsample, "stain_strength": stain_strength,
                "target_lesion_fraction": spec.target_lesion_fraction,
                "tiles_written": stats.tiles, "glass_tiles": stats.glass_tiles,
                "file_bytes": stats.file_bytes, **extra},
    )
    if ground_truth_dir is not None:
        write_ground_truth(ground_truth_dir, truth)
    return truth

