"""``wsi-mil run``: a whole study end to end, skip and resume, overrides, failures, a Dask cluster.

Sizes are tiny (the session's 8-slide synthetic cohort tiled at 2 um/px into 96 px tiles,
about 30 tiles per slide; a random-init or briefly SimCLR-trained ``test_resnet``) so the
whole module stays within a minute or two on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from wsi_mil.cli import main
from wsi_mil.errors import ConfigError, EncoderError, LabelsError
from wsi_mil.pipeline import format_summary, run_study
from wsi_mil.runrecord import read_run_record
from wsi_mil.study import StudyConfig, load_study

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def study_doc(cohort: Path, job: Path, simclr: bool = False, **sections: dict) -> dict:
    """A tiny study over ``cohort``."""
    doc: dict = {
        "name": "t",
        "slides": str(cohort),
        "labels": str(cohort / "labels.csv"),
        "job": str(job),
        "device": "cpu",
        "encoder": {"weights": "simclr"} if simclr else {"arch": "test_resnet", "weights": "random:0"},
        "tiling": {"target_mpp": 2.0, "tile_size": 96, "min_tissue_fraction": 0.5},
        "pretrain": {"arch": "test_resnet", "epochs": 1, "batch_size": 16, "input_size": 32, "max_steps": 2,
                     "proj_hidden_dim": 32, "proj_dim": 16, "read_threads": 1},
        "extract": {"batch_size": 64, "num_workers": 0},
        "train": {"head": "chowder", "head_options": {"r": 2, "n_members": 2}, "folds": 2, "max_epochs": 3,
                  "min_epochs": 1, "patience": 2, "batch_size": 4, "tiles_per_bag": None, "bootstrap": 20, "tune": "off"},
        "heatmap": {"thumbnail_px": 256, "overlay_width": 400, "montage_tiles": 2, "montage_cell": 32},
    }
    for k, v in sections.items():
        doc[k] = {**doc.get(k, {}), **v} if isinstance(v, dict) else v
    return doc


def write_study(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def stage_status(report) -> dict[str, str]:
    return {r.name: r.status for r in report.stages}


def mtimes(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
            and "status" not in p.parts and p.name != "study.yaml"}


def test_whole_study_then_rerun_then_override(synth_cohort: Path, tmp_path: Path) -> None:
    """SimCLR study end to end; a re-run does nothing; --set train.head=weldon redoes train onwards only."""
    job = tmp_path / "job"
    cfg = StudyConfig.model_validate(study_doc(synth_cohort, job, simclr=True))
    report = run_study(cfg, workers=0, progress=False)
    assert report.exit_code == 0 and not report.failed
    assert stage_status(report) == {s: "done" for s in ("tile", "pretrain", "extract", "train", "predict", "heatmap")}
    assert (job / "encoders" / "simclr-test_resnet" / "encoder.json").is_file()
    assert report.encoder_id and report.encoder_id.startswith("test_resnet-simclr_test_resnet")
    assert len(list((job / "features" / report.encoder_id).glob("*.h5"))) == 8
    metrics = json.loads((job / "models" / "t" / "metrics.json").read_text())
    assert report.auc == metrics["out_of_fold"]["metrics"]["auc"]
    assert (job / "predictions" / "t.csv").is_file() and len(list((job / "predictions" / "t.tiles").glob("*.csv"))) == 8
    assert report.index_html == job / "heatmaps" / "t" / "index.html" and report.index_html.is_file()
    assert all((job / "heatmaps" / "t" / f"slide_{i:03d}" / "tiles.geojson").is_file() for i in range(8))
    assert load_study(job / "study.yaml") == cfg, "the effective study is recorded in the job"
    text = format_summary(report)
    assert "8 found, 8 processed, 0 failed" in text and "cross-validated slide AUC" in text
    assert str(report.index_html) in text

    before = mtimes(job)
    again = run_study(cfg, workers=0, progress=False)
    assert set(stage_status(again).values()) == {"skipped"}, stage_status(again)
    assert mtimes(job) == before, "a re-run rewrote finished outputs"
    assert again.auc == report.auc

    weldon = StudyConfig.model_validate(study_doc(synth_cohort, job, simclr=True,
                                                  train={"head": "weldon", "head_options": {"k_top": 2, "k_bottom": 2}}))
    third = run_study(weldon, workers=0, progress=False)
    assert stage_status(third) == {"tile": "skipped", "pretrain": "skipped", "extract": "skipped",
                                   "train": "done", "predict": "done", "heatmap": "done"}
    assert json.loads((job / "models" / "t" / "config.json").read_text())["head"] == "weldon"
    slide_json = json.loads((job / "heatmaps" / "t" / "slide_000" / "slide.json").read_text())
    assert slide_json["run"] == str((job / "models" / "t").resolve())
    assert mtimes(job)["heatmaps/t/slide_000/overlay.png"] != before["heatmaps/t/slide_000/overlay.png"], \
        "heatmaps of the old model were kept"


def test_killed_run_resumes_and_a_failed_stage_resumes(synth_cohort: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    job = tmp_path / "job"
    path = write_study(tmp_path / "study.yaml", study_doc(synth_cohort, job))
    proc = subprocess.Popen([str(BIN / "wsi-mil"), "run", str(path), "--workers", "0", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list(job.glob("features/*/*.h5")):
            if proc.poll() is not None:
                pytest.fail(f"wsi-mil run ended (rc {proc.returncode}) before extraction started")
            if time.time() > deadline:
                pytest.fail("extraction did not start")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_features = len(list(job.glob("features/*/*.h5")))
    assert done_features >= 1
    assert not (job / "models").exists()

    # a stage that fails: the study stops there with the error; finished work is kept
    import wsi_mil.mil.stage as mil_stages

    def broken(*args: object, **kwargs: object) -> None:
        raise LabelsError("simulated failure in train")

    monkeypatch.setattr(mil_stages, "run_train", broken)
    cfg = load_study(path)
    with pytest.raises(LabelsError, match="simulated"):
        run_study(cfg, workers=0, progress=False)
    monkeypatch.undo()
    tile = {r.slide_id: r.status for r in read_run_record(job / "status" / "tile.csv")}
    assert set(tile.values()) == {"skipped"}, "the re-run after the kill re-tiled finished slides"
    extract_csv = next((job / "status").glob("extract-*.csv"))
    statuses = [r.status for r in read_run_record(extract_csv)]
    assert statuses.count("skipped") == done_features and statuses.count("done") == 8 - done_features

    report = run_study(cfg, workers=0, progress=False)
    assert stage_status(report) == {"tile": "skipped", "extract": "skipped", "train": "done", "predict": "done",
                                    "heatmap": "done"}
    assert report.exit_code == 0 and report.auc is not None


def test_run_on_an_existing_dask_cluster(synth_cohort: Path, shared_slides: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture, dask_scheduler: str) -> None:
    """A scheduler and two workers on localhost; tile, extract and heatmap tasks run there; a bad slide fails alone."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for p in synth_cohort.glob("*.tiff"):
        (slides / p.name).symlink_to(p)
    (slides / "unopenable.tiff").symlink_to(shared_slides / "edge_cases" / "unopenable.tiff")
    job = tmp_path / "job"
    path = write_study(tmp_path / "study.yaml", study_doc(synth_cohort, job, slides=str(slides)))
    addr = dask_scheduler
    code = main(["run", str(path), "--scheduler", addr, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1, out  # one slide failed, the study finished
    assert "9 found, 8 processed, 1 failed" in out
    assert "failed unopenable: tile:" in out and "cannot open slide" in out
    assert "cross-validated slide AUC" in out and "HTML report" in out
    from distributed import Client

    with Client(addr, timeout="5s") as c:
        keys = c.run_on_scheduler(
            lambda dask_scheduler: sorted({str(e[0]) for e in dask_scheduler.transition_log  # noqa: B023
                                                if e[2] == "memory"}))
    for stage in ("tile", "extract", "heatmap"):
        ran = [k for k in keys if k.startswith(f"wsi_mil-{stage}-")]
        assert len(ran) >= 8, f"{stage}: only {len(ran)} tasks ran on the cluster"
    assert (job / "heatmaps" / "t" / "index.html").is_file()


def test_check_and_input_errors(synth_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`run --check` validates without running; bad inputs fail before any work with one line naming the key."""
    job = tmp_path / "job"
    good = write_study(tmp_path / "good.yaml", study_doc(synth_cohort, job))
    assert main(["run", str(good), "--check"]) == 0
    assert "is a valid study; 8 slides found" in capsys.readouterr().out
    assert not job.exists(), "--check must not create the job"

    weights = write_study(tmp_path / "w.yaml", study_doc(synth_cohort, job, encoder={"arch": "resnet18",
                                                                                     "weights": str(tmp_path / "nope.safetensors")}))
    assert main(["run", str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: encoder.weights:") and "nope.safetensors not found" in err and err.count("\n") == 1

    labels = tmp_path / "labels.csv"
    labels.write_text((synth_cohort / "labels.csv").read_text() + "ghost_slide,1,case_x\n")
    with pytest.raises(LabelsError, match="ghost_slide"):
        run_study(StudyConfig.model_validate(study_doc(synth_cohort, job, labels=str(labels))), workers=0)
    assert main(["run", str(good), "--set", "tiling.tile_size=big"]) == 2
    assert "'tiling.tile_size'" in capsys.readouterr().err
    assert main(["run", str(good), "--set", "slides=" + str(tmp_path / "missing")]) == 2
    assert "slides:" in capsys.readouterr().err
    with pytest.raises(EncoderError):
        run_study(StudyConfig.model_validate(study_doc(synth_cohort, job, encoder={"arch": "no_such_arch_x",
                                                                                   "weights": "random"})))
    assert not (job / "patches").exists(), "nothing ran"


def test_other_tiling_in_the_same_job_is_refused(synth_cohort: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    one = StudyConfig.model_validate(study_doc(synth_cohort, job))
    run_study(one, workers=0, progress=False, stop_after="tile")
    other = StudyConfig.model_validate(study_doc(synth_cohort, job, tiling={"tile_size": 64}))
    with pytest.raises(ConfigError, match=r"tiling\.tile_size.*another 'job' folder"):
        run_study(other, workers=0, progress=False)
