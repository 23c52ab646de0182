"""Publisher weights offline: folders as huggingface-cli writes them, the local HF cache layout,
fail-closed errors with the download command, key/shape mismatch lists, the sha256 manifest."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
import torch

from wsi_mil.cli import main
from wsi_mil.encoders import ENTRIES, build_backbone, create_encoder, file_sha256, load_manifest
from wsi_mil.encoders.sources import cached_snapshot, weights_found
from wsi_mil.errors import EncoderError

REPO = "paige-ai/Virchow2"


@pytest.fixture()
def tiny(monkeypatch: pytest.MonkeyPatch):
    """Virchow2's exact recipe (SwiGLU, 4 registers, cls+mean) at a toy size, registered as an entry."""
    base = ENTRIES["virchow2"]
    entry = dataclasses.replace(base, name="tiny_virchow2",
                                timm_kwargs={**base.timm_kwargs, "embed_dim": 96, "depth": 2, "num_heads": 4})
    monkeypatch.setitem(ENTRIES, entry.name, entry)
    return entry


def _publisher_folder(folder: Path, entry, seed: int = 0, name: str = "pytorch_model.bin") -> dict:
    torch.manual_seed(seed)
    sd = build_backbone(entry).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / name)
    (folder / "config.json").write_text(json.dumps({"architecture": entry.timm_arch,
                                                    "model_args": {"mlp_ratio": 5.3375, "reg_tokens": 4}}))
    return sd


def _hf_cache(root: Path, entry, commit: str = "3158645804b69e3f3bc4439d4116edddf0840a72") -> Path:
    repo = root / ("models--" + REPO.replace("/", "--"))
    blob = repo / "blobs"
    snap = repo / "snapshots" / commit
    _publisher_folder(blob / "tmp", entry)
    snap.mkdir(parents=True)
    for name in ("pytorch_model.bin", "config.json"):  # the hub cache links snapshot files into blobs/
        (blob / "tmp" / name).rename(blob / name)
        (snap / name).symlink_to(Path("../../blobs") / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_publisher_folder_loads_and_pools(tmp_path: Path, tiny) -> None:
    sd = _publisher_folder(tmp_path / "Virchow2", tiny)
    enc = create_encoder("tiny_virchow2", tmp_path / "Virchow2")
    assert enc.embed_dim == 192 and enc.pooling == "cls+mean" and enc.attrs()["pooling"] == "cls+mean"
    assert torch.equal(enc.model.backbone.state_dict()["reg_token"], sd["reg_token"])
    assert enc.encoder_id.startswith("tiny_virchow2-Virchow2-") and "pytorch_model.bin" in enc.weights_source
    assert enc.model(torch.zeros(1, 3, 224, 224)).shape == (1, 192)


def test_hub_reads_the_local_cache_without_network(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _hf_cache(tmp_path / "hub", tiny)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # whatever it says, nothing goes to the network

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert cached_snapshot(REPO) == snap and weights_found(tiny) == snap / "pytorch_model.bin"
    enc = create_encoder("tiny_virchow2", "hub")
    assert enc.encoder_id.startswith("tiny_virchow2-hub-") and f"hf cache {REPO}@{snap.name}" in enc.weights_source
    # HF_HOME/hub when HF_HUB_CACHE is unset
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert cached_snapshot(REPO) == snap
    # no refs/main: a single snapshot is taken, several are ambiguous
    (snap.parents[1] / "refs" / "main").unlink()
    assert cached_snapshot(REPO) == snap
    (snap.parent / ("0" * 40)).mkdir()
    with pytest.raises(EncoderError, match="2 snapshots and no refs/main"):
        cached_snapshot(REPO)


def test_missing_weights_name_the_entry_the_places_and_the_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(EncoderError) as err:
        create_encoder("virchow2", "hub")
    msg = str(err.value)
    assert "encoder 'virchow2': weights not found on this machine" in msg
    assert str(tmp_path / "empty" / "models--paige-ai--Virchow2") in msg
    assert "huggingface-cli download paige-ai/Virchow2 --local-dir Virchow2" in msg
    assert "huggingface-cli login" in msg and "rsync -a Virchow2/" in msg and "--weights /models/Virchow2" in msg
    assert "\n" not in msg
    with pytest.raises(EncoderError, match="weights not found .*nowhere.*huggingface-cli download MahmoodLab/UNI"):
        create_encoder("uni", tmp_path / "nowhere")
    (tmp_path / "UNI").mkdir()
    (tmp_path / "UNI" / "README.md").write_text("x")
    with pytest.raises(EncoderError, match=r"UNI: no weights file for encoder 'uni' \(looked for pytorch_model.bin, "
                                           r"model.safetensors; the folder holds README.md\)"):
        create_encoder("uni", tmp_path / "UNI")
    with pytest.raises(EncoderError, match="does not apply to a publisher's model"):
        create_encoder("uni", "timm")


def test_mismatch_lists_keys_and_shapes(tmp_path: Path, tiny) -> None:
    sd = _publisher_folder(tmp_path / "V", tiny)
    sd["reg_token"] = torch.zeros(1, 8, 96)
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 96)
    del sd["blocks.1.norm2.bias"]
    sd["mask_token"] = torch.zeros(1, 96)
    torch.save(sd, tmp_path / "V" / "pytorch_model.bin")
    with pytest.raises(EncoderError) as err:
        create_encoder("tiny_virchow2", tmp_path / "V")
    msg = str(err.value)
    assert "2 with another shape (blocks.0.mlp.fc1.weight (10, 96) vs expected (512, 96), reg_token (1, 8, 96) vs " \
           "expected (1, 4, 96))" in msg
    assert "1 missing (blocks.1.norm2.bias)" in msg and "1 unexpected (mask_token)" in msg


def test_a_config_json_of_another_model_is_refused(tmp_path: Path, tiny) -> None:
    _publisher_folder(tmp_path / "V", tiny)
    (tmp_path / "V" / "config.json").write_text(json.dumps({"architecture": "vit_huge_patch14_224",
                                                            "model_args": {"reg_tokens": 8, "mlp_ratio": 4}}))
    with pytest.raises(EncoderError, match=r"model_args differ .*mlp_ratio 4 \(entry: 5.3375\); reg_tokens 8 \(entry: 4\)"):
        create_encoder("tiny_virchow2", tmp_path / "V")
    (tmp_path / "V" / "config.json").write_text(json.dumps({"architecture": "vit_large_patch16_224"}))
    with pytest.raises(EncoderError, match="describes a 'vit_large_patch16_224'"):
        create_encoder("tiny_virchow2", tmp_path / "V")


def test_manifest_pins_path_and_sha256(tmp_path: Path, tiny) -> None:
    _publisher_folder(tmp_path / "V", tiny)
    digest = file_sha256(tmp_path / "V" / "pytorch_model.bin")
    manifest = tmp_path / "weights.yaml"
    manifest.write_text(f"tiny_virchow2:\n  path: V\n  sha256: {digest}\n")
    enc = create_encoder("tiny_virchow2", None, manifest=manifest)  # the pinned path, relative to the manifest
    assert enc.weights_file_sha256 == f"sha256:{digest}" and enc.attrs()["weights_file_sha256"] == f"sha256:{digest}"
    assert create_encoder("tiny_virchow2", tmp_path / "V", manifest=manifest).weights_hash == enc.weights_hash

    _publisher_folder(tmp_path / "V", tiny, seed=1)  # another download in the same place
    with pytest.raises(EncoderError, match=r"pytorch_model.bin: sha256 [0-9a-f]{64} differs from .* pinned for "
                                           r"'tiny_virchow2' in .*weights.yaml"):
        create_encoder("tiny_virchow2", None, manifest=manifest)
    with pytest.raises(EncoderError, match="pins no weights for encoder 'uni'"):
        create_encoder("uni", tmp_path / "V", manifest=manifest)
    with pytest.raises(EncoderError, match="random.* has none"):
        create_encoder("tiny_virchow2", "random", manifest=manifest)
    for text, err in (("uni: {path: x}\n", "exactly the keys path and sha256"),
                      ("uni: {path: x, sha256: abc}\n", "is not 64 hex digits"), ("- a\n", "expected a mapping"),
                      (f"uni: {{path: x, sha256: {'1' * 64}}}\n", "read as a int, not text; put it in quotes")):
        manifest.write_text(text)
        with pytest.raises(EncoderError, match=err):
            load_manifest(manifest)


def test_wsi_mil_encoders_lists_shapes_licences_and_local_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    snap = tmp_path / "hub" / "models--paige-ai--Virchow2" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "pytorch_model.bin").write_bytes(b"x")  # found, not loaded: the listing reads no weights
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "UNI").mkdir()
    (tmp_path / "UNI" / "pytorch_model.bin").write_bytes(b"y")
    manifest = tmp_path / "weights.yaml"
    manifest.write_text(f"uni: {{path: UNI, sha256: '{'0' * 64}'}}\n")
    assert main(["encoders", "--json", "--weights-manifest", str(manifest)]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["virchow2"]["width"] == 2560 and rows["virchow2"]["input_size"] == [224, 224]
    assert rows["virchow2"]["weights"] == f"hub: {snap / 'pytorch_model.bin'}"
    assert rows["virchow2"]["licence"].startswith("CC-BY-NC-ND-4.0") and rows["virchow2"]["licence"].endswith("gated")
    assert rows["uni"]["weights"] == f"manifest: {tmp_path / 'UNI' / 'pytorch_model.bin'}"
    assert rows["h_optimus_0"]["params"] == 1_134_774_272 and rows["h_optimus_0"]["weights"] == ""
    assert rows["resnet50_trunc"]["width"] == 1024 and rows["midnight"]["width"] == 3072
    assert main(["encoders"]) == 0
    assert "paige-ai/Virchow2" in capsys.readouterr().out
