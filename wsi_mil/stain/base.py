"""What every stain normaliser shares: the fit error, the optical density, the fitted-transform base.

A :class:`StainNormalizer` holds a fixed reference target (a constant, recorded in feature files);
:meth:`StainNormalizer.fit` turns one slide's sampled pixels into a :class:`FittedStain`, the
per-slide transform that maps that slide's colours onto the target. Fitting runs once per slide on
the CPU in float64 (numpy); the fitted transform runs batched on the extraction device in float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from wsi_mil.errors import WsiMilError
from wsi_mil.stain.transform import apply_pixelwise


class StainFitError(WsiMilError):
    """A slide's stain parameters cannot be fitted (too little tissue, degenerate stain vectors)."""


def optical_density(rgb: NDArray[Any], io: float) -> NDArray[np.float64]:
    """Optical density ``-log((I + 1) / io)`` of (..., 3) pixels on [0, 255], float64 (same shape).

    The +1 keeps black pixels finite; pixels brighter than ``io - 1`` get a small negative OD.
    """
    return -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / float(io))


class FittedStain(ABC):
    """One slide's fitted stain transform: pixelwise, so a batch gives the same as its tiles alone.

    Device copies of the small parameter tensors are cached per (device, dtype); they are not
    pickled (a fitted transform travels to device processes and Dask workers as numpy arrays).
    """

    method: str = ""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, torch.dtype], dict[str, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The fitted per-slide parameters as plain JSON values (recorded in the feature file)."""

    @abstractmethod
    def _tensors(self) -> dict[str, NDArray[np.float64]]:
        """The numpy arrays :meth:`_apply` needs (moved to the device once and cached)."""

    @abstractmethod
    def _apply(self, x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 3, H, W) float pixels on [0, 255] -> the same, normalised, unquantised."""

    def tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """:meth:`_tensors` on ``device`` as ``dtype`` (cached: no host-device copy per batch)."""
        key = (str(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            cuda = torch.device(device).type == "cuda"
            # from pinned memory without blocking: a pageable copy would wait for the device's queue
            cached = self._cache[key] = {
                k: (torch.as_tensor(v, dtype=dtype).pin_memory().to(device, non_blocking=True) if cuda
                    else torch.as_tensor(v, dtype=dtype).to(device))
                for k, v in self._tensors().items()}
        return cached

    def __call__(self, x: torch.Tensor, channels_last: bool | None = None, scale: float = 255.0) -> torch.Tensor:
        """Normalise a batch on its own device: (B, H, W, 3) or (B, 3, H, W), or one (H, W, 3)/(3, H, W) image.

        uint8 in: uint8 out on [0, 255], truncated as the reference implementations do. Float in:
        float out of the same dtype on the input's scale (``scale``: 255.0 for [0, 255], 1.0 for
        [0, 1]), not quantised. ``channels_last`` None: the layout whose last (else first colour)
        axis has 3 entries, last preferred.
        """
        return apply_pixelwise(x, self._apply_any, channels_last=channels_last, scale=scale)

    def _apply_any(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return self._apply(x, self.tensors(x.device, dtype))


class StainNormalizer(ABC):
    """A stain normalisation method with its fixed reference target.

    ``name``: the method (``macenko``, ``reinhard``); :meth:`target` the target as JSON values.
    """

    name: str = ""
    #: fewest tissue pixels a slide's sample must hold for a fit
    min_tissue_pixels: int = 4096

    @abstractmethod
    def target(self) -> dict[str, Any]:
        """The reference target and the method's options, as plain JSON values."""

    @abstractmethod
    def fit(self, rgb: NDArray[np.uint8], where: str = "") -> FittedStain:
        """Fit one slide from its sampled pixels ``rgb`` (N, 3) uint8; ``where`` names the slide in errors.

        Raises :class:`StainFitError` (one line naming ``where``) when the sample holds fewer
        than :attr:`min_tissue_pixels` tissue pixels or the fit is degenerate.
        """

    def _too_little_tissue(self, where: str, found: int, total: int) -> StainFitError:
        return StainFitError(
            f"{where}: only {found} tissue pixels in the {total} pixels sampled for {self.name} stain "
            f"normalisation (need >= {self.min_tissue_pixels}): the slide has too little stained tissue; "
            "extract it without --stain-norm, or check its tiling")
