"""``wsi-mil run`` (issue 14, items 4 and 5): ``--check`` catches everything the inputs tell (stray
labels, an output path that is a file, a tiling that differs from the job's), its advice names options
``run`` has, and a run that a later stage stops still prints every failed slide with its reason."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from wsi_mil.cli import main
from wsi_mil.config import config_to_dict
from wsi_mil.errors import LabelsError
from wsi_mil.pipeline import run_study
from wsi_mil.stores.patches import write_patch_store
from wsi_mil.study import StudyConfig
from wsi_mil.tiling.config import TilingConfig

TILING = {"target_mpp": 2.0, "tile_size": 96, "min_tissue_fraction": 0.5}


def _study(tmp_path: Path, slides: Path, labels: Path, **extra: object) -> Path:
    doc = {"name": "t", "slides": str(slides), "labels": str(labels), "job": str(tmp_path / "job"), "device": "cpu",
           "encoder": {"arch": "test_resnet", "weights": "random:0"}, "tiling": dict(TILING),
           "extract": {"batch_size": 64, "num_workers": 0},
           "train": {"head": "mean", "folds": 2, "max_epochs": 2, "min_epochs": 1, "patience": 1, "bootstrap": 0,
                     "tune": "off"}}
    doc.update(extra)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _labels(tmp_path: Path, synth_cohort: Path, change: dict[str, str]) -> Path:
    with open(synth_cohort / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = tmp_path / "labels.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "label", "case_id"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "label": change.get(r["slide_id"], r["label"])})
    return out


def _check(study: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["run", str(study), "--check"])
    captured = capsys.readouterr()
    return code, captured.err


def test_check_catches_stray_label_values_and_lists_the_classes(synth_cohort: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    # 1 beside 1.0: one class written two ways
    study = _study(tmp_path, synth_cohort, _labels(tmp_path, synth_cohort, {"slide_001": "1.0"}))
    code, err = _check(study, capsys)
    assert code == 2 and "'1' and '1.0'" in err and "classes found: '0' (4 slides), '1' (3), '1.0' (1)" in err, err
    # a third class with one slide: advice names what `run` has, and never "at most 1"
    study = _study(tmp_path, synth_cohort, _labels(tmp_path, synth_cohort, {"slide_007": "2"}))
    code, err = _check(study, capsys)
    assert code == 2 and "class '2' has 1 training slide(s)" in err and "classes found: '0' (4 slides), '1' (3), '2' (1)" in err
    assert "--folds" not in err and "at most 1" not in err and "add slides of class '2'" in err
    # too few of a class for the folds: the study's own key
    study = _study(tmp_path, synth_cohort, synth_cohort / "labels.csv",
                   train={"head": "mean", "folds": 5, "tune": "off"})
    code, err = _check(study, capsys)
    assert code == 2 and "set train.folds (--set train.folds=N) to at most 4" in err and "--folds " not in err


def test_check_catches_outputs_that_cannot_be_written_or_replaced(synth_cohort: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job"
    job.write_text("a file where the job folder goes")
    study = _study(tmp_path, synth_cohort, synth_cohort / "labels.csv")
    code, err = _check(study, capsys)
    assert code == 2 and f"job: {job} is a file" in err
    job.unlink()
    (job / "models" / "t").mkdir(parents=True)
    (job / "models" / "t" / "mine.txt").write_text("not a run")
    code, err = _check(study, capsys)
    assert code == 2 and "models/t: exists and is not a model run folder" in err
    assert (job / "models" / "t" / "mine.txt").is_file()


def test_check_catches_a_tiling_that_differs_from_the_jobs(synth_cohort: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job"
    cut = TilingConfig(**{**TILING, "tile_size": 64})
    write_patch_store(job / "patches" / "slide_000.zarr", np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 2), np.int64),
                      np.ones(1, np.float32), np.ones((4, 4), np.uint8), 8.0,
                      {"slide_id": "slide_000", "tile_size": 64, "target_mpp": 2.0, "mpp": 0.5, "tile_size_level0": 256.0,
                       "config": config_to_dict(cut)})
    study = _study(tmp_path, synth_cohort, synth_cohort / "labels.csv")
    code, err = _check(study, capsys)
    assert code == 2 and "tiling.tile_size: 64 in the job's stores, 96 in this run" in err and "another 'job' folder" in err


def test_the_summary_of_failed_slides_is_printed_whatever_stage_ends_the_run(
        synth_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture, one_torch_thread: None) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for sid in ("slide_000", "slide_002", "slide_004", "slide_005"):  # class 0
        os.symlink(synth_cohort / f"{sid}.tiff", slides / f"{sid}.tiff")
    for sid in ("slide_001", "slide_003"):  # class 1: unreadable, they fail to tile
        (slides / f"{sid}.tiff").write_bytes(b"II*\0 not really a tiff")
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"{s},{s in ('slide_001', 'slide_003'):d}\n" for s in
                                                   ("slide_000", "slide_001", "slide_002", "slide_003", "slide_004",
                                                    "slide_005")))
    study = _study(tmp_path, slides, labels)
    code = main(["run", str(study), "--workers", "0", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    assert "2 failed" in out and "failed slide_001: tile:" in out and "failed slide_003: tile:" in out, out
    assert "train    failed" in out
    # the library keeps the error's type and carries the same report
    from wsi_mil.pipeline import stopped_report

    with pytest.raises(LabelsError) as info:
        run_study(StudyConfig.model_validate(yaml.safe_load(study.read_text())), workers=0, progress=False)
    report = stopped_report(info.value)
    assert report is not None and set(report.failed) == {"slide_001", "slide_003"}
    assert [(r.name, r.status) for r in report.stages][-1] == ("train", "failed")


def test_check_reads_survival_and_regression_labels_by_the_studys_task(synth_cohort: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """A study with ``train.task: survival`` (or regression) is checked with its own reader: its
    labels CSV has no ``label`` column, and too few events for the folds is caught with advice
    that names the study's option."""
    with open(synth_cohort / "labels.csv", newline="") as f:
        ids = [r["slide_id"] for r in csv.DictReader(f)]
    surv = tmp_path / "survival.csv"
    surv.write_text("slide_id,time,event\n" + "".join(f"{s},{10 + i},{i % 2}\n" for i, s in enumerate(ids)))
    train = {"head": "mean", "folds": 2, "max_epochs": 2, "min_epochs": 1, "patience": 1, "bootstrap": 0,
             "tune": "off", "task": "survival"}
    code, err = _check(_study(tmp_path, synth_cohort, surv, train=train), capsys)
    assert code == 0, err
    reg = tmp_path / "regression.csv"
    reg.write_text("slide_id,target\n" + "".join(f"{s},{0.5 * i}\n" for i, s in enumerate(ids)))
    code, err = _check(_study(tmp_path, synth_cohort, reg, train={**train, "task": "regression"}), capsys)
    assert code == 0, err
    surv.write_text("slide_id,time,event\n" + "".join(f"{s},{10 + i},{int(i == 0)}\n" for i, s in enumerate(ids)))
    code, err = _check(_study(tmp_path, synth_cohort, surv, train=train), capsys)
    assert code == 2 and "1 case(s) with an event" in err and "add slides" in err and "--folds" not in err
