"""The tile stage end to end: real slides, bad input, resume, SIGKILL, Dask (local and remote)."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.cli import main
from wsi_mil.errors import ConfigError
from wsi_mil.runrecord import read_run_record
from wsi_mil.slide import open_slide
from wsi_mil.stores.patches import is_complete_patch_store, open_patch_store
from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.stage import run_tile

BIN = Path(sys.executable).parent


def _status(job: Path) -> dict[str, dict]:
    with open(job / "status" / "tile.csv", newline="") as f:
        return {r["slide_id"]: r for r in csv.DictReader(f)}


def _copies(src: Path, folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"slide{i:02d}.svs").symlink_to(src)
    return folder


def test_every_shared_slide(shared_slides: Path, job: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["tile", str(shared_slides), "-o", str(job), "--workers", "0", "--no-progress"])
    assert code == 1, "some slides failed, so the exit status says so"
    st = _status(job)
    assert st["CMU-1-Small-Region"]["status"] == "done" and 40 <= int(st["CMU-1-Small-Region"]["n_tiles"]) <= 60
    assert open_patch_store(job / "patches" / "CMU-1-Small-Region.zarr").n_tiles == int(st["CMU-1-Small-Region"]["n_tiles"])
    for ok_empty in ("small", "dicom_openslide_boxes"):
        assert st[ok_empty]["status"] == "done" and st[ok_empty]["n_tiles"] == "0"
        assert open_patch_store(job / "patches" / f"{ok_empty}.zarr").n_tiles == 0
    assert "no mpp" in st["tcga-cr-7395-01a-01-ts1"]["reason"] and "--mpp" in st["tcga-cr-7395-01a-01-ts1"]["reason"]
    assert "implausible mpp" in st["boxes"]["reason"]
    assert "unopenable.tiff: cannot open slide" in st["unopenable"]["reason"]
    assert "unreadable.svs: cannot read region" in st["unreadable"]["reason"]
    for sid in ("tcga-cr-7395-01a-01-ts1", "boxes", "unopenable", "unreadable"):
        assert st[sid]["status"] == "failed"
        assert "\n" not in st[sid]["reason"]
        assert not (job / "patches" / f"{sid}.zarr").exists()
    out = capsys.readouterr().out
    assert "4 failed" in out and "unopenable" in out


def test_store_content_matches_openslide(cmu_slide: Path, job: Path) -> None:
    run_tile([cmu_slide], job, TilingConfig(), workers=0)
    store = open_patch_store(job / "patches" / "CMU-1-Small-Region.zarr")
    a = store.attrs
    assert a["mpp"] == pytest.approx(0.499) and a["mpp_source"] == "metadata"
    assert a["tile_size_level0"] == pytest.approx(224 * 0.5 / 0.499)
    assert a["tile_size_um"] == pytest.approx(112.0)
    assert a["read_level"] == 0 and a["resampled"] is False  # 0.499 vs 0.5: < half a pixel per tile
    assert a["slide_hash"].startswith("sha256") and a["level0_width"] == 2220 and a["vendor"] == "aperio"
    assert a["config"]["target_mpp"] == 0.5 and a["schema"] == "wsi_mil.patches/1"
    assert (store.tissue_fraction >= 0.25).all()
    tiles = store.read_tiles(0, store.n_tiles)
    with open_slide(cmu_slide) as s:
        for i in (0, 17, store.n_tiles - 1):
            x, y = store.coords[i]
            ref = s.read_region((int(x), int(y)), 0, (224, 224))
            mse = ((tiles[i].astype(float) - ref.astype(float)) ** 2).mean()
            assert 10 * np.log10(255**2 / mse) > 25.0  # JPEG q90 4:2:0 re-encoding: ~29 dB PSNR


def test_lossless_codec_is_exact(cmu_slide: Path, job: Path) -> None:
    run_tile([cmu_slide], job, TilingConfig(codec="zstd"), workers=0)
    store = open_patch_store(job / "patches" / "CMU-1-Small-Region.zarr")
    assert store.attrs["codec"] == "zstd"
    with open_slide(cmu_slide) as s:
        for i in (0, store.n_tiles // 2):
            x, y = store.coords[i]
            np.testing.assert_array_equal(store.read_tiles(i, i + 1)[0], s.read_region((int(x), int(y)), 0, (224, 224)))


def test_coarser_target_resamples_exactly(cmu_slide: Path, job: Path) -> None:
    """1.0 µm/px tiles from a 0.499 µm/px slide: area-averaged level-0 regions of 2.004x size."""
    run_tile([cmu_slide], job, TilingConfig(target_mpp=1.0, tile_size=112, min_tissue_fraction=0.5), workers=0)
    store = open_patch_store(job / "patches" / "CMU-1-Small-Region.zarr")
    assert store.attrs["resampled"] is True
    size0 = 112 * 1.0 / 0.499
    assert store.tile_size_level0 == pytest.approx(size0)
    x, y = store.coords[3]
    tile = store.read_tiles(3, 4)[0].astype(float)
    with open_slide(cmu_slide) as s:
        region = s.read_region((int(x), int(y)), 0, (int(round(size0)), int(round(size0)))).astype(float)
    # compare 8x8 block means: equal up to JPEG and sub-pixel phase
    t = tile.reshape(8, 14, 8, 14, 3).mean(axis=(1, 3))
    r = region[: 224, : 224].reshape(8, 28, 8, 28, 3).mean(axis=(1, 3))
    assert np.abs(t - r).mean() < 4.0


def test_mpp_override_reads_from_the_matching_level(shared_slides: Path, job: Path) -> None:
    code = main(["tile", str(shared_slides / "tcga-cr-7395-01a-01-ts1.svs"), "-o", str(job), "--mpp", "0.25",
                 "--workers", "0", "--no-progress"])
    assert code == 0
    store = open_patch_store(job / "patches" / "tcga-cr-7395-01a-01-ts1.zarr")
    assert store.attrs["mpp_source"] == "fallback" and store.attrs["mpp_given_by"] == "--mpp"
    assert store.attrs["mpp_metadata"] is None and "no mpp" in store.attrs["mpp_metadata_problem"]
    assert store.attrs["read_level"] == 1
    assert store.attrs["resampled"] is False and store.n_tiles > 10
    assert store.tile_size_level0 == 448.0


def test_zero_tissue_gives_an_empty_valid_store(shared_slides: Path, job: Path) -> None:
    report = run_tile([shared_slides / "boxes.tiff"], job, TilingConfig(mpp=0.5, tile_size=32), workers=0)
    assert report.statuses[0].status == "done" and report.statuses[0].n_tiles == 0
    store = open_patch_store(job / "patches" / "boxes.zarr")
    assert store.n_tiles == 0 and store.tissue_mask()[0].sum() == 0


def test_resume_skips_complete_and_redoes_damaged(cmu_slide: Path, tmp_path: Path, job: Path) -> None:
    slides = _copies(cmu_slide, tmp_path / "slides", 3)
    run_tile([slides], job, TilingConfig(), workers=0)
    damaged = job / "patches" / "slide01.zarr"
    shard = next(p for p in (damaged / "tiles").rglob("*") if p.is_file() and p.name != "zarr.json")
    shard.write_bytes(shard.read_bytes()[:100])
    report = run_tile([slides], job, TilingConfig(), workers=0)
    by_id = {s.slide_id: s.status for s in report.statuses}
    assert by_id == {"slide00": "skipped", "slide01": "done", "slide02": "skipped"}
    assert is_complete_patch_store(damaged)
    # other parameters: refuse to mix before any work, naming the parameter and both values, unless --overwrite
    with pytest.raises(ConfigError, match=r"3 existing store.*tile_size: 224 in the job's stores, 256 in this run.*--overwrite"):
        run_tile([slides], job, TilingConfig(tile_size=256), workers=0)
    assert open_patch_store(damaged).tile_size == 224
    report = run_tile([slides], job, TilingConfig(tile_size=256), workers=0, overwrite=True)
    assert all(s.status == "done" for s in report.statuses)
    assert open_patch_store(damaged).tile_size == 256
    assert {r.slide_id for r in read_run_record(job / "status" / "tile.csv")} == {"slide00", "slide01", "slide02"}


def test_config_file_typo_is_an_error(tmp_path: Path, cmu_slide: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text("tiling:\n  target_mpp: 0.5\n  tile_sise: 256\n")
    code = main(["tile", str(cmu_slide), "-o", str(tmp_path / "job"), "--config", str(cfg), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "study.yaml" in err and "unknown key 'tile_sise'" in err
    cfg.write_text("tiling:\n  target_mpp: fast\n")
    assert main(["tile", str(cmu_slide), "-o", str(tmp_path / "job"), "--config", str(cfg)]) == 2
    assert "'target_mpp'" in capsys.readouterr().err


def test_local_dask_cluster(cmu_slide: Path, tmp_path: Path, job: Path) -> None:
    slides = _copies(cmu_slide, tmp_path / "slides", 3)
    report = run_tile([slides], job, TilingConfig(), workers=2, progress=False)
    assert [s.status for s in report.statuses] == ["done"] * 3
    assert all(is_complete_patch_store(job / "patches" / f"slide0{i}.zarr") for i in range(3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_existing_scheduler_on_localhost(cmu_slide: Path, shared_slides: Path, tmp_path: Path, job: Path,
                                        dask_scheduler: str) -> None:
    """A real scheduler and two workers started on localhost; the CLI sends tasks there."""
    slides = _copies(cmu_slide, tmp_path / "slides", 3)
    (slides / "bad.tiff").symlink_to(shared_slides / "edge_cases" / "unopenable.tiff")
    code = main(["tile", str(slides), "-o", str(job), "--scheduler", dask_scheduler, "--no-progress"])
    assert code == 1
    st = _status(job)
    assert [st[f"slide0{i}"]["status"] for i in range(3)] == ["done"] * 3
    assert st["bad"]["status"] == "failed" and "cannot open slide" in st["bad"]["reason"]


def test_unreachable_scheduler(cmu_slide: Path, job: Path, capsys: pytest.CaptureFixture) -> None:
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = main(["tile", str(cmu_slide), "-o", str(job), "--scheduler", f"tcp://127.0.0.1:{_free_port()}"])
    assert code == 2 and "cannot reach the Dask scheduler" in capsys.readouterr().err


def test_sigkill_then_resume(cmu_slide: Path, tmp_path: Path, job: Path) -> None:
    slides = _copies(cmu_slide, tmp_path / "slides", 6)
    cmd = [str(BIN / "wsi-mil"), "tile", str(slides), "-o", str(job), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not any(is_complete_patch_store(p) for p in (job / "patches").glob("*.zarr")):
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("tiling did not start")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stores = list((job / "patches").glob("*.zarr"))
    assert len(stores) < 6, "killed in the middle"
    assert all(is_complete_patch_store(p) for p in stores), "no half-written store under a final name"
    report = run_tile([slides], job, TilingConfig(), workers=0)
    assert all(s.ok for s in report.statuses)
    assert all(is_complete_patch_store(job / "patches" / f"slide{i:02d}.zarr") for i in range(6))
    assert not [p for p in (job / "patches").iterdir() if p.name.startswith(".")], "temporaries swept"
