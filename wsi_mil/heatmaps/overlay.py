"""overlay.png: tile scores over a slide thumbnail, for a pathologist to read in seconds.

The picture has a header (slide id, class shown, predicted probability, label when known), the
slide thumbnail with the score map laid over it (semi-transparent colour map, tile resolution),
the tissue outline, the tiles the min-max layer selected (top: solid green squares, bottom:
dashed magenta squares), a colour bar with the score scale and a one-line legend.

The layout is fixed in pixels (:func:`overlay_layout`), so the picture's size is known in
advance and a level-0 position maps to a PNG pixel with :meth:`OverlayLayout.to_png`. What
the picture says (texts, colour scale, width) is one :class:`OverlayOptions`.
Rendering uses matplotlib's object API (no pyplot state): safe in worker processes.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wsi_mil.atomic import atomic_path
from wsi_mil.heatmaps.scoremap import ScoreGrid, score_limits

HEADER_PX = 64
FOOTER_PX = 34
MARGIN_PX = 12
PANEL_PX = 120  # colour bar and its labels, right of the map
DPI = 100
TOP_MARK = "#00d000"
BOTTOM_MARK = "#ff00ff"
MAX_MAP_HEIGHT = 1600
MAX_CONTOUR_PX = 1024


@dataclass(frozen=True)
class OverlayLayout:
    """Pixel layout of overlay.png: figure size and the map's box (PNG pixels, origin top-left)."""

    width: int
    height: int
    map_left: int
    map_top: int
    map_width: int
    map_height: int
    width0: int
    height0: int

    def to_png(self, x0: float, y0: float) -> tuple[float, float]:
        """PNG pixel (x, y) of a level-0 position."""
        return (self.map_left + x0 / self.width0 * self.map_width,
                self.map_top + y0 / self.height0 * self.map_height)


def overlay_layout(width0: int, height0: int, width_px: int = 1200) -> OverlayLayout:
    """Layout of an overlay of a ``width0 x height0`` (level-0 px) slide, ``width_px`` wide.

    The map keeps the slide's aspect ratio; a very tall slide is capped at
    ``MAX_MAP_HEIGHT`` px of map (the map then gets narrower, the picture keeps its width).
    """
    width_px = max(400, int(width_px))
    map_w = width_px - 2 * MARGIN_PX - PANEL_PX
    map_h = max(1, round(map_w * height0 / width0))
    if map_h > MAX_MAP_HEIGHT:
        map_h = MAX_MAP_HEIGHT
        map_w = max(1, round(map_h * width0 / height0))
    height = HEADER_PX + map_h + FOOTER_PX
    return OverlayLayout(width_px, height, MARGIN_PX, HEADER_PX, map_w, map_h, int(width0), int(height0))


def _pooled_mask(mask: NDArray[np.bool_], max_px: int) -> tuple[NDArray[np.bool_], int]:
    """Max-pool a (h, w) mask so that its longer side is <= ``max_px``; returns (mask, factor)."""
    k = max(1, math.ceil(max(mask.shape) / max_px))
    if k == 1:
        return mask, 1
    h, w = (mask.shape[0] // k) * k, (mask.shape[1] // k) * k
    if h == 0 or w == 0:
        return mask[::k, ::k], k
    return mask[:h, :w].reshape(h // k, k, w // k, k).max(axis=(1, 3)), k


@dataclass(frozen=True)
class OverlayOptions:
    """What overlay.png says and how it colours the scores.

    title: the header's bold first line (the slide id); subtitle: the header's second part
    (wrapped to at most two lines); score_label: the colour bar's label; vmin/vmax: the colour
    scale's range in score units (None: the grid's finite range); cmap: a matplotlib colour
    map name; alpha: opacity of the score map over the thumbnail (0-1); width_px: width of
    the picture in PNG pixels (at least 400); message: text shown over the map ("" for none,
    e.g. "no tissue detected").
    """

    title: str
    subtitle: str
    score_label: str
    vmin: float | None = None
    vmax: float | None = None
    cmap: str = "coolwarm"
    alpha: float = 0.55
    width_px: int = 1200
    message: str = ""


def render_overlay_png(
    path: str | Path,
    grid: ScoreGrid,
    width0: int,
    height0: int,
    thumbnail: NDArray[np.uint8] | None,
    coords: NDArray[np.int64],
    selected: NDArray[np.int8],
    options: OverlayOptions,
    tissue_mask: NDArray[np.uint8] | None = None,
    mask_downsample: float = 1.0,
) -> OverlayLayout:
    """Render overlay.png (atomic) and return its layout.

    grid: tile-resolution scores; width0, height0: slide level-0 size (px); thumbnail:
    (h, w, 3) uint8 RGB of the whole slide at any downsample, or None (grey background);
    coords: (N, 2) level-0 top-left corners (px) and selected: (N,) (+1 top, -1 bottom, 0),
    for the marks; tissue_mask: (h, w) {0, 1} at ``mask_downsample`` level-0 px per mask px,
    or None (no outline); options: texts, colour scale and width.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lay = overlay_layout(width0, height0, options.width_px)
    fig = Figure(figsize=(lay.width / DPI, lay.height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    W, H = float(width0), float(height0)
    ax = fig.add_axes((lay.map_left / lay.width, 1 - (lay.map_top + lay.map_height) / lay.height,
                       lay.map_width / lay.width, lay.map_height / lay.height))
    ax.set_axis_off()
    scores = _draw_map(ax, grid, W, H, thumbnail, options)
    if tissue_mask is not None and tissue_mask.size and tissue_mask.any():
        _draw_outline(ax, tissue_mask, mask_downsample)
    _draw_marks(ax, coords, selected, grid.tile_size_level0)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    if options.message:
        ax.text(W / 2, H / 2, options.message, ha="center", va="center", fontsize=14, wrap=True,
                bbox=dict(facecolor="white", edgecolor="black", alpha=0.9))
    _draw_frame(fig, lay, scores, options)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())
    return lay


def _draw_map(ax: Any, grid: ScoreGrid, W: float, H: float, thumbnail: NDArray[np.uint8] | None,
              options: OverlayOptions) -> Any:
    """Thumbnail (or grey) and the score map over level-0 extent (0, W) x (0, H); the mappable
    the colour bar reads."""
    from matplotlib.patches import Rectangle

    if thumbnail is not None:
        ax.imshow(thumbnail, extent=(0, W, H, 0), interpolation="bilinear", aspect="auto")
    else:
        ax.add_patch(Rectangle((0, 0), W, H, facecolor="#f0f0f0", edgecolor="none"))
    lo, hi = score_limits(grid.values)
    vmin = lo if options.vmin is None else float(options.vmin)
    vmax = hi if options.vmax is None else float(options.vmax)
    rows, cols = grid.shape
    if rows and cols:
        ox, oy = grid.origin
        return ax.imshow(np.ma.masked_invalid(grid.values),
                         extent=(ox, ox + cols * grid.step, oy + rows * grid.step, oy), cmap=options.cmap,
                         vmin=vmin, vmax=vmax, alpha=options.alpha, interpolation="nearest", aspect="auto")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(norm=Normalize(vmin, vmax), cmap=options.cmap)


def _draw_outline(ax: Any, tissue_mask: NDArray[np.uint8], mask_downsample: float) -> None:
    """The tissue outline: the 0.5 contour of the (pooled) mask, in level-0 px."""
    m, k = _pooled_mask(np.asarray(tissue_mask) > 0, MAX_CONTOUR_PX)
    ds = float(mask_downsample) * k
    xs = (np.arange(m.shape[1]) + 0.5) * ds
    ys = (np.arange(m.shape[0]) + 0.5) * ds
    padded = np.pad(m.astype(np.float32), 1)  # closes outlines that touch the border
    xs = np.concatenate([[xs[0] - ds], xs, [xs[-1] + ds]])
    ys = np.concatenate([[ys[0] - ds], ys, [ys[-1] + ds]])
    ax.contour(xs, ys, padded, levels=[0.5], colors="black", linewidths=0.9)


def _draw_marks(ax: Any, coords: NDArray[np.int64], selected: NDArray[np.int8], size: float) -> None:
    """Squares of side ``size`` (level-0 px) on the selected tiles: top solid green, bottom dashed magenta."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    sel = np.asarray(selected)
    for value, color, style in ((1, TOP_MARK, "solid"), (-1, BOTTOM_MARK, "dashed")):
        idx = np.flatnonzero(sel == value)
        if idx.size:
            rects = [Rectangle((float(coords[i, 0]), float(coords[i, 1])), size, size) for i in idx]
            ax.add_collection(PatchCollection(rects, facecolor="none", edgecolor=color,
                                              linewidths=1.4, linestyles=style))


def _draw_frame(fig: Any, lay: OverlayLayout, scores: Any, options: OverlayOptions) -> None:
    """Colour bar (right of the map), header texts and the one-line legend (footer)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cax = fig.add_axes(((lay.map_left + lay.map_width + 18) / lay.width,
                        1 - (lay.map_top + lay.map_height) / lay.height,
                        16 / lay.width, lay.map_height / lay.height))
    cb = fig.colorbar(scores, cax=cax)
    cb.set_label(options.score_label, fontsize=9)
    cb.ax.tick_params(labelsize=8)
    fig.text(MARGIN_PX / lay.width, 1 - 8 / lay.height, options.title, ha="left", va="top", fontsize=13,
             weight="bold")
    chars = max(40, int((lay.width - 2 * MARGIN_PX) / 6.2))  # ~6 px per character at 9 pt
    lines = textwrap.wrap(options.subtitle, chars)[:2]
    fig.text(MARGIN_PX / lay.width, 1 - 32 / lay.height, "\n".join(lines), ha="left", va="top",
             fontsize=10 if len(lines) == 1 else 9, linespacing=1.15)
    handles = [Patch(facecolor="none", edgecolor=TOP_MARK, linewidth=1.4, label="selected top tile"),
               Patch(facecolor="none", edgecolor=BOTTOM_MARK, linestyle="dashed", linewidth=1.4,
                     label="selected bottom tile"),
               Line2D([0], [0], color="black", linewidth=0.9, label="tissue outline")]
    fig.legend(handles=handles, loc="lower left", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(MARGIN_PX / lay.width, 0.0))
