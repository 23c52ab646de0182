"""Hugging Face ``transformers`` ViT / DINOv2 checkpoints -> timm ``VisionTransformer`` state dicts.

Phikon (``ViTModel``), Phikon-v2 and Midnight (``Dinov2Model``) are published in transformers'
layout. These functions rename and fuse their tensors into timm's layout, so the same timm model
(and the same engine) runs them; transformers itself is not needed. Both key layouts are read:
the one the published files use (transformers 4: ``encoder.layer.N.attention.attention.query``,
``intermediate.dense``, ``mlp.weights_in``) and transformers 5's (``layers.N.attention.q_proj``,
``mlp.fc1``, ``mlp.gate_proj`` / ``up_proj``).

Position embeddings stored for another grid (DINOv2 configs often say 518 px) are resampled once,
to the timm model's grid, with the operation transformers applies at every forward (bicubic,
``align_corners=False``, in float32), so the timm model gives the transformers model's output.
``tests/encoders/test_convert.py`` checks that against randomly initialised transformers models.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from wsi_mil.errors import EncoderError

FORMATS = ("timm", "hf_vit", "hf_dinov2")
_WRAPPER_PREFIXES = ("vit.", "dinov2.", "model.")
_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")

# per-layer names (after the layer prefix) -> timm names under blocks.N.
_VIT_LAYER = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2", "mlp.fc2": "mlp.fc2",
}
_DINOV2_LAYER = {
    "norm1": "norm1", "norm2": "norm2",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2", "mlp.down_proj": "mlp.fc2",
}
_QKV = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
        "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v"}
_EMBED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.register_tokens": "reg_token",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
#: tensors of the transformers models that timm's ViT has no use for
_DROPPED = ("embeddings.mask_token", "pooler.")


def _strip_wrapper(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for prefix in _WRAPPER_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def hf_to_timm(sd: Mapping[str, torch.Tensor], fmt: str, source: str,
               grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """A transformers ``ViTModel`` (``fmt="hf_vit"``) or ``Dinov2Model`` (``"hf_dinov2"``) state
    dict -> the matching timm ``VisionTransformer`` state dict.

    ``grid``: the timm model's patch grid (rows, cols); position embeddings for another grid are
    resampled to it as transformers does. Unknown tensors raise :class:`EncoderError` naming them.
    """
    if fmt not in ("hf_vit", "hf_dinov2"):
        raise EncoderError(f"{source}: unknown transformers layout '{fmt}' (expected hf_vit or hf_dinov2)")
    table = _VIT_LAYER if fmt == "hf_vit" else _DINOV2_LAYER
    sd = _strip_wrapper(sd)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    glu: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    foreign: list[str] = []
    for key, value in sd.items():
        if key.startswith(_DROPPED):
            continue
        if key in _EMBED:
            out[_EMBED[key]] = value
            continue
        m = _LAYER.match(key)
        if not m:
            foreign.append(key)
            continue
        i, rest = int(m.group(1)), m.group(2)
        name, _, kind = rest.rpartition(".")  # kind: weight / bias / lambda1
        if name in _QKV:
            qkv.setdefault((i, kind), {})[_QKV[name]] = value
        elif fmt == "hf_dinov2" and name in ("mlp.gate_proj", "mlp.up_proj"):
            glu.setdefault((i, kind), {})[name[4:]] = value
        elif rest in table:  # layer scale: 'layer_scale1.lambda1' has no weight/bias suffix
            out[f"blocks.{i}.{table[rest]}"] = value
        elif name in table:
            out[f"blocks.{i}.{table[name]}.{kind}"] = value
        else:
            foreign.append(key)
    if foreign:
        raise EncoderError(f"{source}: {len(foreign)} tensor(s) are not part of a transformers "
                           f"{'ViT' if fmt == 'hf_vit' else 'DINOv2'} model (e.g. {', '.join(sorted(foreign)[:3])}); "
                           "is this the right checkpoint for the entry?")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise EncoderError(f"{source}: layer {i} lacks attention {kind} tensor(s) "
                               f"{', '.join(sorted({'q', 'k', 'v'} - set(parts)))}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    for (i, kind), parts in glu.items():
        if set(parts) != {"gate_proj", "up_proj"}:
            raise EncoderError(f"{source}: layer {i} has only one of the SwiGLU gate/up {kind} tensors")
        # timm's SwiGLUPacked computes silu(first half) * second half of one packed fc1
        out[f"blocks.{i}.mlp.fc1.{kind}"] = torch.cat([parts["gate_proj"], parts["up_proj"]], dim=0)
    if grid is not None and "pos_embed" in out:
        out["pos_embed"] = resample_like_transformers(out["pos_embed"], grid)
    return out


def resample_like_transformers(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + h*w, D) class + patch position embeddings -> (1, 1 + rows*cols, D) for ``grid``.

    Bicubic, ``align_corners=False``, in float32: transformers' ``interpolate_pos_encoding``.
    """
    n = pos_embed.shape[1] - 1
    side = int(math.isqrt(n))
    rows, cols = grid
    if side * side != n or (side, side) == (rows, cols):
        return pos_embed
    dim = pos_embed.shape[-1]
    patch = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch.to(torch.float32), size=(rows, cols), mode="bicubic", align_corners=False)
    patch = patch.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


def check_hf_config(config: Mapping[str, object], fmt: str, model: torch.nn.Module, source: str) -> None:
    """Refuse a transformers ``config.json`` whose shape differs from the timm model's.

    Compares the model type and the width, depth, heads, patch size and MLP kind; names each
    difference in one line.
    """
    want_type = "vit" if fmt == "hf_vit" else "dinov2"
    got_type = str(config.get("model_type", ""))
    if got_type and got_type != want_type:
        raise EncoderError(f"{source}: config.json is for a transformers '{got_type}' model; this entry reads "
                           f"'{want_type}' weights")
    blocks = getattr(model, "blocks", None)
    block0 = blocks[0] if blocks is not None and len(blocks) else None
    expected: dict[str, object] = {
        "hidden_size": getattr(model, "embed_dim", None),
        "num_hidden_layers": len(blocks) if blocks is not None else None,
        "num_attention_heads": getattr(getattr(block0, "attn", None), "num_heads", None),
        "patch_size": getattr(getattr(model, "patch_embed", None), "patch_size", (None,))[0],
    }
    if fmt == "hf_dinov2" and block0 is not None:
        expected["use_swiglu_ffn"] = type(block0.mlp).__name__ == "GluMlp"
    diffs = [f"{k} {config[k]!r} (entry: {v!r})" for k, v in expected.items()
             if v is not None and k in config and config[k] != v]
    if diffs:
        raise EncoderError(f"{source}: config.json does not describe this entry's model: {'; '.join(diffs)}")
