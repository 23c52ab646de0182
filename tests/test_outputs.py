"""Outputs (issue 14, items 1, 2, 11): --overwrite replaces only its own kind, built beside the old one;
unwritable outputs are found before any work and reported in one line; a full disk stops a batch
cleanly; outputs follow the umask."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.cli import main
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.heads import MaxPoolOptions
from wsi_mil.mil.stage import run_train
from wsi_mil.outputs import (
    MODEL_RUN,
    DiskFullError,
    OutputError,
    check_replaceable,
    check_writable,
    is_disk_full,
    os_error_line,
)
from wsi_mil.runrecord import DONE, FAILED, RunRecord, SlideStatus, read_run_record
from wsi_mil.stores.features import write_feature_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = TrainConfig(head="mean", folds=2, max_epochs=2, min_epochs=1, patience=1, bootstrap=0, device="cpu", tune="off")
CFG_MAX = CFG.model_copy(update={"head": "max", "head_options": MaxPoolOptions()})


def _features(root: Path) -> tuple[Path, Path]:
    """12 tiny feature files (4-d, 20 tiles) and their labels CSV."""
    rng = np.random.default_rng(0)
    fd = root / "features"
    rows = []
    for i in range(12):
        x = rng.normal(size=(20, 4)).astype(np.float32)
        x[:3, 0] += 4.0 * (i % 2)
        write_feature_file(fd / f"s{i:02d}.h5", x, np.zeros((20, 2), np.int64), {"encoder_id": "e"})
        rows.append(f"s{i:02d},{i % 2}\n")
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(rows))
    return fd, labels


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def _trained_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    import torch

    root = tmp_path_factory.mktemp("trained")
    fd, labels = _features(root)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_train(fd, labels, root / "run", CFG)
    finally:
        torch.set_num_threads(before)
    return fd, labels, root / "run"


@pytest.fixture()
def trained(_trained_once: tuple[Path, Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """Features, labels and a trained run (a copy of one run trained once per module: tests change it)."""
    fd, labels, run = _trained_once
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return fd, labels, copy


# -- item 1: --overwrite replaces only its own kind ------------------------------------------
def test_train_overwrite_never_replaces_a_job_folder_a_foreign_folder_or_a_file(
        trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fd, labels, _ = trained
    job = tmp_path / "job"
    (job / "patches" / "a.zarr").mkdir(parents=True)
    (job / "status").mkdir()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    plain = tmp_path / "plain.txt"
    plain.write_text("keep me too")
    for target, why in ((job, "is a job folder"), (foreign, "is not a model run folder written by wsi-mil"),
                        (plain, "is a file, not a model run folder")):
        before = _tree(target) if target.is_dir() else {"": target.read_bytes()}
        code = main(["train", str(fd), "-l", str(labels), "-o", str(target), "--overwrite", "--tune", "off",
                     "--quiet", "--set", "max_epochs=1", "--set", "bootstrap=0"])
        err = capsys.readouterr().err
        assert code == 2 and why in err and str(target) in err and len(err.strip().splitlines()) == 1, err
        after = _tree(target) if target.is_dir() else {"": target.read_bytes()}
        assert after == before, target
    assert not list(tmp_path.glob(".*tmp-*"))


def test_train_overwrite_replaces_its_own_run_and_a_failed_rerun_keeps_the_old_one(
        trained: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    fd, labels, run = trained
    old = _tree(run)
    import wsi_mil.mil.modelrun as modelrun

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(modelrun, "save_file", full_disk)
        with pytest.raises(DiskFullError) as info:
            run_train(fd, labels, run, CFG_MAX, overwrite=True)
    msg = str(info.value)
    assert str(run) in msg and "No space left on device" in msg and "\n" not in msg
    assert _tree(run) == old  # the old result is kept, whole
    assert not list(run.parent.glob(".*tmp-*"))
    run_train(fd, labels, run, CFG_MAX, overwrite=True)
    assert '"head": "max"' in (run / "config.json").read_text()
    check_replaceable(run, MODEL_RUN)  # still a model run


def test_tile_overwrite_keeps_a_foreign_folder_at_a_store_path(cmu_slide: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    slides = tmp_path / "slides"
    slides.mkdir()
    os.symlink(cmu_slide, slides / "cmu.svs")
    foreign = job / "patches" / "cmu.zarr"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("not a patch store")
    code = main(["tile", str(slides), "-o", str(job), "--workers", "0", "--overwrite", "--no-progress",
                 "--target-mpp", "4"])
    assert code == 1
    (row,) = read_run_record(job / "status" / "tile.csv")
    assert row.status == FAILED and "not a patch store" in row.reason
    assert (foreign / "mine.txt").read_text() == "not a patch store"


def test_synth_never_replaces_a_file_it_did_not_write(tmp_path: Path) -> None:
    from wsi_mil.synth import make_cohort

    out = tmp_path / "cohort"
    out.mkdir()
    (out / "slide_000.tiff").write_bytes(b"my own slide")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="slide_000.tiff: exists and is not a synthetic slide"):
            make_cohort(out, 1, size=(256, 256), overwrite=overwrite)
        assert (out / "slide_000.tiff").read_bytes() == b"my own slide"
    job = tmp_path / "job"
    (job / "status").mkdir(parents=True)
    with pytest.raises(OutputError, match="is a job folder"):
        make_cohort(job, 1, size=(256, 256))


def test_heatmap_refuses_to_write_into_a_job_folder(tmp_path: Path) -> None:
    from wsi_mil.heatmaps.stage import run_heatmap

    job = tmp_path / "job"
    (job / "patches").mkdir(parents=True)
    with pytest.raises(OutputError, match="is a job folder"):
        run_heatmap(tmp_path / "no-run", job, job)  # refused before the run is even read


# -- item 2: unwritable outputs: before any work, in one line; a full disk stops a batch -----
def test_unwritable_outputs_are_found_before_any_work(trained: tuple[Path, Path, Path], tmp_path: Path, cmu_slide: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    fd, labels, _ = trained
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    import wsi_mil.mil.stage as mil_stage

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started although the output cannot be written")

    monkeypatch.setattr(mil_stage, "load_training_data", no_training)
    with pytest.raises(OutputError, match="a-file is a file, not a folder"):
        run_train(fd, labels, blocker / "run", CFG)
    code = main(["tile", str(cmu_slide), "-o", str(blocker / "job"), "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "a-file is a file, not a folder" in err and len(err.strip().splitlines()) == 1, err
    # a read-only folder (tests run as root, who passes chmod: the access check is simulated)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real_access(p, mode, **kw))
    with pytest.raises(OutputError, match=r"ro is not writable \(permission denied\)"):
        run_train(fd, labels, ro / "run", CFG)
    with pytest.raises(OutputError, match="is not writable"):
        check_writable(ro / "deeper" / "x.csv")
    capsys.readouterr()


def test_a_full_disk_fails_the_slide_being_written_and_stops_the_batch(cmu_slide: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    import wsi_mil.tiling.stage as tiling_stage

    slides = tmp_path / "slides"
    slides.mkdir()
    for sid in ("a", "b", "c"):
        os.symlink(cmu_slide, slides / f"{sid}.svs")
    job = tmp_path / "job"
    real_close = tiling_stage.PatchStoreWriter.close

    def close(self: tiling_stage.PatchStoreWriter, *args: object) -> Path:  # every slide's last write
        if "b.zarr" in str(self.path):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "coords" / "c" / "0"))
        return real_close(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(tiling_stage.PatchStoreWriter, "close", close)
    code = main(["tile", str(slides), "-o", str(job), "--workers", "0", "--no-progress", "--target-mpp", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "stopped" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    rows = {r.slide_id: r for r in read_run_record(job / "status" / "tile.csv")}
    assert rows["a"].status == DONE and rows["b"].status == FAILED and "c" not in rows  # c never started
    assert "b.zarr" in rows["b"].reason and is_disk_full(rows["b"].reason)
    assert not list((job / "patches").glob("b.zarr")) and not list((job / "patches").glob(".*tmp-*"))


def test_a_status_record_that_cannot_be_written_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsi_mil.runrecord as runrecord

    def full(path: object, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    record = RunRecord(tmp_path / "status" / "tile.csv")
    monkeypatch.setattr(runrecord, "write_text_atomic", full)
    with pytest.raises(DiskFullError, match=r"tile.csv: No space left on device \[ENOSPC\] while writing; free disk"):
        record.record(SlideStatus("a", "a.svs", DONE))
    monkeypatch.undo()
    perm = OSError(errno.EACCES, "Permission denied", "/x/out")
    assert os_error_line(perm).startswith("/x/out: Permission denied [EACCES] while writing; check its permissions")


# -- item 11: outputs follow the umask --------------------------------------------------------
def test_outputs_follow_the_umask(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    fd, labels, run = trained
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("model.safetensors", "config.json", "metrics.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~mask, name  # safetensors alone writes 0600
    assert stat.S_IMODE(run.stat().st_mode) == 0o777 & ~mask
    old = os.umask(0o027)
    try:
        run2 = tmp_path / "run2"
        run_train(fd, labels, run2, CFG)
    finally:
        os.umask(old)
    assert stat.S_IMODE((run2 / "model.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE(run2.stat().st_mode) == 0o750
    shutil.rmtree(run2)


def test_a_full_disk_stops_extraction_after_recording_the_slide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsi_mil.extract.runner as runner
    from wsi_mil.encoders import create_encoder
    from wsi_mil.extract import ExtractConfig, run_extract
    from wsi_mil.stores.patches import write_patch_store

    job = tmp_path / "job"
    for i, sid in enumerate(("a", "b", "c")):
        write_patch_store(job / "patches" / f"{sid}.zarr", np.full((3, 32, 32, 3), 40 * i, np.uint8),
                          np.arange(6, dtype=np.int64).reshape(3, 2), np.ones(3, np.float32), np.ones((4, 4), np.uint8),
                          16.0, {"slide_id": sid, "target_mpp": 0.5, "mpp": 0.25, "tile_size_level0": 64.0,
                                 "tile_size": 32}, codec="zstd")
    real = runner.write_feature_file

    def write(path: str, *args: object, **kwargs: object) -> None:
        if Path(path).name == "b.h5":
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "write_feature_file", write)
    enc = create_encoder("test_resnet", "random:0")
    with pytest.raises(DiskFullError, match=r"b\.h5.*No space left on device.*stopped"):
        run_extract(job, enc, cfg=ExtractConfig(device="cpu", batch_size=8, num_workers=0))
    (record,) = (job / "status").glob("extract-*.csv")
    rows = {r.slide_id: r.status for r in read_run_record(record)}
    assert rows["a"] == DONE and rows["b"] == FAILED and "c" not in rows
