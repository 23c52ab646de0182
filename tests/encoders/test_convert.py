"""Phikon / Phikon-v2 / Midnight weights in transformers' layout -> the timm entry, checked by a round
trip against randomly initialised transformers models built from the same config (transformers
is only a test dependency: the conversion does not use it)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import transformers  # the dev extra; the runtime conversion never imports it

from wsi_mil.encoders import ENTRIES, create_encoder
from wsi_mil.encoders.build import build_backbone, with_pooling
from wsi_mil.encoders.convert import hf_to_timm
from wsi_mil.encoders.weights import load_into
from wsi_mil.errors import EncoderError

WIDTH, DEPTH, HEADS = 96, 2, 4  # 96: the width at which timm's and transformers' SwiGLU sizes agree, as at 1536


def _randomise(model: torch.nn.Module) -> None:
    """Every parameter random (layer scales, norms and biases too): a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith(("lambda1", "norm1.weight", "norm2.weight", "layernorm.weight",
                                         "layernorm_before.weight", "layernorm_after.weight")) else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))


def _legacy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 names -> the transformers 4 names the published files use."""
    out: dict[str, torch.Tensor] = {}
    gate: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k2 = re.sub(r"^layers\.", "encoder.layer.", k)
        for new, old in (("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                         ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
                         ("mlp.down_proj", "mlp.weights_out")):
            k2 = k2.replace(new, old)
        if ".mlp.gate_proj." in k2 or ".mlp.up_proj." in k2:
            gate[k2] = v
            continue
        if k.startswith("layers."):  # ViTModel
            k2 = k2.replace("mlp.fc1", "intermediate.dense").replace("mlp.fc2", "output.dense")
        out[k2] = v
    for k in [k for k in gate if ".gate_proj." in k]:
        up = k.replace(".gate_proj.", ".up_proj.")
        out[k.replace(".gate_proj.", ".weights_in.")] = torch.cat([gate[k], gate[up]], dim=0)
    return out


def _tiny(name: str, **extra: object):
    entry = ENTRIES[name]
    kwargs = {**entry.timm_kwargs, "embed_dim": WIDTH, "depth": DEPTH, "num_heads": HEADS, **extra}
    return dataclasses.replace(entry, name=f"tiny_{name}", timm_kwargs=kwargs)


def _hf_vit():
    cfg = transformers.ViTConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                 intermediate_size=4 * WIDTH, image_size=224, patch_size=16, qkv_bias=True,
                                 layer_norm_eps=1e-12)
    model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    _randomise(model)
    return model


def _hf_dinov2(swiglu: bool, image_size: int, patch: int):
    cfg = transformers.Dinov2Config(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                    mlp_ratio=4, image_size=image_size, patch_size=patch, use_swiglu_ffn=swiglu,
                                    layerscale_value=1e-5, layer_norm_eps=1e-6)
    model = transformers.Dinov2Model(cfg).eval()
    _randomise(model)
    return model


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _timm_from(entry, hf_sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    backbone = build_backbone(entry)
    grid = tuple(backbone.patch_embed.grid_size)
    load_into(backbone, hf_to_timm(hf_sd, entry.weights_format, "test", grid=grid), "test", entry.name)
    return with_pooling(backbone, entry).eval()


CASES = {
    # entry, transformers model, its reference readout of last_hidden_state
    "phikon": (lambda: _hf_vit(), lambda h: h[:, 0]),
    "phikon_v2": (lambda: _hf_dinov2(False, 224, 16), lambda h: h[:, 0]),
    # Midnight: ViT-g/14 with SwiGLU; a 518 px config grid resampled to 224 px; CLS + mean patch tokens
    "midnight": (lambda: _hf_dinov2(True, 518, 14), lambda h: torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_against_transformers(name: str) -> None:
    make, readout = CASES[name]
    hf = make()
    entry = _tiny(name)
    x = _x()
    with torch.inference_mode():
        ref = readout(hf(pixel_values=x).last_hidden_state)
        sd = hf.state_dict()
        for layout in (sd, _legacy(sd)):  # what transformers 5 writes, and the published (4.x) files
            out = _timm_from(entry, layout)(x)
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_publisher_folder_from_save_pretrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf = _hf_dinov2(False, 224, 16)
    hf.save_pretrained(tmp_path / "phikon-v2")
    entry = _tiny("phikon_v2")
    monkeypatch.setitem(ENTRIES, entry.name, entry)
    enc = create_encoder(entry.name, tmp_path / "phikon-v2")
    x = _x()
    with torch.inference_mode():
        torch.testing.assert_close(enc.model(x), hf(pixel_values=x).last_hidden_state[:, 0], atol=2e-5, rtol=1e-4)
    assert enc.embed_dim == WIDTH and enc.encoder_id.startswith(f"{entry.name}-phikon_v2-")
    assert "phikon-v2" in enc.weights_source

    # a config.json of another shape is refused, naming the differing fields
    other = _hf_dinov2(False, 224, 16)
    other.config.num_hidden_layers = 3
    other.config.save_pretrained(tmp_path / "phikon-v2")
    with pytest.raises(EncoderError, match=r"config.json does not describe .*num_hidden_layers 3 \(entry: 2\)"):
        create_encoder(entry.name, tmp_path / "phikon-v2")


def test_foreign_tensors_are_named() -> None:
    sd = _hf_vit().state_dict()
    sd["classifier.weight"] = torch.zeros(2, WIDTH)
    with pytest.raises(EncoderError, match="not part of a transformers ViT model .*classifier.weight"):
        hf_to_timm(sd, "hf_vit", "ckpt.bin")
    del sd["classifier.weight"]
    del sd["layers.1.attention.k_proj.weight"]
    with pytest.raises(EncoderError, match="layer 1 lacks attention weight tensor"):
        hf_to_timm(sd, "hf_vit", "ckpt.bin")


def test_an_encoder_folder_of_a_converted_entry_is_read_in_our_layout(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pretrain's folder of Phikon holds timm-layout tensors: read as they are, not as transformers' names."""
    from wsi_mil.encoders import save_encoder_dir

    entry = _tiny("phikon")
    monkeypatch.setitem(ENTRIES, entry.name, entry)
    enc = create_encoder(entry.name, "random:2")
    folder = save_encoder_dir(tmp_path / "enc", enc.model, entry.name, enc.data_config)
    back = create_encoder(None, folder)
    assert back.weights_hash == enc.weights_hash
    with torch.inference_mode():
        torch.testing.assert_close(back.model(_x()), enc.model(_x()))
