"""Tissue and lesion texture sources cut from the bundled real H&E sample, with per-slide stain variation.

The source is ``wsi_mil/data/CMU-1-Small-Region.svs`` (2220 x 2967 px, 0.499 mpp, CC0), read once per
process with OpenSlide. Colours are handled in optical density (OD) space with the Ruifrok-Johnston
haematoxylin / eosin / residual stain vectors:

* ``od = -ln((rgb + 1) / 256)`` per channel, ``conc = od @ inv(M)``; back: ``rgb = 256 exp(-conc @ M) - 1``.
* Normal texture: the sample's own stain concentrations.
* Lesion texture: the same tissue with hyperchromatic, enlarged and crowded nuclei (the haematoxylin of the
  nuclei is dilated, darkened and duplicated at an offset), a change a pathologist sees at 10-20x.
* Per slide: the stain vectors are perturbed, each stain's amount is scaled, and a white balance tints the
  glass, as different labs and scanners do (:class:`StainVariation`).

Only windows of the sample that are almost entirely tissue are used as texture patches
(:func:`patch_candidates`); all sizes here are in sample pixels unless stated.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from wsi_mil.errors import SlideError

#: the bundled real H&E sample (CC0)
SAMPLE_PATH = Path(__file__).resolve().parents[1] / "data" / "CMU-1-Small-Region.svs"

#: stain vectors in OD space (rows: haematoxylin, eosin, residual), from scikit-image's ``rgb_from_hed``
STAIN_MATRIX = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
STAIN_MATRIX /= np.linalg.norm(STAIN_MATRIX, axis=1, keepdims=True)

#: edge of a texture patch in micrometres (a quilt cell plus its blending overlap, see quilt.py)
PATCH_UM = 224.0
#: minimum tissue share of a sample window used as a texture patch
MIN_PATCH_TISSUE = 0.92


@dataclass(frozen=True)
class Sample:
    """The real H&E sample cut to the region that holds texture patches.

    conc: (h, w, 3) float32 stain concentrations (H, E, residual) of the crop.
    lesion_conc: (h, w, 3) float32, the same with lesion-like nuclei.
    candidates: (K, 2) int64 (x, y) top-left corners, in crop pixels, of windows of ``patch_px`` that are
    at least ``MIN_PATCH_TISSUE`` tissue.
    mpp: micrometres per sample pixel; patch_px: window edge in sample pixels.
    """

    conc: np.ndarray
    lesion_conc: np.ndarray
    candidates: np.ndarray
    mpp: float
    patch_px: int


def rgb_to_conc(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 3) float32 stain concentrations (H, E, residual)."""
    lut = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
    od = lut[rgb].astype(np.float32)
    return od @ np.linalg.inv(STAIN_MATRIX).astype(np.float32)


def conc_to_rgb(conc: np.ndarray, stains: np.ndarray = STAIN_MATRIX,
                white: np.ndarray | None = None) -> np.ndarray:
    """(..., 3) float32 concentrations -> (..., 3) uint8 RGB with stain matrix ``stains`` (3, 3).

    ``white``: (3,) glass colour in 0-255 (white balance); pure white when None.
    """
    od = conc @ stains.astype(np.float32)
    np.maximum(od, 0.0, out=od)
    rgb = np.exp(-od, out=od)
    scale = np.float32(256.0) if white is None else (np.asarray(white, np.float32) + 1.0)
    rgb *= scale
    rgb -= 1.0
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return (rgb + 0.5).astype(np.uint8)


def _read_sample_rgb(path: Path) -> tuple[np.ndarray, float]:
    import openslide

    if not path.is_file():
        raise SlideError(f"{path}: the bundled H&E sample is missing; reinstall wsi_mil (package data)")
    with openslide.OpenSlide(str(path)) as slide:
        w, h = slide.dimensions
        rgba = np.asarray(slide.read_region((0, 0), 0, (w, h)))
        mpp = float(slide.properties.get(openslide.PROPERTY_NAME_MPP_X, 0.499))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb, mpp


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (h, w) bool: stained tissue (not glass, not the sample's green ink)."""
    lut = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0).astype(np.float32)
    od_sum = lut[rgb].sum(axis=-1)
    r, g = rgb[..., 0].astype(np.int16), rgb[..., 1].astype(np.int16)
    return (od_sum > 0.25) & (g < r + 8)


def lesion_concentrations(conc: np.ndarray, mpp: float) -> np.ndarray:
    """Lesion texture from normal tissue: crowded, enlarged, hyperchromatic nuclei.

    conc: (h, w, 3) float32 (H, E, residual) at ``mpp``. Nuclei are the top of the haematoxylin
    distribution; they are grown by ~1.5 um, darkened, and a second, offset copy fills the gaps between
    them (crowding). Eosin is reduced a little (less stroma between the cells). Returns (h, w, 3) float32.
    """
    h_chan = conc[..., 0]
    thr = float(np.percentile(h_chan, 90))
    nuclei = np.where(h_chan > thr, h_chan, 0.0).astype(np.float32)
    r = max(1, int(round(1.5 / mpp)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (xx * xx + yy * yy) <= r * r + 0.5
    grown = ndi.grey_dilation(nuclei, footprint=disk)
    grown = ndi.gaussian_filter(grown, 0.6 / mpp)
    shift = (int(round(11.5 / mpp)), int(round(-8.5 / mpp)))
    crowd = np.roll(grown, shift, axis=(0, 1))
    out = conc.copy()
    out[..., 0] = np.maximum.reduce([h_chan, grown * 1.05, crowd * 0.8])
    out[..., 1] = conc[..., 1] * 0.85
    return out


def patch_candidates(tissue: np.ndarray, patch_px: int, min_tissue: float = MIN_PATCH_TISSUE,
                     stride: int = 8) -> np.ndarray:
    """(K, 2) int64 (x, y) top-left corners of ``patch_px`` windows of ``tissue`` (h, w) bool that are
    at least ``min_tissue`` tissue, on a grid of ``stride`` px."""
    f = ndi.uniform_filter(tissue.astype(np.float32), size=patch_px, mode="constant")
    h, w = tissue.shape
    half = patch_px // 2
    ys = np.arange(half, h - (patch_px - half) + 1, stride)
    xs = np.arange(half, w - (patch_px - half) + 1, stride)
    ok = f[np.ix_(ys, xs)] >= min_tissue
    iy, ix = np.nonzero(ok)
    return np.stack([xs[ix] - half, ys[iy] - half], axis=1).astype(np.int64)


@functools.lru_cache(maxsize=2)
def load_sample(path: str = str(SAMPLE_PATH)) -> Sample:
    """Read and prepare the texture sample (cached per process): crop, concentrations, candidates."""
    rgb, mpp = _read_sample_rgb(Path(path))
    tissue = tissue_pixels(rgb)
    patch_px = int(np.ceil(PATCH_UM / mpp)) + 2
    cand = patch_candidates(tissue, patch_px)
    if len(cand) < 16:
        raise SlideError(f"{path}: too little tissue for texture patches ({len(cand)} windows)")
    x0, y0 = cand.min(axis=0)
    x1, y1 = cand.max(axis=0) + patch_px
    crop = rgb[y0:y1, x0:x1]
    conc = rgb_to_conc(crop)
    lesion = lesion_concentrations(conc, mpp)
    cand = cand - np.array([x0, y0])
    return Sample(conc=conc, lesion_conc=lesion, candidates=cand, mpp=mpp, patch_px=patch_px)


@dataclass(frozen=True)
class StainVariation:
    """One slide's staining and scanning: stain vectors (3, 3), stain amounts (3,), glass colour (3,)."""

    stains: np.ndarray
    amounts: np.ndarray
    white: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, strength: float = 1.0) -> StainVariation:
        """A random lab/scanner: ``strength`` 0 gives the sample's own colours, 1 the default spread."""
        stains = STAIN_MATRIX + rng.normal(0.0, 0.05 * strength, size=(3, 3))
        stains = np.abs(stains)
        stains /= np.linalg.norm(stains, axis=1, keepdims=True)
        amounts = np.array([
            np.exp(rng.normal(0.0, 0.15 * strength)),
            np.exp(rng.normal(0.0, 0.2 * strength)),
            1.0,
        ])
        level = 250.0 - rng.uniform(0.0, 12.0) * strength
        white = np.clip(level + rng.normal(0.0, 3.0 * strength, size=3), 200.0, 255.0)
        return cls(stains=stains, amounts=amounts, white=white)

    def apply(self, conc: np.ndarray) -> np.ndarray:
        """(h, w, 3) float32 concentrations -> (h, w, 3) uint8 RGB as this slide shows them."""
        return conc_to_rgb(conc * self.amounts.astype(np.float32), self.stains, self.white)

    @property
    def background(self) -> tuple[int, int, int]:
        """The glass colour, RGB uint8."""
        return tuple(int(v + 0.5) for v in self.white)  # type: ignore[return-value]


def resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Resize (h, w, 3) uint8 by ``factor`` (>1 enlarges): box filter down, bicubic up."""
    from PIL import Image

    h, w = rgb.shape[:2]
    nw, nh = max(1, int(round(w * factor))), max(1, int(round(h * factor)))
    if (nw, nh) == (w, h):
        return rgb
    method = Image.Resampling.BOX if factor < 1 else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb).resize((nw, nh), method))


class SlideTextures:
    """The texture sources of one slide at every pyramid level it renders.

    ``level_image(kind, scale)`` gives the stain-varied sample crop (``kind`` 'normal' or 'lesion') resized
    by ``scale`` = sample mpp / rendered mpp, computed once and cached.
    """

    def __init__(self, sample: Sample, stain: StainVariation) -> None:
        self.sample = sample
        self.stain = stain
        self._base: dict[str, np.ndarray] = {}
        self._scaled: dict[tuple[str, float], np.ndarray] = {}

    def base(self, kind: str) -> np.ndarray:
        """(h, w, 3) uint8 stain-varied crop at the sample's resolution."""
        if kind not in self._base:
            conc = self.sample.conc if kind == "normal" else self.sample.lesion_conc
            self._base[kind] = self.stain.apply(conc)
        return self._base[kind]

    def level_image(self, kind: str, scale: float) -> np.ndarray:
        """(h', w', 3) uint8 crop resized by ``scale``."""
        key = (kind, round(scale, 6))
        if key not in self._scaled:
            self._scaled[key] = np.ascontiguousarray(resample(self.base(kind), scale))
        return self._scaled[key]
