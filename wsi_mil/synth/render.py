"""One synthetic slide: every random choice (:class:`SlideSpec`) and a tile renderer over it.

Random streams are separate per aspect (stain, tissue, texture cells, lesions), so the positive and the
negative version of one seed share tissue, colours and texture and differ only inside the lesions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from wsi_mil.errors import ConfigError
from wsi_mil.synth.quilt import CellTable, Quilt
from wsi_mil.synth.shapes import LESION_BLEND_UM, Lesion, TissueShape, place_lesions
from wsi_mil.synth.texture import Sample, SlideTextures, StainVariation, load_sample

#: tissue edge anti-aliasing width and ragged-edge depth, micrometres
EDGE_UM = 2.0
RAGGED_UM = 10.0

_STREAMS = {"stain": 1, "tissue": 2, "cells": 3, "lesions": 4, "lesion_cells": 5}


def stream(seed: int, name: str) -> np.random.Generator:
    """The random generator of one aspect of a slide (independent of the others)."""
    return np.random.default_rng([int(seed), _STREAMS[name]])


def mask_downsample_for(width: int, height: int, max_side: int = 4096) -> float:
    """Power-of-two downsample (>= 4) that keeps a ground-truth mask within ``max_side`` px."""
    d = 4
    while max(width, height) / d > max_side:
        d *= 2
    return float(d)


@dataclass(frozen=True)
class SlideSpec:
    """Everything random about one slide, drawn from its seed. Sizes in level-0 px."""

    width: int
    height: int
    mpp: float
    seed: int
    positive: bool
    stain: StainVariation
    tissue: TissueShape
    lesions: tuple[Lesion, ...]
    target_lesion_fraction: float
    tissue_area: float
    mask_downsample: float
    normal_cells: CellTable
    lesion_cells: CellTable

    @classmethod
    def draw(cls, width: int, height: int, mpp: float, seed: int, positive: bool,
             lesion_fraction: float | tuple[float, float] = (0.01, 0.05), n_lesions: int | None = None,
             stain_strength: float = 1.0,
             tissue_fraction: tuple[float, float] = (0.3, 0.55)) -> SlideSpec:
        """Draw a slide. ``lesion_fraction``: lesion share of the tissue, a value or a (low, high) range."""
        if width < 256 or height < 256:
            raise ConfigError(f"size: slides must be at least 256 x 256 px, got {width} x {height}")
        if not 0.1 <= mpp <= 4.0:
            raise ConfigError(f"mpp: must be within 0.1-4 um/px (0.25 = 40x, 0.5 = 20x), got {mpp}")
        if isinstance(lesion_fraction, tuple | list):
            lo, hi = float(lesion_fraction[0]), float(lesion_fraction[1])
        else:
            lo = hi = float(lesion_fraction)
        if not (0 < lo <= hi < 0.5):
            raise ConfigError(f"lesion_fraction: need 0 < low <= high < 0.5, got {lo}, {hi}")
        sample = load_sample()
        tissue = TissueShape.draw(stream(seed, "tissue"), width, height, tissue_fraction)
        mask_ds = mask_downsample_for(width, height)
        tissue_area = float(tissue.mask(mask_ds).sum()) * mask_ds * mask_ds
        rng = stream(seed, "lesions")
        target = float(rng.uniform(lo, hi))
        lesions: tuple[Lesion, ...] = ()
        if positive:
            lesions = tuple(place_lesions(rng, tissue, target * tissue_area, mpp, n_lesions=n_lesions))
        ny, nx = Quilt.shape_for(width, height, mpp)
        k = len(sample.candidates)
        return cls(
            width=width, height=height, mpp=mpp, seed=seed, positive=positive,
            stain=StainVariation.draw(stream(seed, "stain"), stain_strength), tissue=tissue,
            lesions=lesions, target_lesion_fraction=target if positive else 0.0,
            tissue_area=tissue_area, mask_downsample=mask_ds,
            normal_cells=CellTable.draw(stream(seed, "cells"), k, ny, nx),
            lesion_cells=CellTable.draw(stream(seed, "lesion_cells"), k, ny, nx),
        )


class SlideRenderer:
    """Renders any level-0 tile of a :class:`SlideSpec`, independently of the others (callable for the
    TIFF writer, which derives the reduced levels)."""

    def __init__(self, spec: SlideSpec, sample: Sample | None = None, lesion_texture: bool = True) -> None:
        self.spec = spec
        self.sample = sample or load_sample()
        self.textures = SlideTextures(self.sample, spec.stain)
        self.normal = Quilt(self.sample, spec.normal_cells, spec.mpp)
        self.lesion = Quilt(self.sample, spec.lesion_cells, spec.mpp)
        self.lesion_texture = lesion_texture
        self.glass = np.asarray(spec.stain.background, np.float32)

    def lesion_alpha(self, xs: np.ndarray, ys: np.ndarray, downsample: float) -> np.ndarray | None:
        """(h, w) float32 lesion opacity at level-0 positions xs (w,), ys (h,); None when no lesion is near."""
        blend = max(LESION_BLEND_UM / self.spec.mpp, downsample)
        alpha = None
        for les in self.spec.lesions:
            x0, y0, x1, y1 = les.bbox(blend)
            if x1 < xs[0] or x0 > xs[-1] or y1 < ys[0] or y0 > ys[-1]:
                continue
            a = np.clip(les.signed_distance(xs, ys) / blend + 0.5, 0.0, 1.0)
            alpha = a if alpha is None else np.maximum(alpha, a)
        return alpha

    def __call__(self, x: int, y: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray | None:
        """(h, w, 3) uint8 pixels at (x, y) (px of a level reduced ``downsample`` times; the writer uses
        level 0), or None when the region is glass only."""
        spec = self.spec
        d = float(downsample)
        xs = (np.arange(x, x + w, dtype=np.float64) + 0.5) * d
        ys = (np.arange(y, y + h, dtype=np.float64) + 0.5) * d
        sd = spec.tissue.sample(xs, ys)
        edge = max(EDGE_UM / spec.mpp, d)
        ragged = RAGGED_UM / spec.mpp
        reach = ragged + edge
        row_max = sd.max(axis=1)
        if row_max.max() <= -reach:
            return None
        rows = row_max > -reach
        scale = self.sample.mpp / (spec.mpp * d)
        tex = self.normal.render(functools.partial(self.textures.window, "normal", scale), scale, d, x, y, w, h,
                                 rows)
        alpha = self.lesion_alpha(xs, ys, d) if (spec.lesions and self.lesion_texture) else None
        if alpha is not None and alpha.max() > 0:
            on = np.flatnonzero(alpha.max(axis=1) > 0)
            a, b = int(on[0]), int(on[-1]) + 1
            les = self.lesion.render(functools.partial(self.textures.window, "lesion", scale), scale, d, x, y + a,
                                     w, b - a)
            part = tex[a:b].astype(np.float32)
            part += (les - part) * alpha[a:b, :, None]
            tex[a:b] = part + 0.5
        edge_rows = np.flatnonzero(sd.min(axis=1) < reach)
        if edge_rows.size:  # tissue border: anti-aliased, ragged along the texture (pale parts recede)
            a, b = int(edge_rows[0]), int(edge_rows[-1]) + 1
            part = tex[a:b].astype(np.float32)
            dark = 1.0 - (part[..., 0] + part[..., 1] + part[..., 2]) / float(3 * self.glass.mean())
            sd_eff = sd[a:b] + ragged * np.clip((dark - 0.18) / 0.1, -1.0, 1.0)
            at = np.clip(sd_eff / edge + 0.5, 0.0, 1.0)[..., None]
            part -= self.glass
            part *= at
            part += self.glass + 0.5
            tex[a:b] = part  # values are convex combinations of 0-255 pixels: no clipping needed
        return tex
