"""The GPU tile path: its logic on the CPU (torchvision's CPU decoder), the fallback, and CUDA when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.slide import open_slide
from wsi_mil.tiling import gpu
from wsi_mil.tiling.direct import open_direct_level
from wsi_mil.tiling.readers import DecodeOptions, DirectTileReader, open_tile_reader
from wsi_mil.tiling.stage import plan_reads


def _coords(w: int, h: int, step: int, size0: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(0, w - size0, step), np.arange(0, h - size0, step))
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)


@pytest.mark.parametrize("target_mpp", [0.499, 0.7])
def test_torch_reader_matches_the_cpu_direct_reader(cmu_slide: Path, target_mpp: float) -> None:
    with open_slide(cmu_slide) as s:
        plan = plan_reads(s, target_mpp, 224)
        coords = _coords(*s.dimensions, 301, int(np.ceil(224 * target_mpp / s.mpp)) + 2)[:12]
        direct, why = open_direct_level(s, plan.level)
        assert direct is not None, why
        reader, why = gpu.open_gpu_reader(direct, plan, 224, device="cpu")
        assert reader is not None and why == ""
        ours = np.empty((len(coords), 224, 224, 3), np.uint8)
        reader.read_tiles(coords, ours)
        ref = np.empty_like(ours)
        DirectTileReader(direct, plan, 224).read_tiles(coords, ref)
        err = np.abs(ours.astype(int) - ref)
        if not plan.resample:  # same JPEG decoder family, no resampling: equal up to IDCT rounding
            assert err.max() <= 2
        else:  # antialiased bilinear vs box filter over the same window
            assert err.mean() < 4 and ours.mean() == pytest.approx(ref.mean(), abs=1.5)
        reader.close()


def test_cuda_asked_without_a_device_falls_back_to_the_cpu_direct_reader(
        cmu_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with open_slide(cmu_slide) as s:
        plan = plan_reads(s, s.mpp, 224)
        reader = open_tile_reader(s, plan, 224, np.zeros((1, 2), np.int64), DecodeOptions(device="cuda"))
        assert isinstance(reader, DirectTileReader)
        assert reader.fallback_reason.startswith("no CUDA device")
        reader.close()
        cpu = open_tile_reader(s, plan, 224, np.zeros((1, 2), np.int64), DecodeOptions(device="cpu"))
        assert isinstance(cpu, DirectTileReader) and cpu.fallback_reason == ""
        cpu.close()


@pytest.mark.gpu
def test_cuda_reader_matches_the_cpu_direct_reader_on_ycbcr_tiles(tmp_path: Path) -> None:
    from wsi_mil.synth import make_slide

    assert gpu.cuda_reason() == ""
    path = tmp_path / "ycbcr.tiff"
    make_slide(path, 3000, 3000, mpp=0.5, seed=3, positive=True)  # YCbCr JPEG tiles, as most scanners write
    with open_slide(path) as s:
        plan = plan_reads(s, s.mpp, 224)
        coords = _coords(*s.dimensions, 224, 224)
        reader = open_tile_reader(s, plan, 224, coords, DecodeOptions(device="cuda"))
        assert isinstance(reader, gpu.TorchTileReader), reader.fallback_reason
        ours = np.empty((len(coords), 224, 224, 3), np.uint8)
        reader.read_tiles(coords, ours)
        direct, _ = open_direct_level(s, plan.level)
        assert direct is not None
        ref = np.empty_like(ours)
        DirectTileReader(direct, plan, 224).read_tiles(coords, ref)
        assert np.abs(ours.astype(int) - ref).mean() < 1.0  # nvJPEG's IDCT and upsampling differ slightly
        reader.close()


@pytest.mark.gpu
def test_cuda_asked_for_rgb_coded_tiles_decodes_them_on_the_cpu(cmu_slide: Path) -> None:
    """Aperio's RGB-coded JPEG tiles: nvJPEG gets their colours wrong, so the CPU direct reader takes them."""
    assert gpu.cuda_reason() == ""
    with open_slide(cmu_slide) as s:
        plan = plan_reads(s, s.mpp, 224)
        reader = open_tile_reader(s, plan, 224, _coords(*s.dimensions, 224, 224), DecodeOptions(device="cuda"))
        assert isinstance(reader, DirectTileReader)
        assert "RGB-coded" in reader.fallback_reason
        reader.close()


def test_rgb_coded_levels_are_refused_for_nvjpeg_with_a_reason(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        direct, why = open_direct_level(s, 0)
        assert direct is not None, why
        assert direct.layout.colorspace == "RGB" and "RGB-coded" in gpu.rgb_reason(direct)
        direct.close()
