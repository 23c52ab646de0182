"""``wsi-mil extract --stain-norm``: the real CLI and stage on small stores of real tissue.

Features must be the encoder's output on the tiles normalised with the slide's recorded fit;
the encoder id carries the method; files with and without normalisation never stand in for each
other; a slide that cannot be fitted fails alone; the study YAML's ``extract`` section sets it.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from wsi_mil.cli import main
from wsi_mil.encoders import create_encoder, save_encoder_dir
from wsi_mil.extract import EncoderSpec, ExtractConfig, run_extract
from wsi_mil.stain import MACENKO_REFERENCE, REINHARD_REFERENCE, MacenkoFit, ReinhardFit, fit_store
from wsi_mil.stain.registry import create_stain_normalizer
from wsi_mil.stores.features import read_feature_file
from wsi_mil.stores.patches import open_patch_store, write_patch_store
from wsi_mil.study import load_study

DATA_CONFIG = {"input_size": [3, 32, 32], "mean": [0.6, 0.5, 0.7], "std": [0.2, 0.25, 0.3],
               "interpolation": "bilinear"}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init test_resnet encoder folder with a 32 px input (64 px tiles are resized)."""
    enc = create_encoder("test_resnet", "random:3")
    return save_encoder_dir(tmp_path_factory.mktemp("enc") / "tiny", enc.model, "test_resnet", DATA_CONFIG)


def write_store(job: Path, slide_id: str, tiles: np.ndarray, chunk: int = 8) -> Path:
    n = len(tiles)
    attrs = dict(slide_id=slide_id, target_mpp=0.5, mpp=0.5, tile_size_level0=64.0, tile_size=tiles.shape[1],
                 slide_hash=f"sha256:{slide_id}", slide_path=f"/slides/{slide_id}.svs", mpp_source="metadata")
    coords = np.stack([np.arange(n) * 64, np.arange(n) % 7], 1).astype(np.int64)
    return write_patch_store(job / "patches" / f"{slide_id}.zarr", tiles, coords, np.linspace(1, 0.5, n).astype(np.float32),
                             np.ones((4, 4), np.uint8), 16.0, attrs, codec="zstd", tiles_per_chunk=chunk,
                             chunks_per_shard=2)


def restained(tiles: np.ndarray) -> np.ndarray:
    """The same tissue as from another hospital: weaker haematoxylin, a warmer scanner."""
    od = -np.log((tiles.astype(np.float64) + 1) / 256)
    out = 256 * np.exp(-od * np.array([0.75, 0.9, 1.1])) - 1 + np.array([6, 0, -8])
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture()
def cohort(job: Path, cmu_tiles: np.ndarray) -> Path:
    """Three slides: real tissue (``a``), the same restained (``b``) and bare glass (``glass``)."""
    write_store(job, "a", cmu_tiles[:30])
    write_store(job, "b", restained(cmu_tiles[18:]))
    write_store(job, "glass", np.full((10, 64, 64, 3), 244, np.uint8))
    return job


def reference_features(encoder_dir: Path, tiles: np.ndarray, stain: MacenkoFit | ReinhardFit | None) -> np.ndarray:
    """Each tile alone, the textbook way: stain transform, [0, 1], resize, mean/std, the model (CPU)."""
    enc = create_encoder(None, encoder_dir)
    mean = torch.tensor(enc.data_config.mean).view(3, 1, 1)
    std = torch.tensor(enc.data_config.std).view(3, 1, 1)
    out = []
    for t in tiles:
        x = torch.from_numpy(t).float()
        if stain is not None:
            x = stain(x)  # (H, W, 3) float on [0, 255]
        x = x.permute(2, 0, 1) / 255.0
        x = F.interpolate(x[None], size=enc.input_size, mode="bilinear", antialias=True)[0]
        with torch.inference_mode():
            out.append(enc.model.float()(((x - mean) / std)[None].contiguous())[0].numpy())
    return np.stack(out)


def extract(job: Path, encoder_dir: Path, *extra: str) -> int:
    return main(["extract", str(job), "--weights", str(encoder_dir), "--device", "cpu", "--batch-size", "16",
                 "--num-workers", "0", "--no-progress", *extra])


def test_cli_macenko_features_id_attrs_and_failures(cohort: Path, encoder_dir: Path, cmu_tiles: np.ndarray,
                                                    capsys: pytest.CaptureFixture) -> None:
    plain_id = create_encoder(None, encoder_dir).encoder_id
    assert extract(cohort, encoder_dir, "--stain-norm", "macenko") == 1  # glass fails, a and b are done
    out = capsys.readouterr().out
    assert f"encoder id: {plain_id}-macenko" in out
    assert "failed glass: slide 'glass'" in " ".join(out.split()) and "tissue pixels" in out
    folder = cohort / "features" / f"{plain_id}-macenko"
    rows = {r["slide_id"]: r for r in csv.DictReader(open(cohort / "status" / f"extract-{plain_id}-macenko.csv"))}
    assert {k: r["status"] for k, r in rows.items()} == {"a": "done", "b": "done", "glass": "failed"}
    assert not (folder / "glass.h5").exists()

    f = read_feature_file(folder / "a.h5", encoder_id=f"{plain_id}-macenko")
    a = f.attrs
    assert a["stain_norm"] == "macenko" and a["extract_config"]["stain_norm"] == "macenko"
    assert a["stain_target"] == {"method": "macenko", **MACENKO_REFERENCE.to_dict()}
    # the recorded per-slide fit is the store's deterministic fit
    store = open_patch_store(cohort / "patches" / "a.zarr")
    assert a["stain_params"] == fit_store(store, create_stain_normalizer("macenko")).transform.params()
    assert a["stain_sample"]["n_tiles"] == len(a["stain_sample"]["tile_ids"]) > 0
    fitted = MacenkoFit(np.array(a["stain_params"]["stain_matrix"]), np.array(a["stain_params"]["max_concentrations"]),
                        MACENKO_REFERENCE)
    np.testing.assert_allclose(f.features, reference_features(encoder_dir, cmu_tiles[:30], fitted), rtol=1e-4, atol=1e-4)
    # normalisation changed the features, and it is the slide's own fit that is applied
    assert np.abs(f.features - reference_features(encoder_dir, cmu_tiles[:30], None)).max() > 1e-2
    b = read_feature_file(folder / "b.h5").attrs["stain_params"]
    assert b["stain_matrix"] != a["stain_params"]["stain_matrix"]


def test_normalisation_brings_restained_tissue_closer_in_feature_space(cohort: Path, encoder_dir: Path) -> None:
    """Tiles 18-29 are in both slides (b restained): their features agree better after Reinhard."""
    plain = run_extract(cohort, None, encoder_dir, ExtractConfig(device="cpu", num_workers=0), slides=["a", "b"])
    rein = run_extract(cohort, None, encoder_dir, ExtractConfig(device="cpu", num_workers=0, stain_norm="reinhard"),
                       slides=["a", "b"])
    assert rein.encoder_id == plain.encoder_id + "-reinhard"

    def gap(folder: Path) -> float:
        fa, fb = read_feature_file(folder / "a.h5").features[18:], read_feature_file(folder / "b.h5").features[:12]
        return float(np.linalg.norm(fa - fb, axis=1).mean())

    assert gap(rein.features_dir) < 0.7 * gap(plain.features_dir)
    r = read_feature_file(rein.features_dir / "a.h5").attrs
    assert r["stain_target"]["mean"] == list(REINHARD_REFERENCE.mean) and set(r["stain_params"]) >= {"mean", "std"}


def test_resume_never_mixes_features_with_and_without_normalisation(cohort: Path, encoder_dir: Path) -> None:
    cfg = ExtractConfig(device="cpu", num_workers=0)
    plain = run_extract(cohort, None, encoder_dir, cfg, slides=["a", "b"])
    mac_cfg = cfg.model_copy(update={"stain_norm": "macenko"})
    first = run_extract(cohort, None, encoder_dir, mac_cfg, slides=["a", "b"])
    assert first.features_dir != plain.features_dir
    assert [s.status for s in first.statuses] == ["done", "done"]  # the plain files are not taken as done
    again = run_extract(cohort, None, encoder_dir, mac_cfg, slides=["a", "b"])
    assert [s.status for s in again.statuses] == ["skipped", "skipped"]

    # a plain file put into the normalised folder (same encoder id written over) is redone
    shutil.copy(plain.features_dir / "a.h5", first.features_dir / "a.h5")
    with h5py.File(first.features_dir / "a.h5", "r+") as h:
        h.attrs["encoder_id"] = first.encoder_id
    # a file normalised onto another target is redone too
    with h5py.File(first.features_dir / "b.h5", "r+") as h:
        h.attrs["stain_target"] = "json:" + '{"method": "macenko", "io": 250}'
    redo = run_extract(cohort, None, encoder_dir, mac_cfg, slides=["a", "b"])
    assert [s.status for s in redo.statuses] == ["done", "done"]
    assert read_feature_file(first.features_dir / "a.h5").attrs["stain_norm"] == "macenko"
    # and the plain run still skips its own files (no stain attribute needed)
    assert {s.status for s in run_extract(cohort, None, encoder_dir, cfg, slides=["a", "b"]).statuses} == {"skipped"}


def test_study_yaml_and_config_file_set_stain_norm(cohort: Path, encoder_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"slides": "slides", "labels": "labels.csv", "job": str(cohort),
                                     "encoder": {"weights": str(encoder_dir)},
                                     "extract": {"stain_norm": "reinhard", "num_workers": 0}}), encoding="utf-8")
    assert load_study(study).extract_config().stain_norm == "reinhard"
    assert extract(cohort, encoder_dir, "--config", str(study), "--slide", "a") == 0
    assert "-reinhard; features:" in capsys.readouterr().out
    # the command line wins over the file
    assert extract(cohort, encoder_dir, "--config", str(study), "--slide", "a", "--stain-norm", "none") == 0
    assert "-reinhard" not in capsys.readouterr().out
    assert extract(cohort, encoder_dir, "--stain-norm", "vahadane") == 2
    assert "'stain_norm': Input should be 'none', 'macenko' or 'reinhard' (got 'vahadane')" in capsys.readouterr().err


def test_dask_tasks_carry_the_fit_and_device_processes_rebuild_the_same_id(cohort: Path, encoder_dir: Path) -> None:
    from distributed import LocalCluster

    cfg = ExtractConfig(device="cpu", batch_size=8, stain_norm="macenko")
    assert EncoderSpec(None, str(encoder_dir), None, "macenko").build().encoder_id.endswith("-macenko")
    local = run_extract(cohort, None, encoder_dir, cfg.model_copy(update={"num_workers": 0}), slides=["a"])
    expected = read_feature_file(local.features_dir / "a.h5").features
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        report = run_extract(cohort, None, encoder_dir, cfg, scheduler=cluster.scheduler_address, slides=["a"],
                             overwrite=True)
    assert [s.status for s in report.statuses] == ["done"] and report.encoder_id == local.encoder_id
    np.testing.assert_allclose(read_feature_file(report.features_dir / "a.h5").features, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_several_device_processes_apply_each_slides_fit(cohort: Path, encoder_dir: Path) -> None:
    """Fitted transforms travel to spawned device processes (pickled) and give the same features."""
    cfg = ExtractConfig(device="cpu", batch_size=8, num_workers=0, stain_norm="macenko")
    local = run_extract(cohort, None, encoder_dir, cfg, slides=["a", "b"])
    expected = {s: read_feature_file(local.features_dir / f"{s}.h5").features for s in ("a", "b")}
    report = run_extract(cohort, None, encoder_dir, cfg.model_copy(update={"device": "cpu,cpu"}), slides=["a", "b"],
                         overwrite=True)
    assert [s.status for s in report.statuses] == ["done", "done"]
    for s in ("a", "b"):
        np.testing.assert_allclose(read_feature_file(report.features_dir / f"{s}.h5").features, expected[s],
                                   rtol=1e-5, atol=1e-5)


def test_each_slide_is_fitted_once_ahead_with_either_loader(cohort: Path, encoder_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import wsi_mil.stain.fit as fit_module

    calls: list[str] = []
    real = fit_module.fit_store_path

    def counting(path: str, normalizer):  # type: ignore[no-untyped-def]
        calls.append(Path(path).stem)
        return real(path, normalizer)

    monkeypatch.setattr(fit_module, "fit_store_path", counting)
    features = {}
    for loader in ("threads", "processes"):
        calls.clear()
        cfg = ExtractConfig(device="cpu", batch_size=8, num_workers=1, loader=loader, stain_norm="macenko")
        report = run_extract(cohort, None, encoder_dir, cfg, overwrite=True)
        assert [(s.slide_id, s.status) for s in report.statuses] == [("a", "done"), ("b", "done"), ("glass", "failed")]
        assert "only 0 tissue pixels" in report.statuses[2].reason
        assert sorted(calls) == ["a", "b", "glass"]  # once per slide, though a has 4 batches of 8 tiles
        features[loader] = read_feature_file(report.features_dir / "b.h5").features
    np.testing.assert_allclose(features["threads"], features["processes"], rtol=1e-5, atol=1e-5)
