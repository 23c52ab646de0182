"""Macenko stain normalisation (Macenko et al., ISBI 2009), per slide, vectorised on the device.

Fit (once per slide, float64, on the pixels sampled from its tissue tiles), as the reference
implementations (HEnorm_python, torchstain) do for one image: optical density
``OD = -log((I + 1) / Io)``; pixels with OD below ``beta`` in any channel (background, faint
pixels) are left out of the stain-vector estimate; the plane of the two largest eigenvectors of
their OD covariance; the ``alpha`` and ``100 - alpha`` percentiles of the angle within it give the
two stain vectors (haematoxylin first: the larger red OD); concentrations of every sampled pixel
by least squares; their 99th percentiles are the slide's maximum concentrations.

Transform (every tile): concentrations scaled to the target's maxima and recombined with the
target stain matrix. Per pixel this is one fixed linear map of the optical density,
``OD' = M OD`` with ``M = HE_ref diag(maxC_ref / maxC) pinv(HE)`` (3 x 3), so a batch costs a
log, three multiply-adds and an exp per value: ``I' = min(255, exp(M log(I + 1) + b))`` with
``b = log(Io) (1 - M 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from wsi_mil.stain.base import FittedStain, StainFitError, StainNormalizer, optical_density
from wsi_mil.stain.transform import mix_channels


@dataclass(frozen=True)
class MacenkoTarget:
    """The reference: ``stain_matrix`` (3, 2) OD unit vectors (columns: haematoxylin, eosin; rows:
    R, G, B), ``max_concentrations`` (2,); and the method's options: ``io`` (transmitted light
    intensity), ``alpha`` (angle percentile, %), ``beta`` (OD threshold of a stained pixel)."""

    stain_matrix: tuple[tuple[float, float], ...] = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
    max_concentrations: tuple[float, float] = (1.9705, 1.0308)
    io: float = 240.0
    alpha: float = 1.0
    beta: float = 0.15

    def to_dict(self) -> dict[str, Any]:
        return {"stain_matrix": [list(r) for r in self.stain_matrix],
                "max_concentrations": list(self.max_concentrations),
                "io": self.io, "alpha": self.alpha, "beta": self.beta}


#: the standard reference of HEnorm_python and torchstain (from Macenko's MATLAB code)
MACENKO_REFERENCE = MacenkoTarget()


class MacenkoFit(FittedStain):
    """One slide's Macenko transform: its ``stain_matrix`` (3, 2) and ``max_concentrations`` (2,)."""

    method = "macenko"

    def __init__(self, stain_matrix: NDArray[np.float64], max_concentrations: NDArray[np.float64],
                 target: MacenkoTarget, n_tissue_pixels: int = 0) -> None:
        super().__init__()
        self.stain_matrix = np.asarray(stain_matrix, dtype=np.float64)
        self.max_concentrations = np.asarray(max_concentrations, dtype=np.float64)
        self.target = target
        self.n_tissue_pixels = int(n_tissue_pixels)

    def od_map(self) -> NDArray[np.float64]:
        """``M`` (3, 3): the slide's optical density -> the target's."""
        ref = np.asarray(self.target.stain_matrix, dtype=np.float64)
        scale = np.asarray(self.target.max_concentrations, dtype=np.float64) / self.max_concentrations
        return ref @ np.diag(scale) @ np.linalg.pinv(self.stain_matrix)

    def params(self) -> dict[str, Any]:
        return {"stain_matrix": self.stain_matrix.tolist(), "max_concentrations": self.max_concentrations.tolist(),
                "n_tissue_pixels": self.n_tissue_pixels}

    def _tensors(self) -> dict[str, NDArray[np.float64]]:
        m = self.od_map()
        return {"m": m, "b": np.log(self.target.io) * (1.0 - m.sum(axis=1))}

    def _apply(self, x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return mix_channels(torch.log1p(x), t["m"], t["b"]).exp_().clamp_(max=255.0)


class Macenko(StainNormalizer):
    """Macenko normalisation onto ``target`` (default: :data:`MACENKO_REFERENCE`)."""

    name = "macenko"

    def __init__(self, target: MacenkoTarget = MACENKO_REFERENCE) -> None:
        self.reference = target

    def target(self) -> dict[str, Any]:
        return {"method": self.name, **self.reference.to_dict()}

    def fit(self, rgb: NDArray[np.uint8], where: str = "") -> MacenkoFit:
        t = self.reference
        od = optical_density(np.asarray(rgb).reshape(-1, 3), t.io)
        odhat = od[~np.any(od < t.beta, axis=1)]
        if len(odhat) < max(self.min_tissue_pixels, 3):
            raise self._too_little_tissue(where, len(odhat), len(od))
        _, eigvecs = np.linalg.eigh(np.cov(odhat.T))
        plane = eigvecs[:, 1:3]  # the two largest eigenvalues (ascending order)
        proj = odhat @ plane
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, t.alpha), np.percentile(phi, 100.0 - t.alpha)
        v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
        v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
        he = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)  # (3, 2): H, E
        sv = np.linalg.svd(he, compute_uv=False)
        if not np.all(np.isfinite(he)) or sv[1] < 1e-3 * sv[0]:
            raise StainFitError(f"{where}: the two stain vectors found for macenko stain normalisation are "
                                f"(nearly) the same ({he.T.round(4).tolist()}): the tissue shows one stain only; "
                                "extract this slide without --stain-norm, or use --stain-norm reinhard")
        conc = np.linalg.lstsq(he, od.T, rcond=None)[0]  # (2, N): every sampled pixel
        max_c = np.array([np.percentile(conc[0], 99), np.percentile(conc[1], 99)])
        if not np.all(np.isfinite(max_c)) or np.any(max_c <= 1e-6):
            raise StainFitError(f"{where}: stain concentrations of {max_c.round(6).tolist()} (99th percentile) "
                                "for macenko stain normalisation: the sampled tissue is (nearly) unstained; "
                                "extract this slide without --stain-norm")
        return MacenkoFit(he, max_c, t, n_tissue_pixels=len(odhat))
