"""Build an entry's timm model (on any device, the meta device included) and its pooling.

``build_backbone(entry)`` is ``timm.create_model(entry.timm_arch, num_classes=0, **kwargs)``
with the entry's keyword arguments resolved (``mlp_layer="swiglu_packed"`` ->
``timm.layers.SwiGLUPacked``, ``act_layer="silu"`` -> ``nn.SiLU``, ``norm_eps=E`` ->
``norm_layer=partial(nn.LayerNorm, eps=E)``, ``embed_layer="ctranspath_convstem"`` ->
:class:`~wsi_mil.encoders.ctranspath.ConvStem`). On ``device="meta"`` no memory is allocated: the
tests count a ViT-g's 1.1 billion parameters that way.

``with_pooling(backbone, entry)`` wraps the backbone when the entry's pooling is not the
model's own: :class:`ClsMeanPool` gives (B, 2D) = [class token, mean of the patch tokens];
``conch_attn`` is CONCH v1.5's attentional pooler (:class:`~wsi_mil.encoders.conch.ConchVisionTower`),
which has weights of its own: the factory wraps the backbone before loading (:func:`pooling_has_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from torch import nn

from wsi_mil.encoders.entry import EncoderEntry
from wsi_mil.errors import EncoderError

POOLINGS = ("model", "cls+mean", "conch_attn")
#: poolings with tensors of their own, loaded with the backbone from the publisher's file
WEIGHTED_POOLINGS = ("conch_attn",)
#: timm families whose constructors take ``weight_init="skip"``
_SKIP_INIT = ("vit_", "swin_")


def resolve_timm_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The entry's JSON-like keyword arguments as ``timm.create_model`` takes them."""
    import timm.layers

    out = dict(kwargs)
    if out.get("mlp_layer") == "swiglu_packed":
        out["mlp_layer"] = timm.layers.SwiGLUPacked
    if out.get("act_layer") == "silu":
        out["act_layer"] = nn.SiLU
    if out.get("embed_layer") == "ctranspath_convstem":
        from wsi_mil.encoders.ctranspath import ConvStem

        out["embed_layer"] = ConvStem
    if "norm_eps" in out:
        out["norm_layer"] = partial(nn.LayerNorm, eps=float(out.pop("norm_eps")))
    return out


def build_backbone(entry: EncoderEntry, device: str | torch.device | None = None, name: str | None = None,
                   **extra: Any) -> nn.Module:
    """``entry``'s timm model with ``num_classes=0`` (random init unless ``extra`` says otherwise).

    ``device="meta"`` builds it without memory (shapes and parameter counts only). ``name``: the
    timm name to create (e.g. ``arch.tag`` for timm's pretrained weights), default the entry's.
    """
    import timm

    kwargs = {**resolve_timm_kwargs(entry.timm_kwargs), **extra}
    kwargs.setdefault("pretrained", False)
    if device is not None and torch.device(device).type == "meta" and entry.timm_arch.startswith(_SKIP_INIT):
        kwargs.setdefault("weight_init", "skip")  # nothing to initialise on the meta device (3x faster for a ViT-g)
    try:
        with torch.device(device) if device is not None else nullcontext():
            return timm.create_model(name or entry.timm_arch, num_classes=0, **kwargs)
    except EncoderError:
        raise
    except Exception as exc:  # timm's own errors (bad kwargs, unloadable weights)
        msg = " ".join(str(exc).split())[:300]
        raise EncoderError(f"encoder '{entry.name}': timm cannot build '{entry.timm_arch}' "
                           f"({type(exc).__name__}: {msg})") from exc


class ClsMeanPool(nn.Module):
    """[class token, mean of the patch tokens] of a timm ViT: (B, 3, H, W) -> (B, 2D).

    The backbone is built with ``global_pool=""`` or not; either way its ``forward_features``
    gives (B, T, D) tokens after the final norm, the first ``num_prefix_tokens`` of which are
    the class token and the register tokens (left out of the mean).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        prefix = getattr(backbone, "num_prefix_tokens", None)
        if not isinstance(prefix, int) or not getattr(backbone, "has_class_token", True):
            raise EncoderError(f"cls+mean pooling needs a timm ViT with a class token, not {type(backbone).__name__}")
        self.backbone: Any = backbone  # a timm VisionTransformer (forward_features: (B, T, D))
        self.num_prefix_tokens = prefix
        width = int(getattr(backbone, "embed_dim", None) or backbone.num_features)  # type: ignore[arg-type]
        self.num_features = self.head_hidden_size = 2 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)
        return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)


def pooling_has_weights(entry: EncoderEntry) -> bool:
    """True when ``entry``'s pooling has tensors of its own (wrap before loading the weights)."""
    return entry.pooling in WEIGHTED_POOLINGS


def with_pooling(backbone: nn.Module, entry: EncoderEntry) -> nn.Module:
    """``backbone`` read out with ``entry.pooling`` (``model``: as built; ``cls+mean``: :class:`ClsMeanPool`;
    ``conch_attn``: :class:`~wsi_mil.encoders.conch.ConchVisionTower`, returned as is when already wrapped)."""
    if entry.pooling == "model":
        return backbone
    if entry.pooling == "cls+mean":
        return ClsMeanPool(backbone)
    if entry.pooling == "conch_attn":
        from wsi_mil.encoders.conch import ConchVisionTower

        return backbone if isinstance(backbone, ConchVisionTower) else ConchVisionTower(backbone)
    raise EncoderError(f"encoder '{entry.name}': unknown pooling '{entry.pooling}' (choose {', '.join(POOLINGS)})")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(int(p.numel()) for p in model.parameters())
