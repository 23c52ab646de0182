"""Why a slide gave no tiles, and what to do about it (a warning, not a failure).

Looks at what the tile stage already has: the low-resolution image the tissue mask was made
from, the mask, the slide's size and the tile's size in µm.
"""

from __future__ import annotations

import numpy as np

from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.tissue import saturation

DARK_BACKGROUND = 0.35  # median brightness (0-1) below which the slide is taken for fluorescence / dark field


def explain_no_tiles(thumb: np.ndarray, mask: np.ndarray, mask_mpp: float, slide_um: tuple[float, float],
                     cfg: TilingConfig, mpp_text: str) -> str:
    """One line: the likely reason a slide gave 0 tiles and the option that changes it.

    ``thumb`` (h, w, 3) uint8 and ``mask`` (h, w) bool at ``mask_mpp`` µm/px; ``slide_um`` the
    level-0 (width, height) in µm; ``mpp_text`` how the slide's scale was found (for the message).
    """
    tile_um = cfg.tile_size * cfg.target_mpp
    if min(slide_um) < tile_um:
        return (f"0 tiles: the slide ({slide_um[0]:.0f} x {slide_um[1]:.0f} µm at {mpp_text}) is smaller than one "
                f"tile ({tile_um:.0f} µm); lower --tile-size or --target-mpp, or check the slide's mpp")
    if thumb.size == 0:
        return "0 tiles: the slide image is empty"
    gray = thumb.astype(np.float32).mean(axis=2) / 255.0
    median = float(np.median(gray))
    method = cfg.tissue.method
    if median < DARK_BACKGROUND and method != "otsu-fluorescence":
        return (f"0 tiles: the background is dark (median brightness {median:.0%}): likely a fluorescence or "
                f"dark-field slide, and '{method}' tissue detection is for brightfield slides; for bright tissue "
                "on a dark background pass --set tissue.method=otsu-fluorescence")
    if mask.any():
        area_mm2 = float(mask.sum()) * mask_mpp * mask_mpp / 1e6
        return (f"0 tiles: {area_mm2:.2f} mm² of tissue found, but no {tile_um:.0f} µm tile is "
                f"{cfg.min_tissue_fraction:.0%} tissue; lower --min-tissue (e.g. 0.1) or --tile-size")
    content = gray < cfg.tissue.background_brightness
    if content.mean() > 0.01 and method == "otsu-saturation":
        sat = float(np.percentile(saturation(thumb)[content], 95))
        if sat < cfg.tissue.min_saturation:
            return (f"0 tiles: the slide has content but almost no colour (95th percentile saturation {sat:.2f}): "
                    "grayscale or unstained; saturation-based tissue detection finds nothing there; "
                    "pass --set tissue.method=otsu-od")
    if method == "otsu-fluorescence":
        return ("0 tiles: no bright tissue found on a dark background with --set tissue.method=otsu-fluorescence; "
                "for a brightfield slide use the default method")
    return (f"0 tiles: no tissue found ({content.mean():.1%} of the slide is darker than glass); the slide looks "
            "blank: check that it is the right file, or make detection more sensitive "
            "(--set tissue.min_saturation=0.02 --set tissue.min_tissue_area_um2=0)")
