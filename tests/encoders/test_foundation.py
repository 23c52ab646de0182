"""Pathology foundation entries: shapes against the publishers' figures (meta device, no memory),
and a small model of each family forward on the CPU with the entry's exact pooling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wsi_mil.encoders import ENTRIES, build_backbone, count_parameters, with_pooling
from wsi_mil.encoders.build import ClsMeanPool
from wsi_mil.encoders.conch import ConchVisionTower
from wsi_mil.encoders.entry import parse_count
from wsi_mil.encoders.folder import embed_dim_of
from wsi_mil.errors import EncoderError

PUBLISHER = [e for e in ENTRIES.values() if e.is_publisher_entry]
#: (entry, prefix tokens: class + registers) as the publishers' loaders read them
PREFIX = {"uni": 1, "uni2_h": 9, "virchow": 1, "virchow2": 5, "h_optimus_0": 5, "h_optimus_1": 5, "h0_mini": 5,
          "gigapath": 1, "phikon": 1, "phikon_v2": 1, "midnight": 1, "kaiko_vitl14": 5, "lunit_vits8": 1,
          "ctranspath": 0, "conch_v15": 1}
#: entries fed other than 224 px tiles (CONCH v1.5: 448 px, as its publisher's transform)
INPUT_PX = {"conch_v15": 448}
#: one entry per family: plain ViT, SwiGLU + registers (no pos-embed for prefix tokens),
#: SwiGLU + cls+mean with and without registers, DINOv2-g registers, the 16 px ViT-g
FAMILIES = ["uni", "uni2_h", "virchow", "virchow2", "h_optimus_0", "h0_mini", "gigapath", "kaiko_vits8", "midnight"]


def test_every_foundation_entry_is_listed() -> None:
    names = {e.name for e in PUBLISHER}
    assert {"uni", "uni2_h", "virchow", "virchow2", "h_optimus_0", "h_optimus_1", "h0_mini", "gigapath", "phikon",
            "phikon_v2", "midnight", "lunit_vits8", "ctranspath", "conch_v15"} <= names
    assert {n for n in names if n.startswith("kaiko_")} == {"kaiko_vits16", "kaiko_vits8", "kaiko_vitb16",
                                                            "kaiko_vitb8", "kaiko_vitl14"}
    for e in PUBLISHER:
        assert e.hf_repo and "/" in e.hf_repo and e.licence and e.reference and e.data_config is not None
        assert e.weights_format in ("timm", "hf_vit", "hf_dinov2", "timm0_swin", "conch_v15")


def test_parse_count_gives_the_rounding_interval() -> None:
    assert parse_count("632M") == (632e6, 0.5e6)
    assert parse_count("1.1B") == pytest.approx((1.1e9, 0.05e9))
    with pytest.raises(ValueError):
        parse_count("lots")


@pytest.mark.parametrize("entry", PUBLISHER, ids=lambda e: e.name)
def test_shapes_match_the_publishers_figures_on_the_meta_device(entry) -> None:
    model = with_pooling(build_backbone(entry, device="meta"), entry)
    assert next(model.parameters()).device.type == "meta"  # nothing allocated
    n = count_parameters(model)
    value, half_unit = parse_count(entry.published_params)
    # model cards round; Virchow's '632M' is the ViT-H's 631.2M (0.12 % off), hence the 0.5 % floor
    assert abs(n - value) <= max(half_unit, 0.005 * value), (entry.name, n, entry.published_params)
    assert embed_dim_of(model) == entry.published_dim
    backbone = (model.backbone if isinstance(model, ClsMeanPool) else
                model.trunk if isinstance(model, ConchVisionTower) else model)
    assert getattr(backbone, "num_prefix_tokens", 0) == PREFIX.get(entry.name, 1)  # Swin (CTransPath): none
    px = INPUT_PX.get(entry.name, 224)
    assert tuple(backbone.patch_embed.img_size) in ((px, px), (518, 518))
    assert entry.data_config.hw == (px, px)


def _small(name: str):
    """The entry's exact recipe at a toy width and depth (every structural argument kept)."""
    entry = ENTRIES[name]
    kwargs = {**entry.timm_kwargs, "embed_dim": 96, "depth": 2, "num_heads": 4}
    return dataclasses.replace(entry, name=f"small_{name}", timm_kwargs=kwargs)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_small_model_of_each_family_runs_with_the_entrys_pooling(name: str) -> None:
    entry = _small(name)
    torch.manual_seed(0)
    model = with_pooling(build_backbone(entry), entry).eval()
    backbone = model.backbone if isinstance(model, ClsMeanPool) else model
    x = torch.randn(2, 3, *entry.data_config.hw)
    with torch.inference_mode():
        out = model(x)
        tokens = backbone.forward_features(x)
    prefix = PREFIX.get(name, 1)
    grid = entry.data_config.hw[0] // backbone.patch_embed.patch_size[0]
    assert tokens.shape == (2, prefix + grid * grid, 96)
    if entry.pooling == "cls+mean":
        # class token, then the mean over patch tokens only: registers are left out
        expected = torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], dim=-1)
        assert out.shape == (2, 192)
        assert not torch.allclose(out[:, 96:], tokens[:, 1:].mean(1), atol=1e-6) or prefix == 1
    else:
        expected = tokens[:, 0]
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(out).all()


def test_unknown_pooling_is_refused() -> None:
    entry = dataclasses.replace(_small("uni"), pooling="max")
    with pytest.raises(EncoderError, match="unknown pooling 'max'"):
        with_pooling(build_backbone(entry, device="meta"), entry)


def test_an_encoder_folder_of_a_pooled_entry_round_trips(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pretrain's folder of a cls+mean entry stores the backbone; reading it rebuilds the pooling."""
    from wsi_mil.encoders import create_encoder, save_encoder_dir

    entry = _small("virchow2")
    monkeypatch.setitem(ENTRIES, entry.name, entry)
    enc = create_encoder(entry.name, "random:4")
    folder = save_encoder_dir(tmp_path / "enc", enc.model, entry.name, enc.data_config)
    back = create_encoder(None, folder)
    assert back.weights_hash == enc.weights_hash and back.embed_dim == 192 and back.pooling == "cls+mean"
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(back.model(x), enc.model(x))
