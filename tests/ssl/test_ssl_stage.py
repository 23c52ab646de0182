"""``wsi-mil pretrain`` over a job folder: encoder folder output, idempotence, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.cli import main
from wsi_mil.encoders import create_encoder, read_encoder_json
from wsi_mil.errors import EncoderError, StoreError, WsiMilError
from wsi_mil.jobdir import patch_store_path, pretrain_checkpoint_path
from wsi_mil.ssl.config import PretrainConfig
from wsi_mil.ssl.stage import run_pretrain
from wsi_mil.stores.patches import write_patch_store

TINY = ["--arch", "test_resnet", "--epochs", "1", "--batch-size", "16", "--input-size", "32",
        "--set", "proj_hidden_dim=32", "--set", "proj_dim=16", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_tiles(n: int, seed: int, s: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = torch.tensor(rng.uniform(0, 255, (n, 3, 4, 4)))
    t = torch.nn.functional.interpolate(low, size=(s, s), mode="bicubic", align_corners=False)
    return t.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()


def add_store(job: Path, slide_id: str, n: int, seed: int = 0) -> Path:
    attrs = dict(slide_id=slide_id, target_mpp=0.5, mpp=0.5, tile_size_level0=40.0, tile_size=40)
    tiles = smooth_tiles(n, seed) if n else np.zeros((0, 40, 40, 3), np.uint8)
    coords = np.stack([np.arange(n) * 40, np.zeros(n)], 1)
    return write_patch_store(patch_store_path(job, slide_id), tiles, coords, np.ones(n), np.ones((2, 2)), 8.0,
                             attrs, codec="zstd", tiles_per_chunk=8, chunks_per_shard=4)


@pytest.fixture()
def small_job(job: Path) -> Path:
    add_store(job, "s1", 30, seed=1)
    add_store(job, "s2", 20, seed=2)
    add_store(job, "empty", 0)
    return job


def tiny_cfg(**kw: object) -> PretrainConfig:
    base = dict(arch="test_resnet", epochs=1, batch_size=16, input_size=32, proj_hidden_dim=32, proj_dim=16)
    base.update(kw)
    return PretrainConfig(**base)


def test_writes_an_encoder_folder_that_extract_accepts(small_job: Path, tmp_path: Path) -> None:
    out = tmp_path / "enc"
    s = run_pretrain(small_job, out, tiny_cfg(epochs=2), device="cpu")
    assert s.n_tiles == 50 and s.n_stores == 2 and s.global_step == 2 * 3 and len(s.epoch_losses) == 2
    meta = read_encoder_json(out)
    assert meta["schema"] == "wsi_mil.encoder/1" and meta["arch"] == "test_resnet"
    assert meta["embed_dim"] == 96 and meta["data_config"]["input_size"] == [3, 32, 32]
    assert meta["training"]["config"]["epochs"] == 2 and meta["training"]["method"] == "simclr"
    assert [Path(p).name for p in meta["patch_stores"]] == ["s1.zarr", "s2.zarr"]
    assert (out / "encoder.safetensors").is_file()
    assert pretrain_checkpoint_path(small_job, out).is_file()
    enc = create_encoder(None, out)
    random = create_encoder("test_resnet", "random:0")
    assert enc.embed_dim == 96 and enc.input_size == (32, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(enc.model(x), random.model(x))  # trained weights were loaded
    # the same command again does nothing; another config needs --overwrite
    again = run_pretrain(small_job, out, tiny_cfg(epochs=2), device="cpu")
    assert again.skipped
    with pytest.raises(WsiMilError, match="--overwrite"):
        run_pretrain(small_job, out, tiny_cfg(epochs=1), device="cpu")
    assert read_encoder_json(out)["training"]["config"]["epochs"] == 2
    replaced = run_pretrain(small_job, out, tiny_cfg(epochs=1), device="cpu", overwrite=True)
    assert not replaced.skipped and read_encoder_json(out)["training"]["config"]["epochs"] == 1


def test_cli_runs_and_resumes(small_job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "enc"
    assert main(["pretrain", str(small_job), "-o", str(out), *TINY]) == 0
    assert "pretrain" in capsys.readouterr().out and (out / "encoder.json").is_file()
    first = (out / "encoder.safetensors").read_bytes()
    # extend by resuming: same config, finished checkpoint -> the folder is complete already
    assert main(["pretrain", str(small_job), "-o", str(out), *TINY, "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "encoder.safetensors").read_bytes() == first
    # extract takes the folder as it is (it records its architecture)
    assert main(["extract", str(small_job), "--weights", str(out), "--device", "cpu", "--num-workers", "0"]) == 0
    from wsi_mil.stores.features import read_feature_file

    files = sorted((small_job / "features").glob("*/*.h5"))
    assert [f.stem for f in files] == ["empty", "s1", "s2"]
    feats = read_feature_file(files[1])
    assert feats.features.shape == (30, 96) and feats.encoder_id.startswith("test_resnet-enc-")
    assert str(out.resolve()) in str(feats.attrs["weights_source"])


def test_empty_job_is_a_clear_error(job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StoreError, match="no tiles to train on"):
        run_pretrain(job, tmp_path / "enc", tiny_cfg(), device="cpu")
    add_store(job, "empty", 0)
    assert main(["pretrain", str(job), "-o", str(tmp_path / "enc"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no tiles to train on" in err and err.count("\n") == 1
    assert not (tmp_path / "enc").exists()
    with pytest.raises(StoreError, match="job folder not found"):
        run_pretrain(tmp_path / "nope", tmp_path / "enc", tiny_cfg(), device="cpu")


def test_batch_larger_than_tiles(small_job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", str(small_job), "-o", str(tmp_path / "enc"), *TINY[:-1], "--batch-size", "64"])
    assert code == 2
    assert "--batch-size 64 is larger than the 50 tiles" in capsys.readouterr().err
    assert not (tmp_path / "enc").exists()


def test_unknown_architecture(small_job: Path, tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="unknown encoder architecture 'resnet_nope'"):
        run_pretrain(small_job, tmp_path / "enc", tiny_cfg(arch="resnet_nope"), device="cpu")
    with pytest.raises(EncoderError, match="cannot take 48x48 views"):
        run_pretrain(small_job, tmp_path / "enc", tiny_cfg(arch="vit_tiny_patch16_224", input_size=48), device="cpu")
    assert not (tmp_path / "enc").exists()


def test_corrupt_checkpoint_on_resume_overwrites_nothing(small_job: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "enc"
    ckpt = pretrain_checkpoint_path(small_job, out)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x00garbage")
    assert main(["pretrain", str(small_job), "-o", str(out), *TINY, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "corrupt or unreadable checkpoint" in err and err.count("\n") == 1
    assert ckpt.read_bytes() == b"\x00garbage" and not out.exists()


def test_output_path_in_the_way(small_job: Path, tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(WsiMilError, match="not an encoder folder"):
        run_pretrain(small_job, other, tiny_cfg(), device="cpu")
    assert (other / "keep.txt").read_text() == "mine"


def test_config_file_section(small_job: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text("pretrain:\n  temperature: 0.3\n  augment:\n    blur_p: 0.0\n")
    out = tmp_path / "enc"
    assert main(["pretrain", str(small_job), "-o", str(out), *TINY, "--config", str(cfg_file)]) == 0
    cfg = json.loads((out / "encoder.json").read_text())["training"]["config"]
    assert cfg["temperature"] == 0.3 and cfg["augment"]["blur_p"] == 0.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  temprature: 0.3\n")
    assert main(["pretrain", str(small_job), "-o", str(tmp_path / "e2"), *TINY, "--config", str(bad)]) == 2
