"""The SimCLR loop: it lowers the loss, checkpoints, and resumes exactly after an interruption."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.errors import WsiMilError
from wsi_mil.ssl.checkpoint import CheckpointError, load_checkpoint
from wsi_mil.ssl.config import AugmentConfig, PretrainConfig
from wsi_mil.ssl.data import ArrayTileSource
from wsi_mil.ssl.optim import LARS, build_optimizer, warmup_cosine
from wsi_mil.ssl.stage import prepare_backbone
from wsi_mil.ssl.train import train_simclr

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupt(Exception):
    pass


def small_cfg(**kw: object) -> PretrainConfig:
    base = dict(arch="test_resnet", epochs=2, batch_size=16, input_size=32, proj_hidden_dim=32, proj_dim=16,
                shuffle_chunks=2, read_threads=2, log_every=1)
    base.update(kw)
    return PretrainConfig(**base)


def make_sources(seed: int = 0) -> list[ArrayTileSource]:
    """Two sources (40 and 30 tiles of 40 px) of smooth random colour fields."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (40, 30):
        low = torch.tensor(rng.uniform(0, 255, (n, 3, 5, 5)))
        t = torch.nn.functional.interpolate(low, size=(40, 40), mode="bicubic", align_corners=False)
        out.append(ArrayTileSource(t.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().copy(), chunk=8))
    return out


def run(cfg: PretrainConfig, ckpt: Path | None, resume: bool = False, stop_at: int | None = None,
        checkpoint_every: int | None = None):
    backbone, dim, dc, size = prepare_backbone(cfg)

    def hook(step: int) -> None:
        if stop_at is not None and step == stop_at:
            raise Interrupt

    return train_simclr(backbone, dim, make_sources(), ["a", "b"], cfg, size, dc["mean"], dc["std"], ckpt,
                        resume=resume, on_step_end=hook, checkpoint_every=checkpoint_every)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("optimizer", ["adamw", "lars"])
def test_resume_after_interruption_is_exact(tmp_path: Path, optimizer: str) -> None:
    cfg = small_cfg(optimizer=optimizer)
    full = run(cfg, tmp_path / "a.pt")
    assert full.global_step == 2 * full.steps_per_epoch == full.total_steps
    spe = full.steps_per_epoch
    ckpt = tmp_path / "b.pt"
    with pytest.raises(Interrupt):  # crash during the second epoch: the epoch-1 checkpoint survives
        run(cfg, ckpt, stop_at=spe + 1)
    saved = load_checkpoint(ckpt)
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (1, 0, spe)
    resumed = run(cfg, ckpt, resume=True)
    assert resumed.resumed_from == spe and resumed.global_step == full.global_step
    assert same_weights(full.model, resumed.model)
    assert resumed.epoch_losses == full.epoch_losses


def test_resume_mid_epoch_with_step_checkpoints(tmp_path: Path) -> None:
    cfg = small_cfg(epochs=1)
    full = run(cfg, None)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(Interrupt):
        run(cfg, ckpt, stop_at=3, checkpoint_every=2)
    assert load_checkpoint(ckpt)["step"] == 2
    resumed = run(cfg, ckpt, resume=True, checkpoint_every=2)
    assert resumed.resumed_from == 2
    assert same_weights(full.model, resumed.model)


def test_without_resume_a_run_starts_over(tmp_path: Path) -> None:
    cfg = small_cfg(epochs=1)
    ckpt = tmp_path / "d.pt"
    run(cfg, ckpt)
    again = run(cfg, ckpt, resume=False)
    assert again.resumed_from is None and again.global_step == again.total_steps


def test_loss_falls(tmp_path: Path) -> None:
    aug = AugmentConfig(crop_scale=(0.6, 1.0), hed_p=0, color_p=0, blur_p=0)
    cfg = small_cfg(epochs=8, lr=3e-3, warmup_epochs=0.5, temperature=0.2, augment=aug)
    res = run(cfg, None)
    assert all(math.isfinite(v) for v in res.epoch_losses)
    assert np.mean(res.epoch_losses[-2:]) < res.epoch_losses[0] - 1.0


def test_max_steps_stops_early(tmp_path: Path) -> None:
    res = run(small_cfg(epochs=3, max_steps=5), tmp_path / "e.pt")
    assert res.global_step == res.total_steps == 5
    saved = load_checkpoint(tmp_path / "e.pt")
    assert saved["global_step"] == 5


def test_corrupt_or_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    cfg = small_cfg(epochs=1)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        run(cfg, bad, resume=True)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(CheckpointError, match="not a SimCLR checkpoint"):
        run(cfg, bad, resume=True)
    good = tmp_path / "good.pt"
    run(cfg, good)
    with pytest.raises(CheckpointError, match="temperature"):
        run(small_cfg(epochs=1, temperature=0.3), good, resume=True)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        run(cfg, truncated, resume=True)


def test_batch_larger_than_tiles_is_an_error() -> None:
    with pytest.raises(WsiMilError, match="batch size 128 is larger than the 70 tiles"):
        run(small_cfg(batch_size=128), None)


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(5, 0, 10) == pytest.approx(0.5)


def test_lars_step_matches_formula() -> None:
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars": True},
                {"params": [b], "weight_decay": 0.0, "lars": False}], lr=0.5, momentum=0.9, eta=0.01)
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    g = torch.tensor([[1.0, 0.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    trust = 0.01 * 5.0 / torch.linalg.vector_norm(g)
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * trust * g)
    torch.testing.assert_close(b.detach(), torch.tensor([0.0]))
    opt.step()  # momentum: the second step repeats the first update scaled by (1 + 0.9) for b
    torch.testing.assert_close(b.detach(), torch.tensor([0.0 - 0.5 * 2.0 * 1.9]))


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, "adamw", 1e-3, 0.05)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and [p.ndim for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3
