"""Batched SimCLR augmentations for histology tiles, run on the training device.

Tiles arrive as uint8 (B, S, S, 3) tensors (as read from a patch store) and leave as float32
(B, 3, H, W) views normalised with the encoder's mean/std. Every op draws its random parameters
per sample from a ``torch.Generator`` on the CPU (a few numbers per tile), so a view depends only
on the tile and the generator's seed, whatever the device, and the pixel work is a handful of
batched kernels:

- random resized crop, flips and 90-degree rotations: one affine ``grid_sample`` (bilinear);
- HED stain jitter (Tellez et al. 2018): per-sample 3x3 map + offset in optical density space;
- colour jitter (brightness, contrast, saturation, hue): one per-sample 3x3 map + offset in RGB
  (hue is a rotation of the YIQ chroma plane; the ops are composed exactly and clamped once);
- random grayscale; Gaussian blur with a per-sample sigma (separable grouped convolution).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from wsi_mil.ssl.config import AugmentConfig

#: skimage's stain vectors (rows: haematoxylin, eosin, DAB) and their inverse
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
#: skimage's rgb2hed divides optical density by -log(1e-6); hed_beta is in those units
HED_UNIT = -math.log(1e-6)
OD_EPS = 1e-6

_LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    dtype=torch.float64,
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def to_float_images(tiles: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S, 3) or (B, 3, S, S) -> float32 (B, 3, S, S) in [0, 1].

    A float input in channels-first layout is returned as float32 unchanged.
    """
    if tiles.ndim != 4:
        raise ValueError(f"expected a 4-D batch of tiles, got shape {tuple(tiles.shape)}")
    if tiles.dtype == torch.uint8:
        if tiles.shape[-1] == 3 and tiles.shape[1] != 3:
            tiles = tiles.permute(0, 3, 1, 2)
        return tiles.float().div_(255.0)
    if tiles.shape[1] != 3:
        raise ValueError(f"float tiles must be (B, 3, H, W), got {tuple(tiles.shape)}")
    return tiles.float()


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo


def _coin(gen: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) < p


def crop_flip_rotate(
    x: torch.Tensor, out_size: int, cfg: AugmentConfig, gen: torch.Generator
) -> torch.Tensor:
    """Random resized crop + flip + 90-degree rotation in one bilinear resampling.

    x: (B, 3, H, W) float. Returns (B, 3, out_size, out_size). The crop covers ``crop_scale`` of
    the tile's area with aspect ratio in ``crop_ratio`` (clipped to the tile), at a uniform
    random position.
    """
    b = x.shape[0]
    area = _uniform(gen, b, *cfg.crop_scale)
    log_r = _uniform(gen, b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # fraction of the tile's width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (_uniform(gen, b, -1.0, 1.0)) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (_uniform(gen, b, -1.0, 1.0)) * (1 - h)
    fx = torch.where(_coin(gen, b, 0.5 if cfg.flip else 0.0), -1.0, 1.0).double()
    k = torch.randint(0, 4 if cfg.rot90 else 1, (b,), generator=gen)
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)[k]
    # theta maps output coords to input coords: diag(w, h) @ R(k) @ diag(fx, 1), then + (cx, cy)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = w * cos * fx
    theta[:, 0, 1] = -w * sin
    theta[:, 1, 0] = h * sin * fx
    theta[:, 1, 1] = h * cos
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [b, 3, out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def hed_jitter(
    x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """Stain jitter: in HED space, ``s' = alpha * s + beta`` per sample and stain.

    x: (B, 3, H, W) float RGB in [0, 1]; alpha, beta: (B, 3) float64 (beta in skimage rgb2hed
    units). alpha = 1, beta = 0 is the identity (up to the 1e-6 floor on intensities).
    """
    b = x.shape[0]
    # optical density od (per pixel, row vector) = hed @ RGB_FROM_HED; hed = od @ HED_FROM_RGB
    m = HED_FROM_RGB.unsqueeze(0) * alpha.unsqueeze(1) @ RGB_FROM_HED  # (B, 3, 3), od -> od'
    off = (beta * HED_UNIT) @ RGB_FROM_HED  # (B, 3)
    m = m.transpose(1, 2).to(device=x.device, dtype=x.dtype)  # column form: od'_c = sum_j m[c, j] od_j
    off = off.to(device=x.device, dtype=x.dtype).view(b, 3, 1, 1)
    od = -torch.log(x.clamp(min=OD_EPS))
    od = torch.einsum("bij,bjhw->bihw", m, od) + off
    return torch.exp(-od)


def color_jitter_matrices(
    brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor
) -> torch.Tensor:
    """Per-sample linear part of colour jitter (B, 3, 3), column form, float64.

    brightness, contrast, saturation: factors (1 = unchanged); hue: shift in turns (0 = unchanged).
    The offset from contrast is added separately (see :func:`color_jitter`).
    """
    b = brightness.shape[0]
    eye = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
    gray = torch.ones(3, 1, dtype=torch.float64) @ _LUMA.view(1, 3)  # x -> gray(x) * (1,1,1)
    sat = saturation.view(b, 1, 1) * eye + (1 - saturation).view(b, 1, 1) * gray
    ang = hue * 2 * math.pi
    rot = torch.zeros(b, 3, 3, dtype=torch.float64)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1] = torch.cos(ang)
    rot[:, 1, 2] = -torch.sin(ang)
    rot[:, 2, 1] = torch.sin(ang)
    rot[:, 2, 2] = torch.cos(ang)
    hue_m = _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ
    return hue_m @ sat * (brightness * contrast).view(b, 1, 1)


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """Brightness, contrast (blend with the image's mean gray), saturation, hue, in that order.

    x: (B, 3, H, W) float; factors (B,) float64. The composition is exact (no clamping between
    ops); saturation and hue keep gray pixels gray, so the contrast offset passes through them.
    """
    b = x.shape[0]
    m = color_jitter_matrices(brightness, contrast, saturation, hue).to(device=x.device, dtype=x.dtype)
    luma = _LUMA.to(device=x.device, dtype=x.dtype)
    mean_gray = torch.einsum("c,bchw->b", luma, x) / (x.shape[2] * x.shape[3])
    off = ((1 - contrast) * brightness).to(device=x.device, dtype=x.dtype) * mean_gray
    return torch.einsum("bij,bjhw->bihw", m, x) + off.view(b, 1, 1, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Per-sample Gaussian blur; sigma (B,) float64 in pixels, 0 = unchanged.

    Separable grouped convolution with a kernel of ``2 * ceil(3 * max_sigma) + 1`` taps (at most
    the image side, odd), reflect padding.
    """
    b, c, h, w = x.shape
    radius = min(int(math.ceil(3 * max_sigma)), (min(h, w) - 1) // 2)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s = sigma.clamp(min=1e-6).view(b, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    k = k.to(device=x.device, dtype=x.dtype).repeat_interleave(c, dim=0)  # (B*C, K)
    n = 2 * radius + 1
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, n), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, n, 1), groups=b * c)
    return y.view(b, c, h, w)


class SimCLRAugment:
    """Random views of a batch of tiles: ``augment(tiles, gen) -> (B, 3, size, size)`` float32.

    ``mean``/``std`` (3,) normalise the output (the encoder's data config); the output values are
    ``(v - mean) / std`` for v in [0, 1].
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        out_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        self.cfg = cfg
        self.out_size = int(out_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def views01(self, tiles: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One random view per tile, (B, 3, size, size) float32 in [0, 1] (not normalised)."""
        cfg = self.cfg
        x = to_float_images(tiles)
        b = x.shape[0]
        x = crop_flip_rotate(x, self.out_size, cfg, gen)
        if cfg.hed_p > 0:
            on = _coin(gen, b, cfg.hed_p).view(b, 1)
            alpha = _uniform(gen, 3 * b, 1 - cfg.hed_alpha, 1 + cfg.hed_alpha).view(b, 3)
            beta = _uniform(gen, 3 * b, -cfg.hed_beta, cfg.hed_beta).view(b, 3)
            alpha = torch.where(on, alpha, torch.ones_like(alpha))
            beta = torch.where(on, beta, torch.zeros_like(beta))
            x = hed_jitter(x, alpha, beta).clamp_(0.0, 1.0)
        if cfg.color_p > 0:
            on = _coin(gen, b, cfg.color_p)
            one = torch.ones(b, dtype=torch.float64)
            bri = torch.where(on, _uniform(gen, b, 1 - cfg.brightness, 1 + cfg.brightness), one)
            con = torch.where(on, _uniform(gen, b, 1 - cfg.contrast, 1 + cfg.contrast), one)
            sat = torch.where(on, _uniform(gen, b, 1 - cfg.saturation, 1 + cfg.saturation), one)
            hue = torch.where(on, _uniform(gen, b, -cfg.hue, cfg.hue), 0 * one)
            x = color_jitter(x, bri, con, sat, hue).clamp_(0.0, 1.0)
        if cfg.grayscale_p > 0:
            on = _coin(gen, b, cfg.grayscale_p).to(x.device).view(b, 1, 1, 1)
            luma = _LUMA.to(device=x.device, dtype=x.dtype)
            gray = torch.einsum("c,bchw->bhw", luma, x).unsqueeze(1).expand_as(x)
            x = torch.where(on, gray, x)
        if cfg.blur_p > 0:
            on = _coin(gen, b, cfg.blur_p)
            sigma = torch.where(on, _uniform(gen, b, *cfg.blur_sigma), torch.zeros(b, dtype=torch.float64))
            if bool(on.any()):
                x = gaussian_blur(x, sigma, cfg.blur_sigma[1])
        return x

    def __call__(self, tiles: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One normalised random view per tile: (B, 3, size, size) float32."""
        x = self.views01(tiles, gen)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
