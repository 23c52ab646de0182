"""Batched pixelwise colour transforms on the device: layouts, dtypes and the 3x3 colour mixing.

A transform is written once, for (B, 3, H, W) float pixels on [0, 255]; :func:`apply_pixelwise`
adapts any input to it: (B, H, W, 3) (the extract loader's uint8 tiles), (B, 3, H, W), or a
single (H, W, 3) / (3, H, W) image; uint8, float16/bfloat16 (computed in float32), float32 or
float64; and gives back the input's layout and dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def channel_axis_last(x: torch.Tensor, channels_last: bool | None = None) -> bool:
    """Whether the colour axis of ``x`` (3 or 4 dims) is the last one (else the first after the batch).

    ``channels_last`` None: the last axis if it has 3 entries, else the first colour axis; neither: ValueError.
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (B, H, W, 3), (B, 3, H, W) or one image, got shape {tuple(x.shape)}")
    first = 0 if x.ndim == 3 else 1
    if channels_last is None:
        if x.shape[-1] == 3:
            return True
        if x.shape[first] == 3:
            return False
        raise ValueError(f"no colour axis of 3 in shape {tuple(x.shape)}")
    size = x.shape[-1] if channels_last else x.shape[first]
    if size != 3:
        raise ValueError(f"shape {tuple(x.shape)}: the colour axis has {size} entries, not 3")
    return bool(channels_last)


def apply_pixelwise(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], channels_last: bool | None = None,
                    scale: float = 255.0) -> torch.Tensor:
    """``fn`` (on (B, 3, H, W) float pixels on [0, 255]) applied to ``x`` in its own layout and dtype.

    uint8 ``x``: the result is clamped to [0, 255] and truncated to uint8. Float ``x`` holds pixels
    on [0, ``scale``] and the result comes back on that scale, unquantised.
    """
    last = channel_axis_last(x, channels_last)
    single = x.ndim == 3
    if single:
        x = x.unsqueeze(0)
    if last:
        x = x.permute(0, 3, 1, 2)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.dtype == torch.uint8:
        y = fn(x.to(work))
        out = y.clamp_(0.0, 255.0).to(torch.uint8)
    elif x.dtype.is_floating_point:
        k = 255.0 / float(scale)
        y = fn(x.to(work) * k if k != 1.0 else x.to(work))
        out = (y * (1.0 / k) if k != 1.0 else y).to(x.dtype)
    else:
        raise ValueError(f"pixels of dtype {x.dtype}: give uint8 or floating-point tiles")
    if last:
        out = out.permute(0, 2, 3, 1).contiguous()
    return out[0] if single else out


def mix_channels(x: torch.Tensor, m: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``m @ pixel (+ bias)`` for every pixel of ``x`` (B, 3, H, W); ``m`` (3, 3), ``bias`` (3,).

    Three broadcast multiply-adds (three kernels, the bias folded into the first) in the input's
    precision: no TF32 matmul or convolution path, which would round the mixing on recent GPUs.
    """
    cols = m.t().reshape(3, 1, 3, 1, 1)  # cols[j] = column j of m, shaped (1, 3, 1, 1)
    out = x[:, 0:1] * cols[0] if bias is None else torch.addcmul(bias.view(1, 3, 1, 1), x[:, 0:1], cols[0])
    out = torch.addcmul(out, x[:, 1:2], cols[1])
    return out.addcmul_(x[:, 2:3], cols[2])
