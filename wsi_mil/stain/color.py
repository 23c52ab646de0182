"""sRGB <-> CIELAB (D65 white) for (B, 3, H, W) tensors, with the constants torchstain uses.

sRGB on [0, 1] -> linear RGB -> XYZ (scaled by the reference white) -> L on [0, 100], a, b
(unscaled, centred on 0). The thresholds are those of torchstain / scikit-image (0.04045,
0.008856, 0.2068966, 0.0031308), so the round trip matches their Reinhard normaliser.
"""

from __future__ import annotations

import numpy as np
import torch

from wsi_mil.stain.transform import mix_channels

RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
WHITE = np.array([0.95047, 1.0, 1.08883])
#: linear RGB -> XYZ / white, and its inverse
FORWARD = RGB_TO_XYZ / WHITE[:, None]
INVERSE = np.linalg.inv(RGB_TO_XYZ) * WHITE[None, :]


def _const(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def rgb_to_lab(rgb: torch.Tensor, forward: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, H, W) sRGB on [0, 1] -> (B, 3, H, W) L (0-100), a, b.

    ``forward``: :data:`FORWARD` already on ``rgb``'s device and dtype (saves a copy per call).
    """
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    xyz = mix_channels(lin, _const(FORWARD, rgb) if forward is None else forward)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856).pow(1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, H, W) L, a, b -> sRGB on [0, 1] (clamped); ``inverse``: :data:`INVERSE` on the device."""
    fy = (lab[:, 0:1] + 16.0) / 116.0
    f = torch.cat([lab[:, 1:2] / 500.0 + fy, fy, fy - lab[:, 2:3] / 200.0], dim=1)
    xyz = torch.where(f > 0.2068966, f.pow(3), (f - 16.0 / 116.0) / 7.787)
    lin = mix_channels(xyz, _const(INVERSE, lab) if inverse is None else inverse)
    srgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0.0031308).pow(1.0 / 2.4) - 0.055, 12.92 * lin)
    return srgb.clamp_(0.0, 1.0)
