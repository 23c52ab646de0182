"""mpp per slide: metadata first, --mpp / --mpp-table as fallbacks, --mpp-force to replace it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from wsi_mil.cli import main
from wsi_mil.cli.run import _mpp_overrides
from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.slide import MPP_RANGE
from wsi_mil.stores.patches import open_patch_store
from wsi_mil.study import load_study
from wsi_mil.tiling.mpp import parse_mpp_table, read_mpp_table

FAST = ["--target-mpp", "2", "--tile-size", "56", "--workers", "0", "--no-progress"]


def _attrs(job: Path, slide_id: str) -> dict:
    return open_patch_store(job / "patches" / f"{slide_id}.zarr").attrs


def _status(job: Path) -> dict[str, dict]:
    with open(job / "status" / "tile.csv", newline="") as f:
        return {r["slide_id"]: r for r in csv.DictReader(f)}


def test_mpp_fills_in_and_force_replaces(cmu_slide: Path, shared_slides: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    boxes = shared_slides / "boxes.tiff"  # bogus 352.78 µm/px from 72 dpi tags: no usable metadata
    job = tmp_path / "job"
    assert main(["tile", str(cmu_slide), str(boxes), "-o", str(job), "--mpp", "1.0", *FAST]) == 0
    out = capsys.readouterr().out
    cmu = _attrs(job, "CMU-1-Small-Region")
    assert cmu["mpp"] == pytest.approx(0.499) and cmu["mpp_source"] == "metadata"
    assert "warning CMU-1-Small-Region: mpp 1 from --mpp differs from the slide metadata (0.499 µm/px) by 100%; " \
           "the metadata is used (pass --mpp-force to use 1)" in out
    b = _attrs(job, "boxes")
    assert b["mpp"] == 1.0 and b["mpp_source"] == "fallback" and b["mpp_given_by"] == "--mpp"
    assert b["mpp_metadata"] is None and "implausible mpp 352.7" in b["mpp_metadata_problem"]
    # a re-run that would tile at another scale names the slide, the parameter and both values
    assert main(["tile", str(cmu_slide), str(boxes), "-o", str(job), "--mpp", "1.0", "--mpp-force", *FAST]) == 2
    err = capsys.readouterr().err
    assert "mpp of slide CMU-1-Small-Region: 0.499 in the job's stores, 1.0 in this run" in err
    assert "boxes" not in err and "--overwrite" in err and err.count("\n") == 1
    assert _status(job)["CMU-1-Small-Region"]["status"] == "done", "nothing was marked failed"
    assert main(["tile", str(cmu_slide), "-o", str(job), "--mpp", "1.0", "--mpp-force", "--overwrite", *FAST]) == 0
    assert "differs from the slide metadata (0.499 µm/px) by 100%; 1 is used (--mpp-force)" in capsys.readouterr().out
    cmu = _attrs(job, "CMU-1-Small-Region")
    assert cmu["mpp"] == 1.0 and cmu["mpp_source"] == "override" and cmu["mpp_metadata"] == pytest.approx(0.499)


def test_mpp_table_per_slide(cmu_slide: Path, shared_slides: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "mpp.csv"
    table.write_text("slide_id,mpp\nboxes,0.25\nCMU-1-Small-Region,0.5\nghost,0.5\n")
    job = tmp_path / "job"
    args = [str(cmu_slide), str(shared_slides / "boxes.tiff"), "-o", str(job), "--mpp-table", str(table),
            "--mpp", "1.0", *FAST]
    assert main(["tile", *args]) == 0
    out = capsys.readouterr().out
    b = _attrs(job, "boxes")
    assert b["mpp"] == 0.25 and b["mpp_source"] == "fallback" and b["mpp_given_by"] == f"--mpp-table {table}"
    assert _attrs(job, "CMU-1-Small-Region")["mpp_source"] == "metadata"  # within 10 %: no warning
    assert "warning CMU" not in out and "1 slide id(s) match no slide found: ghost" in out
    assert main(["tile", *args]) == 0 and "2 skipped" in capsys.readouterr().out  # same scales: resumes
    table.write_text("slide_id,mpp\nboxes,0.5\n")
    assert main(["tile", *args]) == 2
    assert "mpp of slide boxes: 0.25 in the job's stores, 0.5 in this run" in capsys.readouterr().err


def test_mpp_table_errors_name_the_line(tmp_path: Path) -> None:
    cases = {
        "slide,scale\na,0.5\n": "header with columns slide_id,mpp",
        "slide_id,mpp\n": "no rows",
        "slide_id,mpp\na,fast\n": "line 2: mpp 'fast' of slide 'a' is not a number",
        "slide_id,mpp\na,0.5\na,0.25\n": "line 3: duplicate slide_id 'a'",
        "slide_id,mpp\na,352.78\n": "line 2: mpp 352.78 of slide 'a' is outside the plausible range",
        "slide_id,mpp\n,0.5\n": "line 2: empty slide_id",
        "slide_id,mpp\na\n": "line 2: expected slide_id,mpp, found 1 field",
    }
    for text, msg in cases.items():
        with pytest.raises(ConfigError, match=msg):
            parse_mpp_table(text, "t.csv")
    assert parse_mpp_table("\ufeffSlide_ID , MPP,notes\n s1 ,0.25,40x\n\n") == {"s1": 0.25}
    with pytest.raises(ConfigError, match="mpp table not found"):
        read_mpp_table(tmp_path / "nope.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00slide")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_mpp_table(tmp_path / "bin.csv")


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_table_or_a_clean_error(text: str) -> None:
    try:
        table = parse_mpp_table(text)
    except WsiMilError as exc:
        assert isinstance(exc, ConfigError) and "\n" not in str(exc)
        return
    assert table and all(k.strip() == k and k for k in table)
    assert all(MPP_RANGE[0] <= v <= MPP_RANGE[1] for v in table.values())


@settings(max_examples=100, deadline=None, database=None)
@given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                                             blacklist_characters=',"'), min_size=1, max_size=12),
                       st.floats(MPP_RANGE[0], MPP_RANGE[1]), min_size=1, max_size=8))
def test_written_tables_read_back(rows: dict[str, float]) -> None:
    text = "slide_id,mpp\n" + "".join(f"{k},{v!r}\n" for k, v in rows.items())
    assert parse_mpp_table(text) == rows


def test_run_has_the_mpp_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--mpp-table" in out and "--mpp-force" in out and "--mpp " in out
    table = tmp_path / "mpp.csv"
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "t", "slides": "slides", "labels": "labels.csv", "job": "job",
                                     "encoder": {"arch": "resnet18", "weights": "random"}}))
    cfg = load_study(study, ["tiling.tile_size=128", *_mpp_overrides(0.25, table, True)])
    assert cfg.tiling.mpp == 0.25 and cfg.tiling.mpp_table == table.resolve() and cfg.tiling.mpp_force
    assert cfg.tiling.tile_size == 128 and not load_study(study, _mpp_overrides(None, None, False)).tiling.mpp_force
