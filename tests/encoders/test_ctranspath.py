"""CTransPath: timm 0.5.4's Swin-T + ConvStem (the layout of the published checkpoint, built with
``timm-ctp``, the dev-extra copy of timm 0.5.4) against the entry in today's timm."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from timm_ctp.models.swin_transformer import SwinTransformer as OldSwin
from torch import nn

from wsi_mil.encoders import ENTRIES, create_encoder
from wsi_mil.errors import EncoderError


class OldConvStem(nn.Module):
    """TransPath's ConvStem as written for timm 0.5.4 (flattened (B, N, D) output)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=768, norm_layer=None, flatten=True):
        super().__init__()
        self.img_size, self.patch_size = (img_size, img_size), (4, 4)
        self.grid_size = (img_size // 4, img_size // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        stem, c_in, c_out = [], 3, embed_dim // 8
        for _ in range(2):
            stem += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in, c_out = c_out, c_out * 2
        stem.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*stem)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


#: CTransPath's Swin-T at half width and two blocks a stage (shifted windows in each); the
#: full shapes are checked on the meta device in test_foundation.py
SMALL = {"embed_dim": 48, "depths": (2, 2, 2, 2)}


def _reference() -> nn.Module:
    torch.manual_seed(0)
    model = OldSwin(img_size=224, patch_size=4, window_size=7, num_heads=(3, 6, 12, 24), embed_layer=OldConvStem,
                    num_classes=0, **SMALL)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every tensor random, BatchNorm statistics included
        for name, t in model.state_dict().items():
            if t.is_floating_point() and "relative_position_index" not in name and "attn_mask" not in name:
                t.copy_((t.abs().mean() + 0.05) * torch.randn(t.shape, generator=g)
                        if not name.endswith("running_var") else 0.5 + torch.rand(t.shape, generator=g))
    return model.eval()


def test_old_checkpoint_gives_the_reference_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ENTRIES["ctranspath"]
    entry = dataclasses.replace(base, name="small_ctranspath", timm_kwargs={**base.timm_kwargs, **SMALL})
    monkeypatch.setitem(ENTRIES, entry.name, entry)
    ref = _reference()
    torch.save({"model": ref.state_dict()}, tmp_path / "CHIEF_CTransPath.pth")  # as CHIEF ships it
    enc = create_encoder(entry.name, tmp_path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(enc.model(x), ref(x), atol=1e-4, rtol=1e-4)
    assert enc.embed_dim == 384 and enc.encoder_id.startswith("small_ctranspath-")


def test_missing_ctranspath_names_the_dataset_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(EncoderError) as err:
        create_encoder("ctranspath", "hub")
    msg = str(err.value)
    assert str(tmp_path / "datasets--MahmoodLab--hest-bench") in msg
    assert ("huggingface-cli download MahmoodLab/hest-bench fm_v1/ctranspath/CHIEF_CTransPath.pth --repo-type dataset "
            "--local-dir hest-bench") in msg
    assert "https://huggingface.co/datasets/MahmoodLab/hest-bench" in msg
