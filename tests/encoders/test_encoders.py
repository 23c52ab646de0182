"""Encoders: registry, factory, weights from files / folders / the offline timm cache, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wsi_mil.encoders import (
    ENTRIES,
    DataConfig,
    create_encoder,
    read_encoder_json,
    resolve_arch,
    save_encoder_dir,
    state_dict_hash,
)
from wsi_mil.errors import EncoderError, WsiMilError

ID_RE = re.compile(r"^[A-Za-z0-9._]+-[A-Za-z0-9._]+-[0-9a-f]{8}$")


def _out(enc, size: int = 64) -> torch.Tensor:
    torch.manual_seed(123)
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        return enc.model(x)


def test_random_encoder_is_deterministic_and_named_by_seed() -> None:
    a = create_encoder("test_resnet", "random")
    b = create_encoder("test_resnet", "random:0")
    c = create_encoder("test_resnet", "random:7")
    assert a.encoder_id == b.encoder_id
    assert ID_RE.match(a.encoder_id), a.encoder_id
    assert a.encoder_id.startswith("test_resnet-random0-")
    assert c.encoder_id.startswith("test_resnet-random7-") and c.weights_hash != a.weights_hash
    assert a.weights_source == "random:0" and a.timm_arch == "test_resnet" and a.arch == "test_resnet"
    assert a.embed_dim == 96 and _out(a).shape == (2, 96)
    assert torch.equal(_out(a), _out(b))
    assert not a.model.training


def test_plain_timm_arch_takes_timm_data_config() -> None:
    enc = create_encoder("test_vit", "random")
    assert enc.data_config.to_dict()["input_size"] == [3, 160, 160]
    assert set(enc.data_config.to_dict()) == {"input_size", "mean", "std", "interpolation"}
    assert enc.input_size == (160, 160)
    attrs = enc.attrs()
    assert attrs["embed_dim"] == 64 and attrs["timm_arch"] == "test_vit" and attrs["weights_hash"].startswith("sha256:")


def test_ready_made_entries() -> None:
    assert {"resnet50_trunc", "resnet50_in1k", "vit_s16_in21k", "vit_b16_in21k"} <= set(ENTRIES)
    assert resolve_arch("vit_s16_in21k").timm_arch == "vit_small_patch16_224"
    assert ENTRIES["vit_b16_in21k"].data_config.to_dict()["mean"] == [0.5, 0.5, 0.5]
    enc = create_encoder("resnet50_trunc", "random")
    assert enc.embed_dim == 1024 and enc.timm_arch == "resnet50"
    assert enc.encoder_id.startswith("resnet50_trunc-random0-")
    assert enc.data_config.to_dict()["input_size"] == [3, 224, 224]
    assert enc.data_config.to_dict()["mean"] == [0.485, 0.456, 0.406]
    assert _out(enc).shape == (2, 1024)
    assert not any(k.startswith("layer4.") for k in enc.model.state_dict())


def test_unknown_architecture_suggests_close_names() -> None:
    with pytest.raises(EncoderError, match=r"unknown encoder architecture 'resnt18'.*resnet18"):
        create_encoder("resnt18", "random")
    with pytest.raises(EncoderError, match="random:SEED"):
        create_encoder("resnet18", "random:x")


@pytest.mark.parametrize("fmt", ["safetensors", "pth-nested", "bin", "ckpt-lightning"])
def test_weights_files_load_and_give_one_id_per_weights(tmp_path: Path, fmt: str) -> None:
    src = create_encoder("test_resnet", "random:3")
    sd = src.model.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "pth-nested":
        path = tmp_path / "w.pth"
        # DDP prefix, nested under 'state_dict', a classifier head the model does not have
        nested = {f"module.{k}": v for k, v in sd.items()}
        nested["module.fc.weight"] = torch.zeros(10, 96)
        torch.save({"epoch": 3, "state_dict": nested}, path)
    elif fmt == "bin":
        path = tmp_path / "w.bin"
        torch.save(sd, path)
    else:
        path = tmp_path / "w.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, path)
    enc = create_encoder("test_resnet", path)
    assert enc.weights_hash == src.weights_hash
    assert enc.encoder_id == f"test_resnet-w-{src.weights_hash.split(':')[1][:8]}"
    assert enc.weights_source == str(path.resolve())
    assert torch.equal(_out(enc), _out(src))


def test_missing_weights_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(EncoderError, match=re.escape(str(missing)) + ": weights file not found"):
        create_encoder("test_resnet", missing)


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    save_file(create_encoder("test_vit", "random").model.state_dict(), str(path))
    with pytest.raises(EncoderError, match=r"vit.safetensors: not a checkpoint for 'test_resnet'.*--encoder") as info:
        create_encoder("test_resnet", path)
    assert "\n" not in str(info.value)


def test_mismatched_shape_names_expected_and_found(tmp_path: Path) -> None:
    sd = create_encoder("test_resnet", "random").model.state_dict()
    key = "conv1.0.weight" if "conv1.0.weight" in sd else next(k for k in sd if k.endswith("weight"))
    exp = tuple(sd[key].shape)
    bad = dict(sd)
    bad[key] = torch.zeros(exp[0] + 1, *exp[1:])
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    found = "(" + ", ".join(str(s) for s in (exp[0] + 1, *exp[1:])) + ")"
    expected = "(" + ", ".join(str(s) for s in exp) + ")"
    with pytest.raises(EncoderError) as info:
        create_encoder("test_resnet", path)
    msg = str(info.value)
    assert str(path) in msg and key in msg and found in msg and expected in msg


def test_missing_tensors_and_bad_files(tmp_path: Path) -> None:
    sd = create_encoder("test_resnet", "random").model.state_dict()
    dropped = sorted(k for k in sd if not k.endswith("num_batches_tracked"))[-1]
    part = {k: v for k, v in sd.items() if k != dropped}
    torch.save(part, tmp_path / "part.pth")
    with pytest.raises(EncoderError, match=r"part.pth: does not match 'test_resnet': tensors 1 missing"):
        create_encoder("test_resnet", tmp_path / "part.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(EncoderError, match="junk.safetensors: cannot read weights"):
        create_encoder("test_resnet", tmp_path / "junk.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(EncoderError, match="unknown weights format"):
        create_encoder("test_resnet", tmp_path / "w.onnx")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(EncoderError, match="empty.pth: holds no state dict"):
        create_encoder("test_resnet", tmp_path / "empty.pth")
    with pytest.raises(EncoderError, match="--encoder"):
        create_encoder(None, tmp_path / "part.pth")


def _fake_hf_cache(root: Path, repo: str, sd: dict) -> Path:
    snap = root / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (root / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (root / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_timm_weights_come_only_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(EncoderError, match=r"not in the local cache.*--weights FILE"):
        create_encoder("test_resnet", "timm")
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    src = create_encoder("test_resnet", "random:5")
    sd = dict(src.model.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 96), torch.zeros(1000)  # as published: with head
    file = _fake_hf_cache(tmp_path / "hub", "timm/test_resnet.r160_in1k", sd)
    enc = create_encoder("test_resnet", "timm")
    assert enc.weights_hash == src.weights_hash
    assert enc.encoder_id.startswith("test_resnet-timm-")
    assert str(file) in enc.weights_source and "timm:test_resnet" in enc.weights_source
    assert torch.equal(_out(enc), _out(src))


def test_encoder_folder_round_trip(tmp_path: Path) -> None:
    src = create_encoder("test_resnet", "random:9")
    cfg = {"input_size": [3, 32, 32], "mean": [0.7, 0.5, 0.6], "std": [0.2, 0.2, 0.2], "interpolation": "bilinear",
           "crop_pct": 1.0}
    folder = save_encoder_dir(tmp_path / "encoders" / "simclr_a", src.model, "test_resnet", cfg,
                              training={"epochs": 2, "lr": 1e-3}, patch_stores=[tmp_path / "p" / "s1.zarr"])
    meta = json.loads((folder / "encoder.json").read_text())
    assert meta["schema"] == "wsi_mil.encoder/1" and meta["arch"] == "test_resnet" and meta["embed_dim"] == 96
    assert meta["training"] == {"epochs": 2, "lr": 1e-3} and meta["patch_stores"][0].endswith("s1.zarr")
    assert meta["weights_file"] == "encoder.safetensors" and meta["weights_hash"] == src.weights_hash
    assert read_encoder_json(folder)["data_config"]["mean"] == [0.7, 0.5, 0.6]
    enc = create_encoder(None, folder)
    assert enc.arch == "test_resnet" and enc.weights_hash == src.weights_hash
    assert enc.encoder_id == f"test_resnet-simclr_a-{src.weights_hash.split(':')[1][:8]}"
    assert enc.data_config.to_dict() == {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation")}
    assert torch.equal(_out(enc), _out(src))
    assert create_encoder("test_resnet", folder).encoder_id == enc.encoder_id  # same arch may be given
    with pytest.raises(EncoderError, match="holds a 'test_resnet'.*omit --encoder"):
        create_encoder("test_vit", folder)
    # a compiled or wrapped model is saved as its plain backbone
    wrapped = torch.nn.Module()
    wrapped.module = src.model
    save_encoder_dir(tmp_path / "enc2", wrapped, "test_resnet", cfg)
    assert create_encoder(None, tmp_path / "enc2").weights_hash == src.weights_hash


def test_encoder_folder_errors(tmp_path: Path) -> None:
    src = create_encoder("test_resnet", "random")
    cfg = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    folder = save_encoder_dir(tmp_path / "enc", src.model, "test_resnet", cfg)
    meta = json.loads((folder / "encoder.json").read_text())
    (folder / "encoder.json").write_text(json.dumps({**meta, "schema": "other/1"}))
    with pytest.raises(EncoderError, match=r"encoder.json: schema 'other/1', expected 'wsi_mil.encoder/1'"):
        create_encoder(None, folder)
    (folder / "encoder.json").write_text(json.dumps(meta))
    (folder / "encoder.safetensors").unlink()
    with pytest.raises(EncoderError, match="weights file 'encoder.safetensors' named in encoder.json is missing"):
        create_encoder(None, folder)
    with pytest.raises(EncoderError, match="data_config lacks std"):
        save_encoder_dir(tmp_path / "x", src.model, "test_resnet", {"input_size": [3, 32, 32], "mean": [0] * 3,
                                                                     "interpolation": "bilinear"})
    with pytest.raises(WsiMilError, match="unknown encoder architecture"):
        save_encoder_dir(tmp_path / "y", src.model, "no_such_net", cfg)
    assert not (tmp_path / "x").exists()


def test_state_dict_hash_tracks_every_tensor() -> None:
    enc = create_encoder("test_resnet", "random")
    h = state_dict_hash(enc.model)
    with torch.no_grad():
        next(iter(enc.model.parameters())).view(-1)[0] += 1.0
    assert state_dict_hash(enc.model) != h


def test_folder_hash_survives_batchnorm_counters(tmp_path) -> None:
    """A trained model's BatchNorm counters are not weights: saving and loading keep its hash and id."""
    import json

    import torch

    from wsi_mil.encoders import create_encoder, save_encoder_dir

    enc = create_encoder("test_resnet", "random:3")
    enc.model.train()
    with torch.no_grad():
        enc.model(torch.rand(2, 3, 32, 32))  # num_batches_tracked becomes 1
    folder = save_encoder_dir(tmp_path / "enc", enc.model, "test_resnet", enc.data_config)
    saved = json.loads((folder / "encoder.json").read_text())
    loaded = create_encoder(None, folder)
    assert loaded.weights_hash == saved.get("weights_hash", loaded.weights_hash)
    again = create_encoder(None, folder)
    assert again.encoder_id == loaded.encoder_id


def test_data_config_is_one_typed_frozen_value(tmp_path: Path) -> None:
    """Built and validated in one place; its JSON form is what encoder.json and feature files hold."""
    import dataclasses

    cfg = DataConfig.from_dict({"input_size": [3, 32, 48], "mean": [0.5, 0, 1], "std": [0.2] * 3,
                                "interpolation": "bicubic", "crop_pct": 0.9})
    assert cfg.input_size == (3, 32, 48) and cfg.hw == (32, 48) and cfg.mean == (0.5, 0.0, 1.0)
    assert cfg.to_dict() == {"input_size": [3, 32, 48], "mean": [0.5, 0.0, 1.0], "std": [0.2] * 3,
                             "interpolation": "bicubic"}
    assert list(cfg.to_dict()) == ["input_size", "mean", "std", "interpolation"]
    assert DataConfig.from_dict(cfg.to_dict()) == cfg and cfg["mean"] == [0.5, 0.0, 1.0]
    assert cfg.with_side(24).input_size == (3, 24, 24)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mean = (0.0, 0.0, 0.0)  # type: ignore[misc]
    with pytest.raises(EncoderError, match=r"here: data_config lacks std, interpolation"):
        DataConfig.from_dict({"input_size": [3, 8, 8], "mean": [0.5] * 3}, "here")
    with pytest.raises(EncoderError, match=r"here: data_config mean \[0.5, 0.5\]: expected 3 finite floats"):
        DataConfig.from_dict({**cfg.to_dict(), "mean": [0.5, 0.5]}, "here")
    with pytest.raises(EncoderError, match="std .* must be > 0"):
        DataConfig.from_dict({**cfg.to_dict(), "std": [0.2, 0.0, 0.2]})
    with pytest.raises(EncoderError, match="input_size"):
        DataConfig.from_dict({**cfg.to_dict(), "input_size": [32, 32]})
    src = create_encoder("test_resnet", "random")
    folder = save_encoder_dir(tmp_path / "enc", src.model, "test_resnet", cfg)
    assert json.loads((folder / "encoder.json").read_text())["data_config"] == cfg.to_dict()
    assert create_encoder(None, folder).data_config == cfg
    meta = json.loads((folder / "encoder.json").read_text())
    (folder / "encoder.json").write_text(json.dumps({**meta, "data_config": {"mean": [0.5] * 3}}))
    with pytest.raises(EncoderError, match=r"encoder.json: data_config lacks input_size, std, interpolation"):
        create_encoder(None, folder)
