"""The second reader behind open_slide: tiffslide for TIFF-family files OpenSlide cannot open.

Real tissue (CMU-1-Small-Region.svs, resampled to 2 µm/px) is written at test time as a
strip-organised TIFF and as a pyramidal OME-TIFF, neither of which OpenSlide reads fully.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_mil.errors import SlideError
from wsi_mil.slide import open_slide
from wsi_mil.stores.patches import open_patch_store
from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.stage import run_tile

MPP = 2.0  # = conftest.CMU_TISSUE_MPP, the scale of ``cmu_tissue``


@pytest.fixture(scope="module")
def tissue(cmu_tissue: np.ndarray) -> np.ndarray:
    """Real H&E at exactly 2 µm/px (the shared ``cmu_tissue``)."""
    return cmu_tissue


def _strip_tiff(path: Path, rgb: np.ndarray) -> Path:
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=32,
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return path


def _ome_pyramid(path: Path, rgb: np.ndarray) -> Path:
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(rgb, subifds=1, tile=(128, 128), photometric="rgb", compression="zlib",
                 metadata={"axes": "YXS", "PhysicalSizeX": MPP, "PhysicalSizeY": MPP})
        tw.write(rgb[::2, ::2], subfiletype=1, tile=(128, 128), photometric="rgb", compression="zlib")
    return path


def test_strip_tiff_is_read_with_tiffslide(tissue: np.ndarray, tmp_path: Path) -> None:
    path = _strip_tiff(tmp_path / "strips.tif", tissue)
    with pytest.raises(SlideError, match="OpenSlide: not a format it reads"):
        open_slide(path, reader="openslide")
    with open_slide(path) as s:
        assert s.reader.startswith("tiffslide ") and "OpenSlide could not open it" in s.reader_note
        assert s.mpp == pytest.approx(MPP) and s.mpp_source == "metadata"
        assert s.dimensions == (tissue.shape[1], tissue.shape[0])
        np.testing.assert_array_equal(s.read_region((100, 60), 0, (64, 48)), tissue[60:108, 100:164])
        h, w = tissue.shape[:2]
        edge = s.read_region((w - 10, h - 5), 0, (20, 20))  # outside the image: white, as with OpenSlide
        np.testing.assert_array_equal(edge[:5, :10], tissue[h - 5:, w - 10:])
        assert (edge[5:] == 255).all() and (edge[:, 10:] == 255).all()


def test_tile_stage_records_the_fallback_reader(tissue: np.ndarray, tmp_path: Path) -> None:
    path = _strip_tiff(tmp_path / "strips.tif", tissue)
    job = tmp_path / "job"
    report = run_tile([path], job, TilingConfig(target_mpp=MPP, tile_size=56, codec="zstd"), workers=0, progress=False)
    assert [s.status for s in report.statuses] == ["done"], report.statuses
    store = open_patch_store(job / "patches" / "strips.zarr")
    assert store.attrs["reader"].startswith("tiffslide ") and "OpenSlide" in store.attrs["reader_note"]
    assert store.n_tiles > 10
    tiles = store.read_tiles(0, store.n_tiles)
    for i in (0, store.n_tiles // 2, store.n_tiles - 1):  # lossless store, no resampling: the very pixels
        x, y = (int(v) for v in store.coords[i])
        np.testing.assert_array_equal(tiles[i], tissue[y:y + 56, x:x + 56])


def test_ome_tiff_pyramid_and_physical_size(tissue: np.ndarray, tmp_path: Path) -> None:
    path = _ome_pyramid(tmp_path / "scan.ome.tif", tissue)
    with pytest.raises(SlideError, match="no mpp"):  # OpenSlide sees one level and no scale
        open_slide(path, reader="openslide")
    with open_slide(path) as s:
        assert s.reader.startswith("tiffslide ") and s.vendor == "ome-tiff"
        assert s.level_count == 2 and s.level_downsamples == pytest.approx([1.0, 2.0], rel=0.01)
        assert s.mpp == pytest.approx(MPP) and s.mpp_source == "metadata"
        np.testing.assert_array_equal(s.read_region((40, 80), 1, (32, 16)), tissue[::2, ::2][40:56, 20:52])
        assert s.best_level_for_mpp(2 * MPP) == 1


def test_real_svs_reads_the_same_through_both_readers(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as a, open_slide(cmu_slide, reader="tiffslide") as b:
        assert a.reader.startswith("openslide") and b.reader.startswith("tiffslide")
        assert b.dimensions == a.dimensions and b.mpp == pytest.approx(a.mpp) and b.vendor == "aperio"
        np.testing.assert_array_equal(a.read_region((500, 700), 0, (96, 64)), b.read_region((500, 700), 0, (96, 64)))


def test_a_tiff_neither_reader_handles_says_what_to_try(shared_slides: Path) -> None:
    with pytest.raises(SlideError) as info:
        open_slide(shared_slides / "edge_cases" / "unopenable.tiff")
    msg = str(info.value)
    assert "unopenable.tiff: cannot open slide" in msg and "OpenSlide:" in msg and "tiffslide:" in msg
    assert "52479" in msg and "vips tiffsave" in msg and "bfconvert" in msg
