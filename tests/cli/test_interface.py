"""The command line's interface (issue 14, items 3 and 11): --version, -h, --no-progress on every stage,
extract --list-encoders without a job, every numeric option validated, no wrapping into a pipe, and any
OSError as one line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from wsi_mil import __version__
from wsi_mil.cli import main
from wsi_mil.errors import ConfigError

STAGES = ("run", "demo", "synth", "tile", "pretrain", "extract", "train", "predict", "heatmap")


def test_version_and_short_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"wsi-mil {__version__}"
    assert main(["-h"]) == 0 and "tile" in capsys.readouterr().out
    for name in STAGES:
        assert main([name, "-h"]) == 0, name
        assert "Usage" in capsys.readouterr().out


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_takes_no_progress(name: str, capsys: pytest.CaptureFixture) -> None:
    assert main([name, "--no-progress", "--help"]) == 0, capsys.readouterr().err
    assert "--no-progress" in capsys.readouterr().out


def test_list_encoders_needs_no_job_and_lines_are_not_wrapped_into_a_pipe(capsys: pytest.CaptureFixture) -> None:
    from wsi_mil.encoders import list_entries

    assert main(["extract", "--list-encoders"]) == 0  # stdout is captured: not a terminal, 80 columns
    lines = capsys.readouterr().out.splitlines()
    assert any(len(line) > 80 for line in lines)  # the long descriptions stay on their own line
    assert [line.split()[0] for line in lines] == [e.name for e in list_entries()]
    assert main(["extract"]) == 2  # without --list-encoders the job is still required
    assert "JOB" in capsys.readouterr().err


def test_long_paths_are_printed_whole_into_a_pipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from wsi_mil.cli.common import print_batch_summary
    from wsi_mil.runrecord import SlideStatus

    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "job"
    record = deep / "status" / "tile.csv"
    print_batch_summary("tile", [SlideStatus("s", "s.svs", "failed", f"{deep}: broken")], record)
    out = capsys.readouterr().out
    assert f"record: {record}" in out and f"failed s: {deep}: broken" in out


BAD_OPTIONS = [
    ["tile", "x.svs", "-o", "J", "--workers", "-1"],
    ["tile", "x.svs", "-o", "J", "--target-mpp", "inf"],
    ["tile", "x.svs", "-o", "J", "--mpp", "nan"],
    ["tile", "x.svs", "-o", "J", "--tile-size", "0"],
    ["run", "study.yaml", "--workers", "-1"],
    ["heatmap", "R", "J", "-o", "O", "--workers", "-3"],
    ["heatmap", "R", "J", "-o", "O", "--pixels-per-tile", "0"],
    ["extract", "J", "--batch-size", "0"],
    ["extract", "J", "--num-workers", "-1"],
    ["pretrain", "J", "-o", "E", "--checkpoint-every", "0"],
    ["pretrain", "J", "-o", "E", "--device", "gpu"],
    ["train", "F", "-l", "L", "-o", "R", "--folds", "1"],
    ["train", "F", "-l", "L", "-o", "R", "--seed", "-1"],
    ["predict", "R", "F", "-o", "P", "--device", "xx"],
    ["synth", "-o", "S", "-n", "0"],
    ["synth", "-o", "S", "-n", "1", "--workers", "-1"],
    ["synth", "-o", "S", "-n", "1", "--jpeg-quality", "101"],
    ["synth", "-o", "S", "-n", "1", "--tile-size", "100"],
    ["synth", "-o", "S", "-n", "1", "--mpp", "inf"],
    ["synth", "-o", "S", "-n", "1", "--positive-fraction", "1.5"],
    ["demo", "-o", "D", "--workers", "-1"],
]


@pytest.mark.timeout(60)  # `tile --workers -1` used to hang for ever
def test_every_numeric_option_is_validated(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    slide = tmp_path / "x.svs"
    slide.write_bytes(b"")
    for argv in BAD_OPTIONS:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and ("Invalid value" in err or "error:" in err), (argv, err)


def test_run_study_refuses_negative_workers() -> None:
    from wsi_mil.pipeline import run_study
    from wsi_mil.study import StudyConfig

    cfg = StudyConfig.model_validate({"slides": "s", "labels": "l.csv", "job": "j",
                                      "encoder": {"arch": "resnet18", "weights": "random"}})
    with pytest.raises(ConfigError, match="--workers -1"):
        run_study(cfg, workers=-1)


def test_an_os_error_no_stage_caught_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                 tmp_path: Path) -> None:
    import wsi_mil.tiling.stage as tiling_stage

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "/mnt/ro/job/patches")

    monkeypatch.setattr(tiling_stage, "run_tile", refuse)
    assert main(["tile", str(tmp_path), "-o", str(tmp_path / "j"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: /mnt/ro/job/patches: Permission denied [EACCES]") and "\n" not in err
