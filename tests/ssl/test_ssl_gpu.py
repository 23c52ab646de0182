"""SimCLR on the GPU (``-m gpu``): views match the CPU's, bf16 training runs, DDP-free resume.

On a machine without CUDA these run on the CPU (same code path, fp32)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.ssl.augment import SimCLRAugment
from wsi_mil.ssl.config import AugmentConfig, PretrainConfig
from wsi_mil.ssl.data import ArrayTileSource, generator
from wsi_mil.ssl.stage import prepare_backbone
from wsi_mil.ssl.train import DistInfo, train_simclr

pytestmark = pytest.mark.gpu
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_views_on_the_device_match_the_cpu() -> None:
    rng = np.random.default_rng(0)
    tiles = torch.from_numpy(rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8))
    aug = SimCLRAugment(AugmentConfig(), 48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    cpu = aug(tiles, generator(9))
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the blur is a convolution: compare in full fp32
    try:
        dev = aug(tiles.to(DEVICE), generator(9)).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(dev, cpu, atol=2e-3, rtol=0)


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_training_runs_and_resumes_on_the_device(tmp_path: Path, precision: str) -> None:
    rng = np.random.default_rng(1)
    src = [ArrayTileSource(rng.integers(0, 256, (256, 64, 64, 3), dtype=np.uint8), chunk=32)]
    arch = "resnet18" if DEVICE.type == "cuda" else "test_resnet"  # keep the CPU fallback short
    cfg = PretrainConfig(arch=arch, epochs=2, batch_size=64, input_size=64, precision=precision,
                         proj_hidden_dim=256, proj_dim=64, log_every=1)
    di = DistInfo(device=DEVICE)
    events = []
    bb, dim, dc, size = prepare_backbone(cfg)
    res = train_simclr(bb, dim, src, ["mem"], cfg, size, dc["mean"], dc["std"], tmp_path / "c.pt",
                       dist_info=di, progress=events.append)
    assert res.global_step == 8 and all(math.isfinite(v) for v in res.epoch_losses)
    assert next(res.model.parameters()).device.type == DEVICE.type
    assert any(e.kind == "step" and e.tiles_per_s > 0 for e in events)
    bb, dim, dc, size = prepare_backbone(cfg)
    again = train_simclr(bb, dim, src, ["mem"], cfg, size, dc["mean"], dc["std"], tmp_path / "c.pt",
                         resume=True, dist_info=di)
    assert again.resumed_from == 8 and again.global_step == 8  # finished checkpoint: nothing left to do
    if DEVICE.type == "cuda":
        assert torch.cuda.max_memory_allocated() > 0


def test_compiled_training_matches_names_and_runs(tmp_path: Path) -> None:
    """``compile=True``: the loop runs and the checkpoint keeps plain state-dict names (CPU: ~2 min)."""
    from wsi_mil.ssl.checkpoint import load_checkpoint

    rng = np.random.default_rng(2)
    src = [ArrayTileSource(rng.integers(0, 256, (96, 40, 40, 3), dtype=np.uint8), chunk=16)]
    cfg = PretrainConfig(arch="test_resnet", epochs=1, batch_size=32, input_size=32, proj_hidden_dim=32,
                         proj_dim=16, compile=True)
    bb, dim, dc, size = prepare_backbone(cfg)
    res = train_simclr(bb, dim, src, ["mem"], cfg, size, dc["mean"], dc["std"], tmp_path / "c.pt",
                       dist_info=DistInfo(device=DEVICE))
    assert res.global_step == 3 and math.isfinite(res.epoch_losses[0])
    keys = list(load_checkpoint(tmp_path / "c.pt")["model"])
    assert keys and not any("_orig_mod" in k or k.startswith("module.") for k in keys)
    assert set(keys) == set(res.model.state_dict())
