"""Simulated sites (hospitals): each site stains and scans its slides in its own way.

A :class:`SiteEffect` is applied to the rendered level-0 pixels of every slide of a site (after texture and
lesions, before JPEG), in the order light takes:

1. **Stain** (the lab): the tissue's optical density ``od = -ln((rgb + 1) / 256)`` is unmixed with the
   reference Ruifrok-Johnston vectors, each stain's concentration is scaled (``amounts``) and the image is
   re-mixed with the site's own haematoxylin and eosin OD vectors (the reference ones rotated by a few
   degrees): ``od' = od inv(M) diag(amounts) M_site``. Being linear in OD it is nine table look-ups per pixel.
2. **Optics** (the scanner's lens): a Gaussian blur of ``blur_um`` micrometres.
3. **Colour response** (the scanner's sensor): per channel ``255 gain (v / 255) ^ gamma``.
4. **Compression**: the site's JPEG quality (used by the slide writer).

Every number is drawn from the cohort seed and the site index, scaled by the stain-shift ``strength``;
the haematoxylin and eosin amounts are stratified over the sites (evenly spaced on a log scale, shuffled),
so that any two sites of a cohort differ measurably.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from wsi_mil.synth.texture import STAIN_MATRIX, apply_channel_luts

#: at strength 1: rotation of the H and E OD vectors (degrees, drawn in [0.5, 1] x this), spread of the
#: log stain amounts (sites span +- this), SD of log gamma, largest gain loss, largest blur (µm) and the
#: JPEG quality offsets (drawn in this range, added to the cohort's quality)
ROTATION_DEG = 4.0
LOG_AMOUNT_SPAN = 0.3
LOG_GAMMA_SD = 0.05
GAIN_LOSS = 0.06
BLUR_UM = 0.6
JPEG_OFFSET = (-25.0, 10.0)
#: JPEG quality of any site stays within these bounds
JPEG_RANGE = (30, 100)


def _rotate(v: NDArray[np.float64], degrees: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """Unit vector ``v`` (3,) rotated by ``degrees`` towards a random direction orthogonal to it, kept in the
    positive octant (OD is never negative) and re-normalised."""
    u = rng.normal(size=3)
    u -= u.dot(v) * v
    u /= np.linalg.norm(u)
    t = np.deg2rad(degrees)
    out = np.abs(np.cos(t) * v + np.sin(t) * u)
    return out / np.linalg.norm(out)


def _strata(rng: np.random.Generator, n_sites: int) -> NDArray[np.float64]:
    """(n_sites,) values evenly spaced in [-1, 1] (0 for one site), shuffled, plus a little jitter."""
    if n_sites == 1:
        base = np.zeros(1)
    else:
        base = rng.permutation(np.linspace(-1.0, 1.0, n_sites))
    return base + rng.uniform(-0.15, 0.15, size=n_sites)


@dataclass(frozen=True)
class SiteEffect:
    """One site's staining and scanning.

    stains: (3, 3) OD unit vectors (rows H, E, residual); amounts: (3,) concentration scales (H, E, residual);
    gamma, gain: (3,) per RGB channel; blur_um: Gaussian sigma in micrometres; jpeg_quality: 1-100.
    """

    index: int
    strength: float
    stains: NDArray[np.float64]
    amounts: NDArray[np.float64]
    gamma: NDArray[np.float64]
    gain: NDArray[np.float64]
    blur_um: float
    jpeg_quality: int

    @classmethod
    def draw_all(cls, seed: int, n_sites: int, strength: float, jpeg_quality: int) -> list[SiteEffect]:
        """The ``n_sites`` sites of a cohort drawn with ``seed`` (``strength`` 0: every site is the identity
        on colours, sharp, at ``jpeg_quality``)."""
        rng = np.random.default_rng([int(seed), 2000])
        log_h = _strata(rng, n_sites) * LOG_AMOUNT_SPAN * strength
        log_e = _strata(rng, n_sites) * LOG_AMOUNT_SPAN * strength
        sites = []
        for k in range(n_sites):
            r = np.random.default_rng([int(seed), 2000, k])
            stains = STAIN_MATRIX.copy()
            for row in (0, 1):
                stains[row] = _rotate(STAIN_MATRIX[row], ROTATION_DEG * strength * r.uniform(0.5, 1.0), r)
            gamma = np.exp(r.normal(0.0, LOG_GAMMA_SD * strength, size=3))
            gain = 1.0 - r.uniform(0.0, GAIN_LOSS * strength, size=3)
            blur = float(r.uniform(0.0, BLUR_UM * strength))
            q = int(np.clip(round(jpeg_quality + r.uniform(*JPEG_OFFSET) * min(strength, 1.0)), *JPEG_RANGE))
            sites.append(cls(index=k, strength=float(strength), stains=stains,
                             amounts=np.array([np.exp(log_h[k]), np.exp(log_e[k]), 1.0]),
                             gamma=gamma, gain=gain, blur_um=blur, jpeg_quality=q))
        return sites

    @property
    def name(self) -> str:
        """The site's name in labels.csv: ``site_{index}``."""
        return f"site_{self.index}"

    def to_json(self) -> dict[str, Any]:
        """The parameters as JSON numbers (rounded to 6 digits)."""
        def r(a: NDArray[np.float64]) -> list[Any]:
            return np.round(a, 6).tolist()  # type: ignore[no-any-return]

        return {"site": self.name, "index": self.index, "stain_shift": self.strength,
                "stain_vectors_od": {"hematoxylin": r(self.stains[0]), "eosin": r(self.stains[1]),
                                     "residual": r(self.stains[2])},
                "stain_amounts": {"hematoxylin": round(float(self.amounts[0]), 6),
                                  "eosin": round(float(self.amounts[1]), 6)},
                "scanner_gamma_rgb": r(self.gamma), "scanner_gain_rgb": r(self.gain),
                "blur_sigma_um": round(self.blur_um, 6), "jpeg_quality": self.jpeg_quality}

    def od_matrix(self) -> NDArray[np.float64]:
        """(3, 3) ``A`` with ``od' = od @ A``: unmix with the reference vectors, scale, re-mix with the site's."""
        return np.linalg.inv(STAIN_MATRIX) @ np.diag(self.amounts) @ self.stains

    def stain_luts(self) -> NDArray[np.float32]:
        """(3, 3, 256) float32 ``L[k, c, v]``: factor of input channel k at value v on output channel c
        (``rgb'_c = 256 prod_k L[k, c, rgb_k] - 1``)."""
        od = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
        return np.exp(-od[None, None, :] * self.od_matrix()[:, :, None]).astype(np.float32)

    def response_luts(self) -> NDArray[np.uint8]:
        """(3, 256) uint8 per-channel scanner response ``255 gain (v / 255) ^ gamma``."""
        v = np.arange(256, dtype=np.float64) / 255.0
        out = 255.0 * self.gain[:, None] * v[None, :] ** self.gamma[:, None]
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def restain(self, rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """(h, w, 3) uint8 -> (h, w, 3) uint8 under the site's stain (step 1)."""
        return apply_channel_luts(rgb, self.stain_luts(), [256.0, 256.0, 256.0])

    def blur_px(self, mpp: float) -> float:
        """Blur sigma in pixels at ``mpp`` µm/px."""
        return self.blur_um / mpp

    def margin_px(self, mpp: float) -> int:
        """Pixels of context a tile needs on each side for a seamless blur."""
        s = self.blur_px(mpp)
        return int(np.ceil(4.0 * s)) if s > 0.05 else 0

    def apply(self, rgb: NDArray[np.uint8], mpp: float) -> NDArray[np.uint8]:
        """(h, w, 3) uint8 as scanned at this site (steps 1-3); ``mpp``: µm/px of ``rgb``.

        The blur treats the array's border as repeated edge pixels; give it :meth:`margin_px` of context
        and crop it off for a seamless result."""
        out = self.restain(rgb)
        s = self.blur_px(mpp)
        if self.margin_px(mpp):
            f = ndi.gaussian_filter(out.astype(np.float32), sigma=(s, s, 0.0), mode="nearest", truncate=4.0)
            out = np.clip(f + 0.5, 0.0, 255.0).astype(np.uint8)
        lut = self.response_luts()
        for c in range(3):
            out[..., c] = lut[c][out[..., c]]
        return out

    def colour(self, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
        """A flat colour (the glass) as this site scans it."""
        px = self.apply(np.array([[rgb]], np.uint8), 1.0)[0, 0]
        return (int(px[0]), int(px[1]), int(px[2]))


class SiteRenderer:
    """A tile renderer (see :mod:`wsi_mil.synth.writer`) that shows the tiles of ``inner`` as ``site``
    scans them; each tile is rendered with :meth:`SiteEffect.margin_px` of context (clipped to the slide,
    ``width`` x ``height`` level-0 px), so tile borders stay seamless under the blur."""

    def __init__(self, inner: Any, site: SiteEffect, mpp: float, width: int, height: int) -> None:
        self.inner, self.site, self.mpp = inner, site, mpp
        self.width, self.height = width, height
        self.margin = site.margin_px(mpp)

    def __call__(self, x: int, y: int, w: int, h: int) -> NDArray[np.uint8] | None:
        """(h, w, 3) uint8 level-0 pixels at (x, y), or None when the tile and its context are glass."""
        m = self.margin
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(self.width, x + w + m), min(self.height, y + h + m)
        pixels = self.inner(x0, y0, x1 - x0, y1 - y0)
        if pixels is None:
            return None
        out = self.site.apply(pixels, self.mpp)
        return np.ascontiguousarray(out[y - y0:y - y0 + h, x - x0:x - x0 + w])
