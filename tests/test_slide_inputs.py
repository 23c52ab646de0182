"""Every entry of a slide folder is tiled or listed with its reason; bad files say what they are."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.uid import generate_uid

from wsi_mil.cli import main
from wsi_mil.errors import SlideError
from wsi_mil.slide import open_slide, scan_inputs
from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.stage import run_tile


def _second_series(src: Path, dst: Path, prefix: str) -> str:
    """Copies of the DICOM instances in ``src`` as another series (new series and instance UIDs)."""
    uid = generate_uid()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f"{prefix}{f.name}")
    return uid


@pytest.fixture()
def mixed_folder(shared_slides: Path, tmp_path: Path) -> Path:
    """Slides of several kinds beside files that are not slides."""
    d = tmp_path / "slides"
    (d / "dicom").mkdir(parents=True)
    shutil.copy(shared_slides / "small.svs", d / "small.svs")
    rgb = np.full((40, 60, 3), 200, np.uint8)
    tifffile.imwrite(d / "export.qptiff", rgb, photometric="rgb", rowsperstrip=8)  # strips: OpenSlide says None
    tifffile.imwrite(d / "scan.btf", rgb, photometric="rgb", tile=(16, 16), bigtiff=True, compression="zlib")
    (d / "notes.txt").write_text("scanner notes")
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    Image.fromarray(rgb).save(d / "photo.png")
    (d / "old.zarr").mkdir()
    for f in (shared_slides / "dicom_openslide_boxes").glob("*.dcm"):
        shutil.copy(f, d / "dicom" / f"a_{f.name}")
    _second_series(shared_slides / "dicom_openslide_boxes", d / "dicom", "b_")
    (d / "dicom" / "readme.dcm").write_text("not dicom")
    return d


def test_every_entry_is_a_slide_or_skipped_with_a_reason(mixed_folder: Path) -> None:
    scan = scan_inputs([mixed_folder])
    ids = {s.slide_id for s in scan.sources}
    assert {"small", "export", "scan"} <= ids
    dicom = sorted(s for s in ids if s.startswith("dicom"))
    assert len(dicom) == 2, "a folder of two DICOM series is two slides"
    skipped = {e.path.name: e.reason for e in scan.skipped}
    assert "no reader opens" in skipped["notes.txt"] and skipped[".DS_Store"] == "hidden"
    assert "PNG image" in skipped["photo.png"] and "vips tiffsave" in skipped["photo.png"]
    assert "zarr" in skipped["old.zarr"] and "not a DICOM file" in skipped["readme.dcm"]
    # nothing vanishes: each file is a slide, part of a DICOM series, or skipped
    taken = {s.path for s in scan.sources} | {e.path for e in scan.skipped}
    dicom_files = set((mixed_folder / "dicom").glob("[ab]_*.dcm"))
    everything = {p for p in mixed_folder.rglob("*") if p.is_file() and ".zarr" not in str(p)} | {mixed_folder / "old.zarr"}
    assert everything - taken - dicom_files == set()


def test_each_dicom_series_opens_as_its_own_slide(mixed_folder: Path) -> None:
    series = [s for s in scan_inputs([mixed_folder]).sources if s.slide_id.startswith("dicom")]
    uids = set()
    for s in series:
        with open_slide(s.path) as slide:
            assert slide.dimensions == (16, 16)
            uids.add(slide.properties["dicom.SeriesInstanceUID"])
    assert len(uids) == 2
    with pytest.raises(SlideError, match="holds 2 DICOM series"):
        open_slide(mixed_folder / "dicom")


def test_tile_lists_skipped_entries_and_records_them(mixed_folder: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job"
    code = main(["tile", str(mixed_folder), "-o", str(job), "--workers", "0", "--no-progress", "--mpp", "0.5"])
    out = capsys.readouterr().out
    assert code == 0, out
    with open(job / "status" / "tile.csv", newline="") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert {"small", "export", "scan"} <= set(rows) and sum(k.startswith("dicom") for k in rows) == 2
    with open(job / "status" / "tile_skipped_inputs.csv", newline="") as f:
        skipped = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(skipped) == {"notes.txt", ".DS_Store", "photo.png", "old.zarr", "readme.dcm"}
    assert "5 input entries are not slides" in out and "skipped" in out and "photo.png" in out


def test_empty_truncated_unreadable_and_unsupported_files_say_which(cmu_slide: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty.svs"
    empty.touch()
    with pytest.raises(SlideError, match=r"empty.svs: empty file \(0 bytes\).*copy it again"):
        open_slide(empty)
    data = cmu_slide.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideError, match=r"cut.svs: cannot open slide: the file is damaged \(truncated: the file is "
                                         r"\d+ bytes but its TIFF directory 0 starts at byte \d+\); copy it again"):
        open_slide(cut)
    png = tmp_path / "photo.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
    with pytest.raises(SlideError, match=r"photo.png: unsupported: .*\(a PNG image\).*vips tiffsave"):
        open_slide(png)
    secret = tmp_path / "secret.svs"
    shutil.copy(cmu_slide, secret)
    real_open = Path.open

    def denied(self: Path, *args: object, **kwargs: object):  # tests run as root: simulate a chmod 000 file
        if self.name == "secret.svs":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(SlideError, match=r"secret.svs: unreadable: permission denied; give this user read access"):
        open_slide(secret)


def test_truncated_data_after_intact_directories(cmu_slide: Path, tmp_path: Path) -> None:
    """tifffile writes directories first: the slide opens, and the failed read names the truncation."""
    with open_slide(cmu_slide) as s:
        rgb = s.read_region((0, 0), 0, (512, 512))
    path = tmp_path / "short.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(128, 128), compression="jpeg",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    report = run_tile([path], tmp_path / "job", TilingConfig(tile_size=64), workers=0, progress=False)
    (status,) = report.statuses
    assert status.status == "failed" and "short.tif" in status.reason
    assert "damaged (truncated: the file is" in status.reason and "image data of page 0" in status.reason


def test_a_synth_cohorts_ground_truth_is_one_skipped_entry(tmp_path: Path) -> None:
    """``wsi-mil synth`` writes ``ground_truth/`` (JSON + PNG masks) beside its slides: one
    skipped entry with its reason, not one line per mask."""
    from wsi_mil.slide import scan_inputs

    (tmp_path / "ground_truth").mkdir()
    for i in range(4):
        (tmp_path / "ground_truth" / f"slide_{i}.json").write_text("{}")
        (tmp_path / "ground_truth" / f"slide_{i}_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    scan = scan_inputs([tmp_path])
    assert len(scan.skipped) == 8  # not a cohort folder (no cohort.json): each entry is listed
    (tmp_path / "cohort.json").write_text("{}")
    scan = scan_inputs([tmp_path])
    assert [(e.path.name, "wsi-mil synth" in e.reason) for e in scan.skipped if e.path.name != "cohort.json"] == \
        [("ground_truth", True)]
