"""Tissue and lesion texture sources cut from the bundled real H&E sample, with per-slide stain variation.

The source is ``wsi_mil/data/CMU-1-Small-Region.svs`` (2220 x 2967 px, 0.499 mpp, CC0), read once per
process with :func:`wsi_mil.slide.open_slide` (the reader every stage uses). Colours are handled in optical density (OD) space with the Ruifrok-Johnston
haematoxylin / eosin / residual stain vectors:

* ``od = -ln((rgb + 1) / 256)`` per channel, ``conc = od @ inv(M)``; back: ``rgb = 256 exp(-conc @ M) - 1``.
* Normal texture: the sample as scanned.
* Lesion texture: the same tissue with hyperchromatic, enlarged and crowded nuclei (the haematoxylin of the
  nuclei is dilated, darkened and duplicated at an offset), a change a pathologist sees at 10-20x.
* Per slide: the stain vectors are perturbed, each stain's amount is scaled, and a white balance tints the
  glass, as different labs and scanners do (:class:`StainVariation`); applied with per-channel look-up
  tables, since re-staining is linear in OD.

Only windows of the sample that are almost entirely tissue are used as texture patches
(:func:`patch_candidates`); all sizes here are in sample pixels unless stated.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage as ndi

from wsi_mil.errors import SlideError
from wsi_mil.slide import open_slide

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

    rgb: (h, w, 3) uint8 the crop as scanned.
    lesion_rgb: (h, w, 3) uint8 the same tissue with lesion-like nuclei.
    candidates: (K, 2) int64 (x, y) top-left corners, in crop pixels, of windows of ``patch_px`` that are
    at least ``MIN_PATCH_TISSUE`` tissue.
    mpp: micrometres per sample pixel; patch_px: window edge in sample pixels.
    """

    rgb: NDArray[np.uint8]
    lesion_rgb: NDArray[np.uint8]
    candidates: NDArray[np.int64]
    mpp: float
    patch_px: int


def rgb_to_conc(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(..., 3) uint8 RGB -> (..., 3) float32 stain concentrations (H, E, residual)."""
    lut = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
    od = lut[rgb].astype(np.float32)
    return od @ np.linalg.inv(STAIN_MATRIX).astype(np.float32)


def conc_to_rgb(conc: NDArray[np.float32], stains: NDArray[np.float64] = STAIN_MATRIX,
                white: NDArray[np.float64] | None = None) -> NDArray[np.uint8]:
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


def _read_sample_rgb(path: Path) -> tuple[NDArray[np.uint8], float]:
    """The whole sample at level 0, (h, w, 3) uint8 RGB (composited on white), and its mpp (µm/px)."""
    if not path.is_file():
        raise SlideError(f"{path}: the bundled H&E sample is missing; reinstall wsi_mil (package data)")
    with open_slide(path) as slide:
        rgb = np.ascontiguousarray(slide.read_region((0, 0), 0, slide.dimensions))
        return rgb, slide.mpp


def tissue_pixels(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """(h, w, 3) uint8 -> (h, w) bool: stained tissue (OD sum > 0.25, not the sample's green ink)."""
    lut = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0).astype(np.float32)
    od_sum = lut[rgb[..., 0]] + lut[rgb[..., 1]] + lut[rgb[..., 2]]
    r, g = rgb[..., 0].astype(np.int16), rgb[..., 1].astype(np.int16)
    return (od_sum > 0.25) & (g < r + 8)


def lesion_concentrations(conc: NDArray[np.float32], mpp: float) -> NDArray[np.float32]:
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
    out[..., 0] = np.maximum.reduce([h_chan, grown * 0.95, crowd * 0.75])
    out[..., 1] = conc[..., 1] * 0.9
    return out


def patch_candidates(tissue: NDArray[np.bool_], patch_px: int, min_tissue: float = MIN_PATCH_TISSUE,
                     stride: int = 8) -> NDArray[np.int64]:
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
    patch_px = int(np.ceil(PATCH_UM / mpp)) + 2
    small = np.asarray(Image.fromarray(rgb).reduce(4))  # windows are found at 1/4 resolution
    cand = patch_candidates(tissue_pixels(small), patch_px // 4, stride=2) * 4
    if len(cand) < 16:
        raise SlideError(f"{path}: too little tissue for texture patches ({len(cand)} windows)")
    x0, y0 = cand.min(axis=0)
    x1, y1 = cand.max(axis=0) + patch_px
    margin = 8  # windows may be a pixel or two larger than a patch after resizing
    padded = np.pad(rgb, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
    crop = np.ascontiguousarray(padded[y0:y1 + 2 * margin, x0:x1 + 2 * margin])
    x0, y0 = x0 - margin, y0 - margin
    lesion = conc_to_rgb(lesion_concentrations(rgb_to_conc(crop), mpp))
    cand = cand - np.array([x0, y0])
    return Sample(rgb=crop, lesion_rgb=lesion, candidates=cand, mpp=mpp, patch_px=patch_px)


@dataclass(frozen=True)
class StainVariation:
    """One slide's staining and scanning: stain vectors (3, 3), stain amounts (3,), glass colour (3,)."""

    stains: NDArray[np.float64]
    amounts: NDArray[np.float64]
    white: NDArray[np.float64]

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

    def channel_luts(self) -> NDArray[np.float32]:
        """(3, 3, 256) float32 ``L[k, c, v]``: factor of input channel k at value v on output channel c.

        OD is linear in the stains, so re-staining an image is an affine map of its OD,
        ``od' = od @ A`` with ``A = inv(M) diag(amounts) M'``, and ``rgb'_c = (white_c + 1) prod_k L[k, c,
        rgb_k] - 1``: nine table look-ups per pixel instead of a log, a matrix product and an exp.
        """
        a = np.linalg.inv(STAIN_MATRIX) @ np.diag(self.amounts) @ self.stains
        od = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
        return np.exp(-od[None, None, :] * a[:, :, None]).astype(np.float32)

    def restain(self, rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """(h, w, 3) uint8 RGB of the sample -> (h, w, 3) uint8 as this slide's lab and scanner show it."""
        return apply_channel_luts(rgb, self.channel_luts(), [self.white[c] + 1.0 for c in range(3)])

    def to_json(self) -> dict[str, Any]:
        """The slide's stain variation as JSON numbers (rounded to 6 digits): OD vectors, amounts, glass."""
        return {"stain_vectors_od": np.round(self.stains, 6).tolist(),
                "stain_amounts": np.round(self.amounts[:2], 6).tolist(),
                "glass_rgb": np.round(self.white, 3).tolist()}

    @property
    def background(self) -> tuple[int, int, int]:
        """The glass colour, RGB uint8."""
        return tuple(int(v + 0.5) for v in self.white)  # type: ignore[return-value]


def resample(rgb: NDArray[np.uint8], factor: float) -> NDArray[np.uint8]:
    """Resize (h, w, 3) uint8 by ``factor`` (>1 enlarges): box filter down, bicubic up.

    Factors within 1% of 1/n (n = 1, 2, 3, ...) use an exact n x n box reduction (fast; the texture is
    then at most 1% off its nominal scale).
    """
    n = round(1.0 / factor) if factor < 1.0 else 1
    if n >= 1 and abs(n * factor - 1.0) < 0.01:
        return rgb if n == 1 else np.asarray(Image.fromarray(rgb).reduce(n))
    h, w = rgb.shape[:2]
    nw, nh = max(1, int(round(w * factor))), max(1, int(round(h * factor)))
    method = Image.Resampling.BOX if factor < 1 else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb).resize((nw, nh), method))


def dihedral(a: NDArray[Any], d: int) -> NDArray[Any]:
    """One of the 8 flips/rotations of a (h, w, ...) array (d = 0-7), as a view."""
    v = np.rot90(a, k=d % 4, axes=(0, 1))
    return v[:, ::-1] if d >= 4 else v


def dihedral_window(shape: tuple[int, int], d: int, x: int, y: int, size: int) -> tuple[int, int]:
    """Top-left (x, y) in ``dihedral(image, d)`` of the ``size`` window at (x, y) of an image of ``shape``
    (h, w): the same pixels, flipped/rotated."""
    h, w = shape
    r0, c0 = y, x
    for _ in range(d % 4):  # np.rot90: new[i, j] = old[j, w - 1 - i]; shape becomes (w, h)
        r0, c0 = w - c0 - size, r0
        h, w = w, h
    if d >= 4:
        c0 = w - c0 - size
    return c0, r0


#: windows of one orientation cut from a source before a rotated copy of the whole source pays off
#: (copying from a rotated view is slow; a rotated copy costs about as much as this many windows)
VARIANT_AFTER = 24
#: no rotated copies of sources larger than this (very fine mpp enlarges the sample): memory stays bounded
VARIANT_MAX_BYTES = 64 * 2**20


class SlideTextures:
    """The texture sources of one slide.

    ``level_image(kind, scale)`` is the stain-varied sample crop (``kind`` 'normal' or 'lesion') resized by
    ``scale`` = sample mpp / rendered mpp; ``window(kind, scale, d, x, y, size)`` a flipped/rotated window of
    it. Both are cached; rotated copies of a whole source are made once enough windows need them.
    """

    def __init__(self, sample: Sample, stain: StainVariation) -> None:
        self.sample = sample
        self.stain = stain
        self._base: dict[str, NDArray[np.uint8]] = {}
        self._scaled: dict[tuple[str, float], NDArray[np.uint8]] = {}
        self._variants: dict[tuple[str, float, int], NDArray[np.uint8]] = {}
        self._uses: dict[tuple[str, float, int], int] = {}

    def base(self, kind: str) -> NDArray[np.uint8]:
        """(h, w, 3) uint8 stain-varied crop at the sample's resolution."""
        if kind not in self._base:
            src = self.sample.rgb if kind == "normal" else self.sample.lesion_rgb
            self._base[kind] = self.stain.restain(src)
        return self._base[kind]

    def level_image(self, kind: str, scale: float) -> NDArray[np.uint8]:
        """(h', w', 3) uint8 crop resized by ``scale``, C-contiguous."""
        key = (kind, round(scale, 6))
        if key not in self._scaled:
            self._scaled[key] = np.ascontiguousarray(resample(self.base(kind), scale))
        return self._scaled[key]

    def window(self, kind: str, scale: float, d: int, x: int, y: int, size: int) -> NDArray[np.uint8]:
        """(size, size, 3) uint8 view: the window at (x, y) of :meth:`level_image`, flipped/rotated by ``d``.

        The window must lie inside the image (texture patches do: the crop has a margin).
        """
        img = self.level_image(kind, scale)
        key = (kind, round(scale, 6), d)
        var = self._variants.get(key)
        if var is None and d and img.nbytes <= VARIANT_MAX_BYTES:
            self._uses[key] = self._uses.get(key, 0) + 1
            if self._uses[key] > VARIANT_AFTER:
                var = self._variants[key] = np.ascontiguousarray(dihedral(img, d))
        if var is None:
            return dihedral(img[y:y + size, x:x + size], d)
        tx, ty = dihedral_window(img.shape[:2], d, x, y, size)
        return var[ty:ty + size, tx:tx + size]


def apply_channel_luts(rgb: NDArray[np.uint8], lut: NDArray[np.float32], scale: list[float]) -> NDArray[np.uint8]:
    """(h, w, 3) uint8 -> (h, w, 3) uint8: out_c = round(scale_c * prod_k lut[k, c][rgb_k] - 1), clipped to 0-255.

    ``lut`` (3, 3, 256) float32 per input channel k and output channel c: a stain change in optical
    density as nine table look-ups per pixel (no log, matrix product or exp per pixel)."""
    out = np.empty(rgb.shape, np.uint8)
    planes = [rgb[..., k] for k in range(3)]
    for c in range(3):
        acc = lut[0, c][planes[0]]
        acc *= lut[1, c][planes[1]]
        acc *= lut[2, c][planes[2]]
        acc *= np.float32(scale[c])
        acc -= 0.5  # -1 then +0.5 for rounding
        np.clip(acc, 0.0, 255.0, out=acc)
        out[..., c] = acc
    return out
