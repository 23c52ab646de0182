"""SimCLR under DDP: 2 CPU processes (gloo), initialised from torchrun-style environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from test_ssl_stage import add_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, job: str, out: str, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from wsi_mil.ssl.config import PretrainConfig
    from wsi_mil.ssl.stage import run_pretrain
    from wsi_mil.ssl.train import ProgressEvent

    events: list[ProgressEvent] = []
    cfg = PretrainConfig(arch="test_resnet", epochs=2, batch_size=8, input_size=32, proj_hidden_dim=32, proj_dim=16,
                         shuffle_chunks=1, log_every=1)
    summary = run_pretrain(job, out, cfg, device="cpu", progress=events.append)
    assert dist.is_initialized() and dist.get_world_size() == world
    dist.destroy_process_group()
    torch.save({"steps": summary.global_step, "spe": summary.steps_per_epoch, "world": summary.world_size,
                "events": len(events), "losses": summary.epoch_losses},
               Path(result_dir) / f"rank{rank}.pt")
    os._exit(0)  # skip interpreter finalisation, where gloo's threads can abort the process (see test_ssl_loss)


@pytest.mark.slow  # two processes importing torch + timm: 28-97 s measured on the shared 2 cores
def test_two_process_ddp_run_writes_one_encoder(job: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from wsi_mil.encoders import create_encoder, read_encoder_json
    from wsi_mil.jobdir import pretrain_checkpoint_path
    from wsi_mil.ssl.checkpoint import load_checkpoint

    add_store(job, "s1", 30, seed=1)
    add_store(job, "s2", 20, seed=2)
    out = tmp_path / "enc"
    mp.spawn(_worker, args=(2, _free_port(), str(job), str(out), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == r1["steps"] == 2 * r0["spe"] and r0["spe"] >= 2
    assert r0["events"] > 0 and r1["events"] == 0  # only rank 0 reports
    meta = read_encoder_json(out)
    assert meta["training"]["world_size"] == 2
    ckpt = load_checkpoint(pretrain_checkpoint_path(job, out))
    assert ckpt["world_size"] == 2 and isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2
    # the encoder loads and differs from its random init
    enc = create_encoder(None, out)
    rnd = create_encoder("test_resnet", "random:0")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(enc.model(x), rnd.model(x))
