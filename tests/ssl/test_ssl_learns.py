"""Proof that SimCLR learns: on a synthetic cohort, its features separate lesion from normal
tiles clearly better than the same architecture at random init (small CPU version; the larger
one is ``benchmarks/bench_pretrain.py probe``)."""

from __future__ import annotations

from pathlib import Path

from wsi_mil.encoders import create_encoder
from wsi_mil.evaluation.probe import encode_tiles, labelled_tiles, probe_auc
from wsi_mil.ssl.config import PretrainConfig
from wsi_mil.ssl.stage import run_pretrain
from wsi_mil.tiling.config import TilingConfig


def test_simclr_features_find_lesions_better_than_random_init(synth_cohort: Path, tmp_path: Path,
                                                              one_torch_thread: None) -> None:
    from wsi_mil.tiling.stage import run_tile

    # 56 px at 2 mpp: the same 112 um field as 224 px at 0.5 mpp, small enough for the CPU
    job, probe_job = tmp_path / "job", tmp_path / "probe"
    run_tile([synth_cohort], job, TilingConfig(target_mpp=2.0, tile_size=56), workers=0, progress=False)
    # the probe reads a grid at half-tile steps: 4x the lesion tiles, so the AUCs are less noisy
    run_tile([synth_cohort], probe_job, TilingConfig(target_mpp=2.0, tile_size=56, stride=28), workers=0,
                progress=False)
    cfg = PretrainConfig(arch="test_resnet", epochs=5, batch_size=64, input_size=32, lr=2e-3,
                         proj_hidden_dim=256, proj_dim=64, seed=0)
    out = tmp_path / "encoder"
    summary = run_pretrain(job, out, cfg, device="cpu")
    assert summary.epoch_losses[-1] < summary.epoch_losses[0] - 0.5

    tiles, labels, _ = labelled_tiles(probe_job, synth_cohort)
    assert labels.sum() >= 40 and (1 - labels).sum() >= 500
    trained = create_encoder(None, out)
    random = create_encoder("test_resnet", "random:0")  # the very weights SimCLR started from
    dc = trained.data_config
    ssl = probe_auc(encode_tiles(trained.model, tiles, 32, dc["mean"], dc["std"]), labels)
    rnd = probe_auc(encode_tiles(random.model, tiles, 32, dc["mean"], dc["std"]), labels)
    print(f"tile AUC simclr {ssl} random init {rnd}")
    # measured here (seed 0): k-NN 0.943 vs 0.879, linear 0.992 vs 0.976; with 8 epochs over seeds
    # 0-2 the k-NN gain was +0.04 to +0.10 (benchmarks/bench_pretrain.py probe, BENCHMARKS.md)
    assert ssl["knn_auc"] >= rnd["knn_auc"] + 0.03
    assert ssl["linear_auc"] >= rnd["linear_auc"]
