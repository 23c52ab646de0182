"""SIGKILL during ``wsi-mil pretrain``, then ``--resume``: the same encoder as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_ssl_stage import add_store

ARGS = ["--arch", "test_resnet", "--epochs", "3", "--batch-size", "8", "--input-size", "32",
        "--set", "proj_hidden_dim=32", "--set", "proj_dim=16", "--device", "cpu", "--checkpoint-every", "1"]


def _cli(job: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wsi_mil", "pretrain", str(job), "-o", str(out), *ARGS, *extra]


@pytest.mark.slow  # three CLI processes (torch + timm imports each)
def test_sigkill_then_resume_gives_the_uninterrupted_encoder(job: Path, tmp_path: Path) -> None:
    from wsi_mil.jobdir import pretrain_checkpoint_path
    from wsi_mil.ssl.checkpoint import load_checkpoint

    add_store(job, "s1", 60, seed=1)
    add_store(job, "s2", 44, seed=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref_out = tmp_path / "ref"
    subprocess.run(_cli(job, ref_out), env=env, check=True, capture_output=True)

    out = tmp_path / "enc"
    ckpt = pretrain_checkpoint_path(job, out)
    proc = subprocess.Popen(_cli(job, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and load_checkpoint(ckpt)["global_step"] >= 5:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing half-written at the output path
    killed_at = load_checkpoint(ckpt)["global_step"]
    assert 5 <= killed_at < 36

    done = subprocess.run(_cli(job, out, "--resume"), env=env, check=True, capture_output=True, text=True)
    assert f"resuming at step {killed_at}" in done.stdout
    a = load_file(str(ref_out / "encoder.safetensors"))
    b = load_file(str(out / "encoder.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
