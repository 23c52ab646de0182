"""Tissue detection on a low-resolution RGB image of a slide (pure numpy / scikit-image).

Brightfield pipeline: drop near-white glass and near-black ink/dirt, drop green/blue/black pen marks, keep
pixels whose saturation (or optical density) is above an Otsu threshold, then clean up with
morphology whose sizes are given in µm and µm² so the result does not depend on the mask scale.
``otsu-fluorescence`` keeps bright pixels on a dark background instead (same clean-up).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_holes, remove_small_objects

from wsi_mil.tiling.config import TissueConfig


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of green, blue or black marker ink (h, w) bool.

    H&E never has green-dominant pixels; blue marker is far bluer than haematoxylin, even dense
    dark nuclei (which stay purple: blue exceeds red by well under 90); black marker is darker
    than any stained tissue at a few µm/px.
    """
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    green = (g - r > 20) & (g - b > -10)
    blue = (b - r > 90) & (b - g > 50)
    black = (r < 50) & (g < 50) & (b < 50)
    return green | blue | black


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1], (h, w) float32."""
    x = rgb.astype(np.float32)
    mx = x.max(axis=2)
    mn = x.min(axis=2)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Mean optical density over RGB, (h, w) float32 (0 for white glass)."""
    x = np.maximum(rgb.astype(np.float32), 1.0) / 255.0
    return (-np.log(x)).mean(axis=2).astype(np.float32)


def detect_tissue(rgb: np.ndarray, mpp: float, config: TissueConfig | None = None) -> np.ndarray:
    """Tissue mask (h, w) bool of an RGB image (h, w, 3) uint8 at ``mpp`` µm per pixel."""
    cfg = config or TissueConfig()
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], dtype=bool)
    if cfg.method == "otsu-fluorescence":
        return _clean(fluorescence_mask(rgb), mpp, cfg)
    usable, bright, pen, signal = _pixel_signals(rgb, cfg)
    if cfg.remove_pen:
        if pen.any():
            pen = ndi.binary_dilation(pen, iterations=max(1, int(round(20.0 / mpp))))
        usable &= ~pen
    floor, cap = (cfg.min_saturation, cfg.max_saturation_threshold) if cfg.method == "otsu-saturation" else (0.05, 0.5)
    # Otsu over glass *and* tissue separates the two; capped so that a slide with almost no
    # glass is not split into dense and pale tissue instead
    values = signal[usable]
    if values.size < 16:
        return np.zeros(rgb.shape[:2], dtype=bool)
    try:
        thr = float(threshold_otsu(values))
    except ValueError:  # all values equal
        thr = floor
    mask = usable & bright & (signal > min(max(thr, floor), cap))
    return _clean(mask, mpp, cfg, usable)


#: rows of the image converted at a time by :func:`_pixel_signals` (bounds the float temporaries)
STRIP_ROWS = 256


def _pixel_signals(rgb: np.ndarray, cfg: TissueConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel of ``rgb`` (h, w, 3): (not near-black, darker than glass, pen ink, saturation or
    optical density float32), computed in strips of rows: the same values as on the whole image,
    with float temporaries of one strip (a whole slide at 8 µm/px is up to ~30 Mpx)."""
    h, w = rgb.shape[:2]
    usable, bright, pen = (np.empty((h, w), dtype=bool) for _ in range(3))
    signal = np.empty((h, w), dtype=np.float32)
    measure = saturation if cfg.method == "otsu-saturation" else optical_density
    for a in range(0, h, STRIP_ROWS):
        part = rgb[a:a + STRIP_ROWS]
        gray = part.astype(np.float32).mean(axis=2) / 255.0
        usable[a:a + STRIP_ROWS] = gray > cfg.black_brightness  # near-black: ink, dirt, slide edges
        bright[a:a + STRIP_ROWS] = gray < cfg.background_brightness
        pen[a:a + STRIP_ROWS] = pen_mask(part) if cfg.remove_pen else False
        signal[a:a + STRIP_ROWS] = measure(part)
    return usable, bright, pen, signal


def fluorescence_mask(rgb: np.ndarray) -> np.ndarray:
    """Bright tissue on a dark background (h, w) bool: the brightest channel above its Otsu threshold."""
    signal = rgb.max(axis=2).astype(np.float32) / 255.0
    if signal.size < 16 or float(signal.max()) - float(signal.min()) < 0.02:
        return np.zeros(rgb.shape[:2], dtype=bool)
    return signal > max(float(threshold_otsu(signal)), 0.05)


def _clean(mask: np.ndarray, mpp: float, cfg: TissueConfig, usable: np.ndarray | None = None) -> np.ndarray:
    """Close gaps, fill small holes and drop small objects; sizes in µm and µm² at ``mpp`` µm/px."""
    pixel_area = mpp * mpp
    radius = int(round(cfg.closing_radius_um / mpp))
    if radius >= 1:
        closed = ndi.binary_closing(mask, structure=disk(radius), border_value=0)
        mask = (closed & usable if usable is not None else closed) | mask
    if cfg.max_hole_area_um2 > 0:
        mask = remove_small_holes(mask, max_size=max(1, int(cfg.max_hole_area_um2 / pixel_area)))
    if cfg.min_tissue_area_um2 > 0:
        mask = remove_small_objects(mask, max_size=max(1, int(cfg.min_tissue_area_um2 / pixel_area)))
    return mask
