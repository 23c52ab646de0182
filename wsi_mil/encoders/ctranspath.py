"""CTransPath in today's timm: a Swin-T whose patch embedding is a small convolutional stem.

CTransPath (Wang et al., Medical Image Analysis 2022; the weights TRIDENT loads are CHIEF's
``CHIEF_CTransPath.pth``) was built on timm 0.5.4's ``swin_tiny_patch4_window7_224`` with
``embed_layer=ConvStem``. :class:`ConvStem` has the same tensors (``patch_embed.proj.{0,1,3,4,6}``,
``patch_embed.norm``) and gives timm 1.0's Swin the (B, H/4, W/4, D) layout it expects.
:func:`ctranspath_to_timm` maps the old checkpoint onto timm 1.0's Swin with timm's own filter
(downsampling moved from the end of a stage to the start of the next, buffers dropped).
``tests/encoders/test_ctranspath.py`` checks the result against timm 0.5.4 (``timm-ctp``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from wsi_mil.errors import EncoderError


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ConvStem(nn.Module):
    """(B, 3, H, W) -> (B, H/4, W/4, D): two 3x3 stride-2 conv + BN + ReLU, a 1x1 conv, a norm.

    Takes the keyword arguments timm's Swin passes to its ``embed_layer`` (``patch_size`` must
    be 4; ``output_fmt`` must be ``NHWC``, the layout timm 1.0's Swin uses).
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 4,
                 in_chans: int = 3, embed_dim: int = 96, norm_layer: Callable[[int], nn.Module] | None = None,
                 strict_img_size: bool = True, output_fmt: str = "NHWC", **_: Any) -> None:
        super().__init__()
        if _pair(patch_size) != (4, 4) or embed_dim % 8 or output_fmt != "NHWC":
            raise EncoderError(f"CTransPath's ConvStem needs patch_size 4, a width divisible by 8 and NHWC output "
                               f"(got {patch_size}, {embed_dim}, {output_fmt})")
        self.img_size = _pair(img_size)
        self.patch_size = (4, 4)
        self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        layers: list[nn.Module] = []
        width_in, width_out = in_chans, embed_dim // 8
        for _stage in range(2):
            layers += [nn.Conv2d(width_in, width_out, kernel_size=3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width_out), nn.ReLU(inplace=True)]
            width_in, width_out = width_out, width_out * 2
        layers.append(nn.Conv2d(width_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def ctranspath_to_timm(state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """A timm 0.5.4 CTransPath state dict -> timm 1.0's Swin (``model``) layout."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    if "layers.0.downsample.reduction.weight" not in state_dict and "layers.1.downsample.reduction.weight" not in state_dict:
        raise EncoderError(f"{source}: not a Swin checkpoint (no layers.N.downsample tensors); is it CTransPath's?")
    return dict(checkpoint_filter_fn(dict(state_dict), model))
