"""CONCH v1.5's vision tower: a timm ViT-L/16 read out by an attentional pooler, as its publisher builds it.

The publisher's loader (TRIDENT ``trident/patch_encoder_models/model_zoo/conchv1_5/conchv1_5.py``,
``CONCHVisionTower``; the file ``pytorch_model_vision.bin`` of ``MahmoodLab/conchv1_5``) is:

- ``trunk``: ViT-L/16 (1024 wide, 24 blocks, 16 heads, MLP ratio 4, qkv bias, layer scale with
  ``init_values=1.0``, class token, final LayerNorm eps 1e-6): timm's ``vit_large_patch16_224``
  with the same tensor names. Built at 224 px; fed 448 px tiles (ImageNet mean/std, bilinear).
- ``attn_pool_contrast``: one learnt query (768-d) attends, with 8 heads, over *all* the trunk's
  tokens after its final norm (class token included): LayerNorm on the tokens (``ln_k``) and on
  the query (``ln_q``), bias-free ``to_q`` (768 -> 768), ``to_kv`` (1024 -> 2 x 768), softmax of
  ``q k^T / sqrt(96)``, bias-free ``to_out`` (768 -> 768): :class:`AttentionalPooler`.
- ``ln_contrast``: LayerNorm (768) of the pooled query: the 768-d feature.

Position embeddings: the publisher first resizes the checkpoint's to its 14 x 14 grid (timm's
``resample_abs_pos_embed``, bilinear, no antialias; a no-op when they are already 14 x 14), then
at every forward interpolates them to the input's grid with DINO's formula (bicubic, scale
factor ``(grid + 0.1) / 14``, ``align_corners=False``). :func:`publisher_pos_embed` applies both
once, at load, for the 28 x 28 grid of 448 px tiles, so the timm model built at 448 px gives the
publisher's output (its input size is fixed: another size is refused by timm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsi_mil.errors import EncoderError

#: the patch grid the publisher's trunk is built with (224 px / 16 px patches)
PUBLISHER_GRID = (14, 14)
#: the tensor groups of the publisher's checkpoint (``CONCHVisionTower.state_dict()``)
PREFIXES = ("trunk.", "attn_pool_contrast.", "ln_contrast.")


class AttentionalPooler(nn.Module):
    """Learnt queries attending over tokens: (B, N, context_dim) -> (B, n_queries, d_model).

    CoCa's / CONCH's pooler: ``to_out(softmax(q k^T * dim_head**-0.5) v)`` with
    ``q = to_q(ln_q(query))`` and ``k, v = to_kv(ln_k(tokens))`` split into ``n_head`` heads.
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        if d_model % n_head:
            raise EncoderError(f"attentional pooler: width {d_model} is not divisible by {n_head} heads")
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)  # (B, Q, D)
        k, v = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)  # (B, N, D) each
        heads = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, heads, L, D / heads)
            return t.reshape(b, t.shape[1], heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))  # scale: dim_head ** -0.5
        return self.to_out(out.transpose(1, 2).reshape(b, q.shape[1], -1))


class ConchVisionTower(nn.Module):
    """CONCH v1.5's vision tower over a timm ViT ``trunk``: (B, 3, H, W) -> (B, width).

    ``trunk.forward_features`` gives (B, T, C) tokens after the final norm; the pooler reads all
    of them; ``ln_contrast`` normalises the pooled query. Tensor names are the publisher's.
    """

    def __init__(self, trunk: nn.Module, width: int = 768, heads: int = 8) -> None:
        super().__init__()
        context = getattr(trunk, "embed_dim", None)
        if not isinstance(context, int) or not hasattr(trunk, "forward_features"):
            raise EncoderError(f"CONCH's attentional pooling needs a timm ViT trunk, not {type(trunk).__name__}")
        self.trunk: Any = trunk  # a timm VisionTransformer (forward_features: (B, T, C))
        first = next(trunk.parameters(), None)
        with torch.device(first.device if first is not None else "cpu"):  # the meta device stays meta
            self.attn_pool_contrast = AttentionalPooler(width, context, n_head=heads, n_queries=1)
            self.ln_contrast = nn.LayerNorm(width)
        self.num_features = self.head_hidden_size = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


def publisher_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + h*w, C) class + patch position embeddings -> (1, 1 + rows*cols, C) for ``grid``,
    as the publisher's model uses them (see the module docstring), computed in float32."""
    from timm.layers import resample_abs_pos_embed

    base = PUBLISHER_GRID
    n = pos_embed.shape[1] - 1 if pos_embed.ndim == 3 else -1
    if pos_embed.shape[0] != 1 or n < 1 or math.isqrt(n) ** 2 != n:
        raise EncoderError(f"position embeddings of shape {tuple(pos_embed.shape)}: expected (1, 1 + n*n, width)")
    dtype = pos_embed.dtype
    pos = pos_embed.to(torch.float32)
    if pos.shape[1] != 1 + base[0] * base[1]:  # the publisher's load-time resize to its 14 x 14 grid
        pos = resample_abs_pos_embed(pos, new_size=list(base), num_prefix_tokens=1, interpolation="bilinear",
                                     antialias=False, verbose=False)
    rows, cols = grid
    if (rows, cols) == base:  # the publisher's forward skips the interpolation for its own grid
        return pos.to(dtype)
    side, dim = base[0], pos.shape[-1]
    patch = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
    if tuple(patch.shape[-2:]) != (rows, cols):
        raise EncoderError(f"position embeddings: DINO interpolation gave {tuple(patch.shape[-2:])}, not {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([pos[:, :1], patch], dim=1).to(dtype)


def conch_to_timm(state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """The publisher's ``pytorch_model_vision.bin`` tensors -> ``model`` (:class:`ConchVisionTower`).

    The names are already the model's; the position embeddings are brought to the model's grid
    with :func:`publisher_pos_embed`. Missing, foreign or misshapen tensors are left to the strict
    check of :func:`~wsi_mil.encoders.weights.load_into`, which names them.
    """
    if not isinstance(model, ConchVisionTower):
        raise EncoderError(f"{source}: CONCH v1.5 weights need the CONCH vision tower, not {type(model).__name__}")
    groups = {p: sum(k.startswith(p) for k in state_dict) for p in PREFIXES}
    if not groups["attn_pool_contrast."] or not groups["trunk."]:
        some = ", ".join(sorted(state_dict)[:3]) or "none"
        raise EncoderError(f"{source}: not CONCH v1.5's vision tower (no trunk.* and attn_pool_contrast.* tensors; "
                           f"found e.g. {some}); use pytorch_model_vision.bin of MahmoodLab/conchv1_5")
    out = dict(state_dict)
    if "trunk.pos_embed" in out:
        grid = tuple(int(g) for g in model.trunk.patch_embed.grid_size)
        out["trunk.pos_embed"] = publisher_pos_embed(out["trunk.pos_embed"], (grid[0], grid[1]))
    return out
