"""overlay.png: tile scores over a slide thumbnail, for a pathologist to read in seconds.

The picture has a header (slide id, class shown, predicted probability, label when known), the
slide thumbnail with the score map laid over it (semi-transparent colour map, tile resolution),
the tissue outline, the tiles the min-max layer selected (top: solid green squares, bottom:
dashed magenta squares), a colour bar with the score scale and a one-line legend.

The layout is fixed in pixels (:func:`overlay_layout`), so the picture's size is known in
advance and a level-0 position maps to a PNG pixel with :meth:`OverlayLayout.to_png`.
Rendering uses matplotlib's object API (no pyplot state): safe in worker processes.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_mil.atomic import atomic_path
from wsi_mil.heatmaps.scoremap import ScoreGrid

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


def _pooled_mask(mask: np.ndarray, max_px: int) -> tuple[np.ndarray, int]:
    """Max-pool a (h, w) mask so that its longer side is <= ``max_px``; returns (mask, factor)."""
    k = max(1, math.ceil(max(mask.shape) / max_px))
    if k == 1:
        return mask, 1
    h, w = (mask.shape[0] // k) * k, (mask.shape[1] // k) * k
    if h == 0 or w == 0:
        return mask[::k, ::k], k
    return mask[:h, :w].reshape(h // k, k, w // k, k).max(axis=(1, 3)), k


def render_overlay_png(
    path: str | Path,
    grid: ScoreGrid,
    width0: int,
    height0: int,
    thumbnail: np.ndarray | None,
    coords: np.ndarray,
    selected: np.ndarray,
    title: str,
    subtitle: str,
    score_label: str,
    tissue_mask: np.ndarray | None = None,
    mask_downsample: float = 1.0,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "coolwarm",
    alpha: float = 0.55,
    width_px: int = 1200,
    message: str = "",
) -> OverlayLayout:
    """Render overlay.png (atomic) and return its layout.

    grid: tile-resolution scores; width0, height0: slide level-0 size (px); thumbnail:
    (h, w, 3) uint8 RGB of the whole slide at any downsample, or None (grey background);
    coords: (N, 2) level-0 top-left corners and selected: (N,) int (+1 top, -1 bottom), for
    the marks; tissue_mask: (h, w) {0, 1} at ``mask_downsample`` level-0 px per mask px;
    vmin/vmax: colour scale (default: the grid's finite range); message: shown over the map
    (e.g. "no tissue detected").
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    from wsi_mil.heatmaps.scoremap import score_limits

    lay = overlay_layout(width0, height0, width_px)
    fig = Figure(figsize=(lay.width / DPI, lay.height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    W, H = float(width0), float(height0)
    ax = fig.add_axes((lay.map_left / lay.width, 1 - (lay.map_top + lay.map_height) / lay.height,
                       lay.map_width / lay.width, lay.map_height / lay.height))
    ax.set_axis_off()
    if thumbnail is not None:
        ax.imshow(thumbnail, extent=(0, W, H, 0), interpolation="bilinear", aspect="auto")
    else:
        ax.add_patch(Rectangle((0, 0), W, H, facecolor="#f0f0f0", edgecolor="none"))
    lo, hi = score_limits(grid.values)
    vmin = lo if vmin is None else float(vmin)
    vmax = hi if vmax is None else float(vmax)
    rows, cols = grid.shape
    if rows and cols:
        ox, oy = grid.origin
        im = ax.imshow(np.ma.masked_invalid(grid.values), extent=(ox, ox + cols * grid.step, oy + rows * grid.step, oy),
                       cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, interpolation="nearest", aspect="auto")
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        im = ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
    if tissue_mask is not None and tissue_mask.size and tissue_mask.any():
        m, k = _pooled_mask(np.asarray(tissue_mask) > 0, MAX_CONTOUR_PX)
        ds = float(mask_downsample) * k
        xs = (np.arange(m.shape[1]) + 0.5) * ds
        ys = (np.arange(m.shape[0]) + 0.5) * ds
        padded = np.pad(m.astype(np.float32), 1)  # closes outlines that touch the border
        xs = np.concatenate([[xs[0] - ds], xs, [xs[-1] + ds]])
        ys = np.concatenate([[ys[0] - ds], ys, [ys[-1] + ds]])
        ax.contour(xs, ys, padded, levels=[0.5], colors="black", linewidths=0.9)
    sel = np.asarray(selected)
    size = grid.tile_size_level0
    for value, color, style in ((1, TOP_MARK, "solid"), (-1, BOTTOM_MARK, "dashed")):
        idx = np.flatnonzero(sel == value)
        if idx.size:
            rects = [Rectangle((float(coords[i, 0]), float(coords[i, 1])), size, size) for i in idx]
            ax.add_collection(PatchCollection(rects, facecolor="none", edgecolor=color,
                                              linewidths=1.4, linestyles=style))
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    if message:
        ax.text(W / 2, H / 2, message, ha="center", va="center", fontsize=14, wrap=True,
                bbox=dict(facecolor="white", edgecolor="black", alpha=0.9))
    cax = fig.add_axes(((lay.map_left + lay.map_width + 18) / lay.width,
                        1 - (lay.map_top + lay.map_height) / lay.height,
                        16 / lay.width, lay.map_height / lay.height))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(score_label, fontsize=9)
    cb.ax.tick_params(labelsize=8)
    fig.text(MARGIN_PX / lay.width, 1 - 8 / lay.height, title, ha="left", va="top", fontsize=13, weight="bold")
    chars = max(40, int((lay.width - 2 * MARGIN_PX) / 6.2))  # ~6 px per character at 9 pt
    lines = textwrap.wrap(subtitle, chars)[:2]
    fig.text(MARGIN_PX / lay.width, 1 - 32 / lay.height, "\n".join(lines), ha="left", va="top",
             fontsize=10 if len(lines) == 1 else 9, linespacing=1.15)
    handles = [Patch(facecolor="none", edgecolor=TOP_MARK, linewidth=1.4, label="selected top tile"),
               Patch(facecolor="none", edgecolor=BOTTOM_MARK, linestyle="dashed", linewidth=1.4,
                     label="selected bottom tile"),
               Line2D([0], [0], color="black", linewidth=0.9, label="tissue outline")]
    fig.legend(handles=handles, loc="lower left", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(MARGIN_PX / lay.width, 0.0))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())
    return lay
