"""CONCH v1.5's vision tower: shapes against the publisher's model (meta device), the attentional
pooler and the position embeddings against hand-written references of the publisher's formulas
(TRIDENT ``model_zoo/conchv1_5/conchv1_5.py``), and its checkpoint loaded offline and fail-closed."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from wsi_mil.encoders import ENTRIES, build_backbone, count_parameters, create_encoder, save_encoder_dir, with_pooling
from wsi_mil.encoders.conch import ConchVisionTower, publisher_pos_embed
from wsi_mil.encoders.entry import parse_count
from wsi_mil.encoders.folder import embed_dim_of
from wsi_mil.errors import EncoderError

#: a small trunk of the entry's recipe: 64 px tiles -> a 4 x 4 grid, 64 wide, 2 blocks
SMALL = {"img_size": 64, "patch_size": 16, "init_values": 1.0, "embed_dim": 64, "depth": 2, "num_heads": 4}


def _pooler_count(width: int, context: int) -> int:
    """Tensors of the publisher's AttentionalPooler(d_model=width, context_dim=context, n_queries=1) + ln_contrast."""
    return width + 2 * context + 2 * width + width * width + context * 2 * width + width * width + 2 * width


def test_shape_matches_the_publishers_tower_on_the_meta_device() -> None:
    entry = ENTRIES["conch_v15"]
    model = with_pooling(build_backbone(entry, device="meta"), entry)
    assert isinstance(model, ConchVisionTower) and next(model.parameters()).device.type == "meta"
    assert all(p.device.type == "meta" for p in model.parameters())  # the pooler too
    # the publisher's trunk: vit_large (1024 wide, 24 deep, 16 heads, layer scale) at its 224 px grid
    with torch.device("meta"):
        publisher_trunk = timm.create_model("vit_large_patch16_224", num_classes=0, init_values=1.0, weight_init="skip")
    publisher = count_parameters(publisher_trunk) + _pooler_count(768, 1024)
    value, half_unit = parse_count(entry.published_params)
    assert abs(publisher - value) <= half_unit, publisher  # 306.1M
    extra_pos = (28 * 28 - 14 * 14) * 1024  # our trunk holds the 448 px grid's position embeddings
    assert count_parameters(model) == publisher + extra_pos
    assert embed_dim_of(model) == entry.published_dim == 768
    trunk = model.trunk
    assert (trunk.embed_dim, len(trunk.blocks), trunk.blocks[0].attn.num_heads) == (1024, 24, 16)
    assert tuple(trunk.patch_embed.grid_size) == (28, 28) and entry.data_config.hw == (448, 448)
    assert float(trunk.norm.eps) == 1e-6 and model.attn_pool_contrast.heads == 8
    assert float(model.ln_contrast.eps) == 1e-5


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every tensor random (LayerNorms included), so the reference checks every step."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _reference(tower: ConchVisionTower, x: torch.Tensor) -> torch.Tensor:
    """The publisher's CONCHVisionTower.forward written out: all tokens, einsum attention, stabilised softmax."""
    tokens = tower.trunk.forward_features(x)  # (B, T, C), class token first
    pool = tower.attn_pool_contrast
    b, n, _ = tokens.shape
    h = pool.heads
    q = pool.to_q(pool.ln_q(pool.query.unsqueeze(0).expand(b, -1, -1)))  # (B, 1, D)
    k, v = pool.to_kv(pool.ln_k(tokens)).chunk(2, dim=-1)
    d = q.shape[-1] // h
    q, k, v = (t.reshape(b, t.shape[1], h, d).permute(0, 2, 1, 3) for t in (q, k, v))  # 'b n (h d) -> b h n d'
    sim = torch.einsum("bhid,bhjd->bhij", q * d ** -0.5, k)
    attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(b, 1, h * d)
    return tower.ln_contrast(pool.to_out(out)[:, 0])


def test_the_pooler_matches_the_publishers_formula_on_the_cpu() -> None:
    torch.manual_seed(0)
    trunk = timm.create_model("vit_large_patch16_224", num_classes=0, **SMALL)
    tower = ConchVisionTower(trunk, width=32, heads=4).eval()
    _randomise(tower, 1)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        out = tower(x)
        expected = _reference(tower, x)
        tokens = trunk.forward_features(x)
    assert out.shape == (3, 32) and tokens.shape == (3, 1 + 16, 64)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # the class token is part of the pooled context: changing it changes the feature
    with torch.inference_mode():
        trunk.cls_token.add_(torch.randn(trunk.cls_token.shape))  # (not a constant: the norms would undo it)
        assert not torch.allclose(tower(x), out, atol=1e-4)


def _dino_reference(pos: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The publisher's interpolate_pos_encoding, as written there (DINO's +0.1 scale factor)."""
    n = pos.shape[1] - 1
    dim = pos.shape[-1]
    patch = F.interpolate(pos[:, 1:].reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
                          scale_factor=((rows + 0.1) / math.sqrt(n), (cols + 0.1) / math.sqrt(n)), mode="bicubic")
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def test_position_embeddings_follow_the_publishers_two_resamplings() -> None:
    torch.manual_seed(0)
    native = torch.randn(1, 1 + 14 * 14, 8)
    out = publisher_pos_embed(native, (28, 28))
    assert out.shape == (1, 1 + 28 * 28, 8)
    torch.testing.assert_close(out, _dino_reference(native, 28, 28))
    assert torch.equal(out[:, 0], native[:, 0])  # the class token's embedding is kept
    # the +0.1 scale factor is not a plain resize to 28 x 28: the formula matters
    plain = F.interpolate(native[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2), size=(28, 28), mode="bicubic")
    assert not torch.allclose(out[:, 1:], plain.permute(0, 2, 3, 1).reshape(1, -1, 8), atol=1e-4)
    assert torch.equal(publisher_pos_embed(native, (14, 14)), native)  # its own grid: not interpolated
    # a checkpoint stored for another grid is first resized to 14 x 14 (bilinear, no antialias), as load time does
    other = torch.randn(1, 1 + 32 * 32, 8)
    first = timm.layers.resample_abs_pos_embed(other, new_size=[14, 14], num_prefix_tokens=1,
                                               interpolation="bilinear", antialias=False)
    torch.testing.assert_close(publisher_pos_embed(other, (28, 28)), _dino_reference(first, 28, 28))
    with pytest.raises(EncoderError, match="expected"):
        publisher_pos_embed(torch.randn(1, 1 + 15, 8), (28, 28))


@pytest.fixture
def small_entry(monkeypatch: pytest.MonkeyPatch):
    """The conch_v15 entry at a toy width (its pooler at the real 768 width), registered as 'small_conch'."""
    entry = dataclasses.replace(ENTRIES["conch_v15"], name="small_conch", timm_kwargs=SMALL,
                                data_config=dataclasses.replace(ENTRIES["conch_v15"].data_config, input_size=(3, 64, 64)))
    monkeypatch.setitem(ENTRIES, entry.name, entry)
    return entry


def _publisher_file(folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint in the publisher's layout: the trunk built at 224 px (14 x 14 position grid) + the pooler."""
    torch.manual_seed(seed)
    trunk = timm.create_model("vit_large_patch16_224", num_classes=0, **{**SMALL, "img_size": 224})
    tower = ConchVisionTower(trunk)
    _randomise(tower.attn_pool_contrast, seed + 1)
    state = {k: v.clone() for k, v in tower.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "pytorch_model_vision.bin")
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return state


def test_the_publishers_checkpoint_loads_offline_and_round_trips(tmp_path, small_entry) -> None:
    state = _publisher_file(tmp_path / "conchv1_5")
    enc = create_encoder("small_conch", tmp_path / "conchv1_5")
    assert enc.embed_dim == 768 and enc.pooling == "conch_attn" and enc.input_size == (64, 64)
    loaded = enc.model.state_dict()
    assert set(loaded) == set(state)
    assert torch.equal(loaded["attn_pool_contrast.query"], state["attn_pool_contrast.query"])
    assert torch.equal(loaded["trunk.blocks.1.ls2.gamma"], state["trunk.blocks.1.ls2.gamma"])
    torch.testing.assert_close(loaded["trunk.pos_embed"], _dino_reference(state["trunk.pos_embed"], 4, 4))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out = enc.model(x)
        torch.testing.assert_close(out, _reference(enc.model, x), rtol=1e-5, atol=1e-5)
    # an encoder folder of it holds our layout: read back as is (no second resampling)
    folder = save_encoder_dir(tmp_path / "enc", enc.model, "small_conch", enc.data_config)
    back = create_encoder(None, folder)
    assert back.weights_hash == enc.weights_hash
    with torch.inference_mode():
        torch.testing.assert_close(back.model(x), out)
    # random init is seeded for the pooler too
    assert create_encoder("small_conch", "random:3").weights_hash == create_encoder("small_conch", "random:3").weights_hash


def test_a_checkpoint_that_does_not_match_is_refused_naming_the_tensors(tmp_path, small_entry) -> None:
    state = _publisher_file(tmp_path / "a")
    del state["attn_pool_contrast.to_out.weight"]
    state["trunk.blocks.0.attn.qkv.weight"] = state["trunk.blocks.0.attn.qkv.weight"][:, :32]
    torch.save(state, tmp_path / "a" / "pytorch_model_vision.bin")
    with pytest.raises(EncoderError, match=r"1 missing \(attn_pool_contrast\.to_out\.weight\)") as info:
        create_encoder("small_conch", tmp_path / "a")
    assert "trunk.blocks.0.attn.qkv.weight (192, 32) vs expected (192, 64)" in str(info.value)
    # a plain timm ViT (no pooler, no trunk. prefix) is not CONCH's vision tower
    plain = timm.create_model("vit_large_patch16_224", num_classes=0, **SMALL)
    torch.save(plain.state_dict(), tmp_path / "plain.bin")
    with pytest.raises(EncoderError, match="not CONCH v1.5's vision tower"):
        create_encoder("small_conch", tmp_path / "plain.bin")


def test_missing_weights_name_the_repository_and_the_command(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(EncoderError, match="huggingface-cli download MahmoodLab/conchv1_5 --local-dir conchv1_5"):
        create_encoder("conch_v15", "hub")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="looked for pytorch_model_vision.bin"):
        create_encoder("conch_v15", tmp_path / "empty")
