"""Proof that SimCLR learns: on a synthetic cohort, its features separate lesion from normal
tiles clearly better than the same architecture at random init (small CPU version; the larger
one is ``benchmarks/bench_pretrain.py probe``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from wsi_mil.config import TilingConfig
from wsi_mil.encoders import create_encoder
from wsi_mil.ssl.config import PretrainConfig
from wsi_mil.ssl.probe import encode_tiles, labelled_tiles, probe_auc
from wsi_mil.ssl.stage import run_pretrain


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread: on 2 shared cores, 2 threads were 8x slower than 1 (oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_simclr_features_find_lesions_better_than_random_init(synth_cohort: Path, tmp_path: Path,
                                                              one_thread: None) -> None:
    from wsi_mil.stages.tile import tile_slides

    job = tmp_path / "job"
    # 56 px at 2 mpp: the same 112 um field as 224 px at 0.5 mpp, small enough for the CPU
    tile_slides([synth_cohort], job, TilingConfig(target_mpp=2.0, tile_size=56), workers=0, progress=False)
    cfg = PretrainConfig(arch="test_resnet", epochs=3, batch_size=64, input_size=48, lr=2e-3,
                         proj_hidden_dim=256, proj_dim=64, seed=0)
    out = tmp_path / "encoder"
    summary = run_pretrain(job, out, cfg, device="cpu")
    assert summary.epoch_losses[-1] < summary.epoch_losses[0]

    tiles, labels, _ = labelled_tiles(job, synth_cohort)
    assert labels.sum() >= 10 and (1 - labels).sum() >= 100
    trained = create_encoder(None, out)
    random = create_encoder("test_resnet", "random:0")
    dc = trained.data_config
    f_ssl = encode_tiles(trained.model, tiles, 48, dc["mean"], dc["std"])
    f_rnd = encode_tiles(random.model, tiles, 48, dc["mean"], dc["std"])
    ssl, rnd = probe_auc(f_ssl, labels), probe_auc(f_rnd, labels)
    print(f"tile AUC simclr {ssl} random init {rnd}")
    # measured on this cohort (seeds 0 and 1): linear 0.962 / 0.965 (SimCLR) vs 0.921 / 0.928 (random);
    # the k-NN read-out is noisier with 19 lesion tiles (0.81-0.89 vs 0.86-0.88) and is not asserted
    assert ssl["linear_auc"] >= rnd["linear_auc"] + 0.02
    assert ssl["linear_auc"] > 0.93
