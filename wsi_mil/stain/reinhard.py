"""Reinhard colour transfer (Reinhard et al. 2001) in CIELAB, per slide, vectorised on the device.

Fit (once per slide): the mean and standard deviation (population, as numpy's) of L, a and b
over the tissue pixels of the slide's sample; background (pixels whose optical density is below
``beta`` in every channel: near white in R, G and B) is left out. Transform (every tile): each
LAB channel standardised with the slide's statistics and rescaled to the target's,
``lab' = (lab - mean) / std * std_ref + mean_ref``, then back to sRGB, as torchstain's
``ReinhardNormalizer`` does (there with statistics of the image being normalised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from wsi_mil.stain.base import FittedStain, StainFitError, StainNormalizer, optical_density
from wsi_mil.stain.color import FORWARD, INVERSE, rgb_to_lab
from wsi_mil.stain.transform import mix_channels


@dataclass(frozen=True)
class ReinhardTarget:
    """The reference LAB statistics ``mean``/``std`` (L on 0-100, a, b) and the tissue mask's
    options: ``io`` (transmitted light intensity) and ``beta`` (OD threshold: background is below it
    in every channel). The default was fitted from the tissue of ``CMU-1-Small-Region.svs`` read at
    2 µm/px (:data:`REINHARD_REFERENCE_SOURCE`; a test refits it from that slide)."""

    mean: tuple[float, float, float] = (49.6742, 27.6349, -12.0301)
    std: tuple[float, float, float] = (17.8556, 10.8965, 6.4882)
    io: float = 240.0
    beta: float = 0.15

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "io": self.io, "beta": self.beta}


#: where :data:`REINHARD_REFERENCE` comes from (:meth:`Reinhard.fit` on that image: its tissue pixels)
REINHARD_REFERENCE_SOURCE = "CMU-1-Small-Region.svs (OpenSlide test data, CC0) read whole at 2.0 um/px"
REINHARD_REFERENCE = ReinhardTarget()


class ReinhardFit(FittedStain):
    """One slide's Reinhard transform: its LAB ``mean`` (3,) and ``std`` (3,) over tissue pixels."""

    method = "reinhard"

    def __init__(self, mean: NDArray[np.float64], std: NDArray[np.float64], target: ReinhardTarget,
                 n_tissue_pixels: int = 0) -> None:
        super().__init__()
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.target = target
        self.n_tissue_pixels = int(n_tissue_pixels)

    def params(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "n_tissue_pixels": self.n_tissue_pixels}

    def _tensors(self) -> dict[str, NDArray[np.float64]]:
        gain = np.asarray(self.target.std) / self.std
        shift = np.asarray(self.target.mean) - self.mean * gain
        # lab = A f + c (f: the cube-rooted XYZ); the LAB rescaling, done in f, is one affine map
        k = LAB_INVERSE @ np.diag(gain) @ LAB_FROM_F
        kb = LAB_INVERSE @ (gain * LAB_OFFSET + shift - LAB_OFFSET)
        return {"forward": FORWARD, "inverse": INVERSE * 255.0, "k": k, "kb": kb, **SCALARS}

    def _apply(self, x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        # sRGB [0, 255] -> linear RGB -> XYZ / white -> f (the same steps and knees as color.rgb_to_lab)
        lin = torch.where(x > 0.04045 * 255.0, torch.addcmul(t["dec_b"], x, t["dec_a"]).pow_(2.4), x * t["dec_lo"])
        xyz = mix_channels(lin, t["forward"])
        f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856).pow_(1.0 / 3.0), torch.addcmul(t["f_b"], xyz, t["f_a"]))
        f = mix_channels(f, t["k"], t["kb"])  # standardise and rescale L, a, b
        # f -> XYZ / white -> linear RGB (x 255) -> sRGB on [0, 255] (as color.lab_to_rgb)
        xyz = torch.where(f > 0.2068966, f * f * f, torch.addcmul(t["g_b"], f, t["g_a"]))
        lin = mix_channels(xyz, t["inverse"])
        hi = torch.addcmul(t["enc_b"], lin.clamp(min=0.0031308 * 255.0).mul_(1.0 / 255.0).pow_(1.0 / 2.4), t["enc_a"])
        return torch.where(lin > 0.0031308 * 255.0, hi, lin * 12.92).clamp_(0.0, 255.0)


#: lab = LAB_FROM_F @ f + LAB_OFFSET (L on 0-100, a, b), and its inverse
LAB_FROM_F = np.array([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])
LAB_OFFSET = np.array([-16.0, 0.0, 0.0])
LAB_INVERSE = np.linalg.inv(LAB_FROM_F)
#: the scalar coefficients of the fused transform (0-dim device tensors, so each step is one kernel)
SCALARS = {"dec_a": np.array(1.0 / (255.0 * 1.055)), "dec_b": np.array(0.055 / 1.055), "dec_lo": np.array(1.0 / (255.0 * 12.92)),
           "f_a": np.array(7.787), "f_b": np.array(16.0 / 116.0), "g_a": np.array(1.0 / 7.787),
           "g_b": np.array(-16.0 / 116.0 / 7.787), "enc_a": np.array(1.055 * 255.0), "enc_b": np.array(-0.055 * 255.0)}


def lab_statistics(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and population std (3,) of L, a, b over pixels ``rgb`` (N, 3) uint8 (float64)."""
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float64).reshape(1, -1, 1, 3)).permute(0, 3, 1, 2) / 255.0
    lab = rgb_to_lab(x)[0, :, :, 0].numpy()  # (3, N)
    return lab.mean(axis=1), lab.std(axis=1)


class Reinhard(StainNormalizer):
    """Reinhard normalisation onto ``target`` (default: :data:`REINHARD_REFERENCE`)."""

    name = "reinhard"

    def __init__(self, target: ReinhardTarget = REINHARD_REFERENCE) -> None:
        self.reference = target

    def target(self) -> dict[str, Any]:
        return {"method": self.name, **self.reference.to_dict(), "source": REINHARD_REFERENCE_SOURCE
                if self.reference == REINHARD_REFERENCE else "custom"}

    def tissue(self, rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """The tissue pixels of ``rgb`` (N, 3): OD at or above ``beta`` in at least one channel."""
        rgb = np.asarray(rgb).reshape(-1, 3)
        od = optical_density(rgb, self.reference.io)
        return rgb[np.any(od >= self.reference.beta, axis=1)]

    def fit(self, rgb: NDArray[np.uint8], where: str = "") -> ReinhardFit:
        n = int(np.asarray(rgb).size // 3)
        tissue = self.tissue(rgb)
        if len(tissue) < max(self.min_tissue_pixels, 2):
            raise self._too_little_tissue(where, len(tissue), n)
        mean, std = lab_statistics(tissue)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))) or np.any(std < 1e-3):
            raise StainFitError(f"{where}: the sampled tissue has (nearly) one colour (LAB std "
                                f"{std.round(4).tolist()}): reinhard stain normalisation cannot rescale it; "
                                "extract this slide without --stain-norm")
        return ReinhardFit(mean, std, self.reference, n_tissue_pixels=len(tissue))
