"""``wsi-mil synth`` through ``wsi_mil.cli.main``."""

from __future__ import annotations

import csv
from pathlib import Path

import openslide

from wsi_mil.cli import main


def test_synth_command_writes_a_cohort(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cohort"
    rc = main(["synth", "-o", str(out), "--slides", "3", "--positive-fraction", "0.34", "--size", "1024", "768",
               "--mpp", "0.25", "--lesion-fraction", "0.02", "0.03", "--seed", "7"])
    assert rc == 0
    assert "wrote 3 slides (1 positive)" in capsys.readouterr().out
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["slide_id"] for r in rows] == ["slide_000", "slide_001", "slide_002"]
    assert sorted(int(r["label"]) for r in rows) == [0, 0, 1]
    for r in rows:
        with openslide.OpenSlide(str(out / f"{r['slide_id']}.tiff")) as s:
            assert s.dimensions == (1024, 768)
            assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.25
        assert (out / "ground_truth" / f"{r['slide_id']}.geojson").is_file()
        assert (out / "ground_truth" / f"{r['slide_id']}_mask.png").is_file()


def test_synth_command_rejects_bad_input(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = main(["synth", "-o", str(tmp_path / "c"), "--slides", "2", "--positive-fraction", "1.5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: positive_fraction") and len(err.strip().splitlines()) == 1
    rc = main(["synth", "-o", str(tmp_path / "c"), "--slides", "2", "--lesion-fraction", "0.2", "0.1"])
    assert rc == 2 and "lesion_fraction" in capsys.readouterr().err
    rc = main(["synth", "-o", str(tmp_path / "c"), "--slides", "0"])
    assert rc == 2 and "slides" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.tiff"))
