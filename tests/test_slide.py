"""The OpenSlide reader on every real slide in ../shared/data/slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_mil.errors import SlideError, WsiMilError
from wsi_mil.slide import composite_on_white, open_slide, scan_slides


def test_cmu_slide_properties(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        assert s.dimensions == (2220, 2967)
        assert s.level_count == 1
        assert s.mpp == pytest.approx(0.499)
        assert s.mpp_source == "metadata"
        assert s.vendor == "aperio"
        assert {"label", "macro", "thumbnail"} <= set(s.associated_images)
        label = s.read_associated("label")
        assert label.dtype == np.uint8 and label.ndim == 3 and label.shape[2] == 3
        region = s.read_region((100, 200), 0, (64, 32))
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8


def test_read_region_outside_image_is_white(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        w, h = s.dimensions
        region = s.read_region((w - 10, h - 10), 0, (20, 20))
        assert (region[12:, :] == 255).all() and (region[:, 12:] == 255).all()


def test_composite_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[0, 1] = (0, 0, 0, 0)
    rgba[1, 0] = (0, 0, 0, 128)
    out = composite_on_white(rgba)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert 120 <= out[1, 0, 0] <= 135


def test_missing_mpp_fails_with_hint_and_override_works(shared_slides: Path) -> None:
    path = shared_slides / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(SlideError, match=r"tcga-cr-7395.*no mpp.*--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as s:
        assert s.mpp == 0.25 and s.mpp_source == "override"
        assert s.level_count == 2 and s.dimensions == (4443, 3567)
        assert s.best_level_for_mpp(0.5) == 1


def test_bogus_dpi_mpp_is_refused(shared_slides: Path) -> None:
    with pytest.raises(SlideError, match=r"boxes.tiff.*implausible mpp 352.7.*72 dpi.*--mpp"):
        open_slide(shared_slides / "boxes.tiff")
    with open_slide(shared_slides / "boxes.tiff", mpp=1.0) as s:
        assert s.level_count == 4


def test_dicom_folder_is_one_slide(shared_slides: Path) -> None:
    folder = shared_slides / "dicom_openslide_boxes"
    with open_slide(folder) as s:
        assert s.dimensions == (16, 16)
        assert s.mpp == pytest.approx(0.499)
    sources = scan_slides([shared_slides])
    ids = [s.slide_id for s in sources]
    assert ids.count("dicom_openslide_boxes") == 1
    assert not any(s.path.suffix == ".dcm" for s in sources)


def test_scan_finds_every_slide(shared_slides: Path) -> None:
    ids = {s.slide_id for s in scan_slides([shared_slides])}
    assert ids == {"CMU-1-Small-Region", "tcga-cr-7395-01a-01-ts1", "small", "boxes",
                   "dicom_openslide_boxes", "unreadable", "unopenable"}


def test_edge_cases_fail_cleanly(shared_slides: Path) -> None:
    with pytest.raises(SlideError, match=r"unopenable.tiff: cannot open slide"):
        open_slide(shared_slides / "edge_cases" / "unopenable.tiff")
    with open_slide(shared_slides / "edge_cases" / "unreadable.svs") as s:
        with pytest.raises(SlideError, match=r"unreadable.svs: cannot read region"):
            s.read_region((0, 0), 0, (16, 16))


def test_not_a_slide_and_missing(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(SlideError, match="unsupported: not a slide format"):
        open_slide(text)
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(WsiMilError, match="no such file"):
        scan_slides([tmp_path / "nope"])


def test_duplicate_ids_are_reported(tmp_path: Path, cmu_slide: Path) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "s1.svs").symlink_to(cmu_slide)
    with pytest.raises(WsiMilError, match=r"share an id.*s1"):
        scan_slides([tmp_path])


def test_read_at_mpp_bounded_strips(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        full, ds_full = s.read_at_mpp(8.0)
        strips, ds = s.read_at_mpp(8.0, max_strip_pixels=2220 * 40)
    assert ds == ds_full and full.shape == strips.shape == (186, 139, 3)
    assert np.abs(full.astype(int) - strips.astype(int)).mean() < 2.0


def test_mpp_fallback_only_fills_in_missing_metadata(cmu_slide: Path, shared_slides: Path) -> None:
    with open_slide(cmu_slide, mpp_fallback=1.0) as s:
        assert s.mpp == pytest.approx(0.499) and s.mpp_source == "metadata" and s.metadata_mpp == pytest.approx(0.499)
    with open_slide(cmu_slide, mpp=1.0) as s:
        assert s.mpp == 1.0 and s.mpp_source == "override" and s.metadata_mpp == pytest.approx(0.499)
    with open_slide(shared_slides / "boxes.tiff", mpp_fallback=1.0) as s:
        assert s.mpp == 1.0 and s.mpp_source == "fallback" and s.metadata_mpp is None
        assert "implausible mpp 352.7" in s.mpp_problem
    with pytest.raises(SlideError, match="outside the plausible range"):
        open_slide(cmu_slide, mpp_fallback=500.0)
