"""The ``heatmap`` config section (``wsi-mil heatmap``): what is drawn and how."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from wsi_mil.config import StrictModel
from wsi_mil.errors import ConfigError

if TYPE_CHECKING:
    from wsi_mil.heatmaps.render import RenderOptions


class HeatmapConfig(StrictModel):
    """Options of ``wsi-mil heatmap`` (YAML section ``heatmap``)."""

    class_name: str | None = Field(None, description="class whose scores are shown; default: class 1 of a "
                                   "binary run, else each slide's predicted class")
    pixels_per_tile: int = Field(4, ge=1, le=64, description="overlay.ome.tif pixels per tile step")
    overlay_width: int = Field(1200, ge=400, le=8000, description="overlay.png width in pixels")
    thumbnail_px: int = Field(2048, ge=256, le=8192, description="longer side of the slide thumbnail read")
    montage_tiles: int = Field(8, ge=1, le=64, description="tiles per row of top_tiles.png")
    montage_cell: int = Field(160, ge=32, le=512, description="tile size in top_tiles.png, pixels")
    cmap: str = Field("coolwarm", description="matplotlib colour map of the scores")
    alpha: float = Field(0.55, gt=0.0, le=1.0, description="opacity of the score layer in overlay.png")
    vmin: float | None = Field(None, description="score at the bottom of the colour scale (default: slide min)")
    vmax: float | None = Field(None, description="score at the top of the colour scale (default: slide max)")
    embed_images: bool = Field(False, description="inline the overlays in index.html (single-file page)")

    def render_options(self) -> RenderOptions:
        """The drawing options of :func:`~wsi_mil.heatmaps.render.render_slide`."""
        from wsi_mil.heatmaps.render import RenderOptions  # keeps this config module light

        return RenderOptions(self.pixels_per_tile, self.overlay_width, self.montage_tiles, self.montage_cell,
                             self.cmap, self.alpha, self.vmin, self.vmax)


def check_cmap(name: str) -> None:
    """Refuse an unknown matplotlib colour map before any slide is drawn."""
    import matplotlib

    if name not in matplotlib.colormaps:
        raise ConfigError(f"heatmap.cmap: unknown colour map {name!r}; use a matplotlib name such as "
                          "coolwarm, viridis, inferno, turbo")
