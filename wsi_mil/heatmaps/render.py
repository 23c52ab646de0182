"""All five outputs of one slide from plain arrays (no job folder, no model, no slide file).

:func:`render_slide` writes ``overlay.png``, ``tiles.geojson``, ``overlay.ome.tif``,
``top_tiles.png`` and ``scores.csv`` into a folder and returns what it showed (a JSON-able
dict that the stage stores as ``slide.json`` and the cohort page reads). Everything is sized by
the number of tiles N and by the (fixed) picture sizes, never by the slide's pixel count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wsi_mil.errors import WsiMilError
from wsi_mil.heatmaps.geojson import write_tiles_geojson
from wsi_mil.heatmaps.montage import render_montage_png
from wsi_mil.heatmaps.ometiff import DEFAULT_PIXELS_PER_TILE, overlay_downsample, write_score_ometiff
from wsi_mil.heatmaps.overlay import OverlayOptions, render_overlay_png
from wsi_mil.heatmaps.scoremap import build_score_grid, score_limits
from wsi_mil.heatmaps.table import write_scores_csv

OVERLAY_PNG = "overlay.png"
TILES_GEOJSON = "tiles.geojson"
OVERLAY_TIFF = "overlay.ome.tif"
TOP_TILES_PNG = "top_tiles.png"
SCORES_CSV = "scores.csv"
OUTPUTS = (OVERLAY_PNG, TILES_GEOJSON, OVERLAY_TIFF, TOP_TILES_PNG, SCORES_CSV)


@dataclass
class SlideArrays:
    """Everything needed to draw one slide.

    coords: (N, 2) int64 level-0 top-left corners; tile_scores: (N, C) float32;
    selected: (N, C) int8 (+1 top, -1 bottom, 0); class_names: C names; width0, height0:
    level-0 size (px); mpp: level-0 µm/px; tile_size_level0 / step_level0: tile side and grid
    pitch in level-0 px; thumbnail: (h, w, 3) uint8 of the whole slide or None; tissue_mask:
    (h, w) {0, 1} at ``mask_downsample`` or None; probs: (C,) slide probabilities or None;
    label: the slide's known label or None; read_tiles: ids (k,) -> (k, S, S, 3) uint8 or None.
    """

    slide_id: str
    coords: NDArray[np.int64]
    tile_scores: NDArray[np.float32]
    selected: NDArray[np.int8]
    class_names: Sequence[str]
    width0: int
    height0: int
    mpp: float | None
    tile_size_level0: float
    step_level0: float | None = None
    thumbnail: NDArray[np.uint8] | None = None
    tissue_mask: NDArray[np.uint8] | None = None
    mask_downsample: float = 1.0
    probs: NDArray[np.float64] | None = None
    label: str | None = None
    read_tiles: Callable[[NDArray[np.int64]], NDArray[np.uint8]] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RenderOptions:
    """Picture options (see :class:`wsi_mil.heatmaps.stage.HeatmapConfig`)."""

    pixels_per_tile: int = DEFAULT_PIXELS_PER_TILE
    overlay_width: int = 1200
    montage_tiles: int = 8
    montage_cell: int = 160
    cmap: str = "coolwarm"
    alpha: float = 0.55
    vmin: float | None = None
    vmax: float | None = None


def choose_class(class_names: Sequence[str], class_name: str | None, probs: NDArray[np.float64] | None) -> int:
    """Index of the class to show: the one named, else class 1 of a binary problem, else the
    predicted (highest-probability) class, else class 0."""
    names = list(class_names)
    if class_name is not None:
        if class_name not in names:
            raise WsiMilError(f"--class {class_name!r} is not a class of this run; choose one of {', '.join(names)}")
        return names.index(class_name)
    if len(names) == 2:
        return 1
    if probs is not None and len(probs) == len(names):
        return int(np.argmax(probs))
    return 0


def _check(a: SlideArrays) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int8]]:
    coords = np.asarray(a.coords, dtype=np.int64).reshape(-1, 2)
    n, c = coords.shape[0], len(a.class_names)
    scores = np.asarray(a.tile_scores, dtype=np.float32).reshape(n, -1) if n else np.zeros((0, c), np.float32)
    selected = np.asarray(a.selected).reshape(n, -1).astype(np.int8) if n else np.zeros((0, c), np.int8)
    if scores.shape != (n, c) or selected.shape != (n, c):
        raise WsiMilError(f"{a.slide_id}: tile scores {scores.shape} and selection {selected.shape} do not "
                          f"match {n} tiles and {c} classes")
    if not (a.width0 > 0 and a.height0 > 0):
        raise WsiMilError(f"{a.slide_id}: slide size must be positive, got {a.width0} x {a.height0}")
    return coords, scores, selected


def render_slide(out_dir: str | Path, a: SlideArrays, class_index: int,
                 opts: RenderOptions = RenderOptions()) -> dict[str, Any]:
    """Write the five outputs of one slide into ``out_dir``; returns a summary dict.

    The summary holds the class shown, probabilities, prediction, label, tile count, the score
    range of the colour scale, the overlay TIFF's geometry and notes (e.g. "no tissue").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    coords, scores, selected = _check(a)
    n = coords.shape[0]
    names = list(a.class_names)
    cls = names[class_index]
    s = scores[:, class_index]
    sel = selected[:, class_index]
    grid = build_score_grid(coords, s, a.tile_size_level0, a.step_level0)
    notes = list(a.notes)
    if n == 0:
        notes.insert(0, "no tissue detected: no tile to score")
    message = notes[0] if n == 0 else ""
    lo, hi = score_limits(s)
    vmin = lo if opts.vmin is None else float(opts.vmin)
    vmax = hi if opts.vmax is None else float(opts.vmax)

    probs = None if a.probs is None else np.asarray(a.probs, dtype=np.float64).reshape(-1)
    predicted = names[int(np.argmax(probs))] if probs is not None and probs.size == len(names) else None
    p_cls = float(probs[class_index]) if probs is not None and probs.size == len(names) else None
    bits = [f"class shown: {cls}"]
    if p_cls is not None:
        bits.append(f"P({cls}) = {p_cls:.3f}")
    if predicted is not None:
        bits.append(f"predicted: {predicted}")
    bits.append(f"label: {a.label}" if a.label is not None else "label: unknown")
    bits.append(f"{n} tiles")
    overlay = OverlayOptions(title=a.slide_id, subtitle="  |  ".join(bits), score_label=f"tile score ({cls})",
                             vmin=vmin, vmax=vmax, cmap=opts.cmap, alpha=opts.alpha, width_px=opts.overlay_width,
                             message=message)
    render_overlay_png(out / OVERLAY_PNG, grid, a.width0, a.height0, a.thumbnail, coords, sel, overlay,
                       tissue_mask=a.tissue_mask, mask_downsample=a.mask_downsample)
    extra = {f"score {c}": scores[:, j] for j, c in enumerate(names) if j != class_index}
    write_tiles_geojson(out / TILES_GEOJSON, coords, s, sel, a.tile_size_level0, cls, extra)
    write_score_ometiff(out / OVERLAY_TIFF, grid, a.width0, a.height0, a.mpp, opts.pixels_per_tile,
                        name=f"{a.slide_id} tile scores ({cls})")
    render_montage_png(out / TOP_TILES_PNG, a.read_tiles, s, sel, cls, opts.montage_tiles,
                       opts.montage_cell, message=message)
    write_scores_csv(out / SCORES_CSV, coords, scores, selected, names, a.tile_size_level0)
    d = overlay_downsample(grid, opts.pixels_per_tile)
    return {
        "slide_id": a.slide_id,
        "class_shown": cls,
        "class_index": int(class_index),
        "class_names": names,
        "probabilities": None if probs is None else {c: float(p) for c, p in zip(names, probs)},
        "probability": p_cls,
        "predicted": predicted,
        "label": a.label,
        "n_tiles": int(n),
        "n_selected_top": int((sel > 0).sum()),
        "n_selected_bottom": int((sel < 0).sum()),
        "score_range": [vmin, vmax],
        "level0_size": [int(a.width0), int(a.height0)],
        "mpp": a.mpp,
        "tile_size_level0": float(a.tile_size_level0),
        "grid": {"origin": list(grid.origin), "step": grid.step, "shape": list(grid.shape)},
        "overlay_tiff": {"downsample": d, "pixel_size_um": None if not a.mpp else d * float(a.mpp),
                         "pixels_per_tile": opts.pixels_per_tile, "values": "tile scores, float32, NaN = no tile"},
        "notes": notes,
        "files": list(OUTPUTS),
    }
