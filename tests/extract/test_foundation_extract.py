"""Extraction with a publisher entry: weights pinned by a manifest, the entry's pooling in the
features, the checksum recorded, the memory estimate printed before the run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.cli import main
from wsi_mil.encoders import ENTRIES, build_backbone, create_encoder, file_sha256
from wsi_mil.extract import ExtractConfig, run_extract
from wsi_mil.extract.memory import MemoryEstimate, estimate_memory
from wsi_mil.stores.features import read_feature_file
from wsi_mil.stores.patches import write_patch_store


def make_store(job: Path, slide_id: str, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    attrs = dict(slide_id=slide_id, target_mpp=0.5, mpp=0.25, tile_size_level0=2.0 * size, tile_size=size)
    return write_patch_store(job / "patches" / f"{slide_id}.zarr", rng.integers(0, 255, (n, size, size, 3), np.uint8),
                             np.stack([np.arange(n) * 2 * size, np.zeros(n)], 1), np.ones(n, np.float32),
                             np.ones((4, 4), np.uint8), 16.0, attrs, codec="zstd", tiles_per_chunk=8)


@pytest.fixture()
def tiny_virchow2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Virchow2's recipe at a toy size, its weights in a publisher folder, pinned by a manifest."""
    base = ENTRIES["virchow2"]
    entry = dataclasses.replace(base, name="tiny_virchow2", data_config=base.data_config.with_side(56),
                                timm_kwargs={**base.timm_kwargs, "embed_dim": 96, "depth": 2, "num_heads": 4,
                                             "img_size": 56})
    monkeypatch.setitem(ENTRIES, entry.name, entry)
    torch.manual_seed(3)
    folder = tmp_path / "Virchow2"
    folder.mkdir()
    torch.save(build_backbone(entry).state_dict(), folder / "pytorch_model.bin")
    manifest = tmp_path / "weights.yaml"
    manifest.write_text(f"tiny_virchow2:\n  path: {folder}\n  sha256: {file_sha256(folder / 'pytorch_model.bin')}\n")
    return entry, manifest


def test_extract_with_a_pinned_publisher_entry(job: Path, tiny_virchow2, capsys: pytest.CaptureFixture) -> None:
    entry, manifest = tiny_virchow2
    make_store(job, "s1", 9, size=64)
    code = main(["extract", str(job), "--encoder", entry.name, "--weights-manifest", str(manifest), "--device", "cpu",
                 "--batch-size", "4", "--num-workers", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    enc = create_encoder(entry.name, None, manifest=manifest)
    f = read_feature_file(job / "features" / enc.encoder_id / "s1.h5")
    assert f.features.shape == (9, 192) and f.attrs["pooling"] == "cls+mean"
    assert f.attrs["weights_file_sha256"] == "sha256:" + manifest.read_text().split("sha256: ")[1].strip()
    assert f.attrs["input_size"] == [3, 56, 56]
    assert np.isfinite(f.features).all()
    # the same run through the library: the memory estimate comes before any slide
    report = run_extract(job, entry.name, None, ExtractConfig(device="cpu", batch_size=4, num_workers=0),
                         manifest=manifest)
    assert [s.status for s in report.statuses] == ["skipped"]
    assert report.memory_estimate.startswith("memory estimate (cpu, fp32, batch 4): weights 0.00")


def test_memory_estimate_for_a_vit_and_a_cnn() -> None:
    entry = ENTRIES["uni"]
    vit = build_backbone(entry, device="meta")
    est = estimate_memory(vit, entry.data_config, 256, "bf16", torch.device("cpu"))
    assert est.weights == 4 * 303_350_784  # fp32 parameters (+ no buffers)
    tokens, width, hidden = 197, 1024, 4096
    assert est.activations == 256 * tokens * (3 * width + 2 * hidden) * 2 + 256 * 3 * 224 * 224 * 4
    assert "batch 256" in est.line() and est.fits
    small = MemoryEstimate(est.weights, est.activations, 256, "bf16", "cuda:0", device_total=2_000_000_000)
    assert not small.fits and "lower --batch-size" in small.line()
    cnn = create_encoder("test_resnet", "random")
    cest = estimate_memory(cnn.model, cnn.data_config, 8, "fp32", torch.device("cpu"))
    assert cest.activations > 8 * 3 * 160 * 160 * 4 and cest.weights > 0
