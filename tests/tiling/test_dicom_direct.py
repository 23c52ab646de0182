"""Direct decoding of DICOM whole-slide JPEG frames: same pixels as OpenSlide, fallbacks named.

The DICOM pyramids are written at test time from real tissue (CMU-1-Small-Region.svs) by
:func:`wsi_mil.synth.dicom.write_dicom_pyramid`: one VOLUME instance per level on the header of
OpenSlide's own DICOM test fixture (boxes_0.dcm), with 256 px JPEG frames in its Pixel Data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from wsi_mil.slide import open_slide
from wsi_mil.stores.patches import PatchStore
from wsi_mil.synth.dicom import write_dicom_pyramid
from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.dicom_frames import _frame_extents, find_dicom_layout
from wsi_mil.tiling.direct import find_jpeg_layout, open_direct_level, verify_reduced
from wsi_mil.tiling.readers import DecodeOptions, OpenSlideTileReader, open_tile_reader
from wsi_mil.tiling.stage import plan_reads


@pytest.fixture(scope="module")
def tissue(cmu_slide: Path) -> np.ndarray:
    """1,500 x 1,100 px of real H&E (not a multiple of the 256 px frames: partial edge frames)."""
    with open_slide(cmu_slide) as s:
        return s.read_region((300, 900), 0, (1500, 1100))


@pytest.fixture(scope="module")
def template(shared_slides: Path) -> Path:
    return shared_slides / "dicom_openslide_boxes" / "boxes_0.dcm"


@pytest.mark.parametrize("photometric", ["YBR_FULL_422", "RGB"])
def test_dicom_frames_decode_as_openslide_bit_for_bit(photometric: str, tissue: np.ndarray, template: Path,
                                                      tmp_path: Path, random_regions: Callable[..., list[tuple[int, int, int, int]]]) -> None:
    folder = write_dicom_pyramid(tmp_path / photometric, template, tissue, photometric=photometric)
    with open_slide(folder) as slide:
        assert slide.vendor == "dicom" and slide.level_count == 2
        for level in range(2):
            direct, why = open_direct_level(slide, level)
            assert direct is not None, why
            assert direct.layout.path.name == f"level_{level}.dcm"
            assert direct.layout.colorspace == ("RGB" if photometric == "RGB" else "YCbCr")
            w, h = slide.level_dimensions[level]
            ds = int(round(slide.level_downsamples[level]))
            with direct:
                for x, y, rw, rh in random_regions(w, h, 12, level):
                    ours = direct.read(x, y, rw, rh)
                    theirs = slide.read_region((x * ds, y * ds), level, (rw, rh))
                    assert np.array_equal(ours, theirs), (level, x, y, rw, rh)


def test_dicom_slide_opened_by_one_instance_file_finds_its_level(tissue: np.ndarray, template: Path,
                                                                 tmp_path: Path) -> None:
    folder = write_dicom_pyramid(tmp_path / "d", template, tissue)
    with open_slide(folder / "level_0.dcm") as slide:
        layout, why = find_jpeg_layout(slide, 1)
        assert layout is not None, why
        assert layout.path.name == "level_1.dcm" and (layout.width, layout.height) == (750, 550)
        assert len(layout.offsets) == 3 * 3 and (layout.bytecounts > 100).all()


def test_dicom_stage_store_equals_the_openslide_path(tissue: np.ndarray, template: Path, tmp_path: Path,
                                                     tile_with: Callable[..., PatchStore]) -> None:
    folder = write_dicom_pyramid(tmp_path / "slide", template, tissue)
    cfg = TilingConfig(target_mpp=0.5, tiles_per_chunk=8, chunks_per_shard=2)
    ref = tile_with(folder, tmp_path / "a", cfg, decoder="openslide", threads="1")
    new = tile_with(folder, tmp_path / "b", cfg, threads="2")
    assert ref.attrs["tile_decoder"] == "openslide"
    assert new.attrs["tile_decoder"].startswith("direct-jpeg (simplejpeg")
    assert new.n_tiles == ref.n_tiles > 8 and np.array_equal(new.coords, ref.coords)
    assert np.array_equal(new.read_tiles(), ref.read_tiles())


def test_dicom_frames_in_fragments_fall_back_to_openslide_with_the_reason(tissue: np.ndarray, template: Path,
                                                                         tmp_path: Path) -> None:
    folder = write_dicom_pyramid(tmp_path / "frag", template, tissue, levels=1, fragments_per_frame=2)
    with open_slide(folder) as slide:
        layout, why = find_dicom_layout(slide, 0)
        assert layout is None and "fragments" in why and "level_0.dcm" in why
        plan = plan_reads(slide, slide.mpp, 224)
        reader = open_tile_reader(slide, plan, 224, np.zeros((1, 2), np.int64), DecodeOptions())
        assert isinstance(reader, OpenSlideTileReader) and reader.fallback_reason == why


def test_frame_walk_names_a_truncated_file(tissue: np.ndarray, template: Path, tmp_path: Path) -> None:
    folder = write_dicom_pyramid(tmp_path / "t", template, tissue, levels=1)
    path = folder / "level_0.dcm"
    with open(path, "rb") as f:
        pydicom.dcmread(f, stop_before_pixels=True)
        start = f.tell()
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 3000])  # the last frame (and the sequence's end) missing
    fd = os.open(cut, os.O_RDONLY)
    try:
        why = _frame_extents(fd, start, 30)
        assert isinstance(why, str) and "truncated" in why
        assert isinstance(_frame_extents(fd, start - 4, 30), str)  # not at the Pixel Data element
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = _frame_extents(fd, start, 30)
        assert not isinstance(extents, str)
        assert "more items" in str(_frame_extents(fd, start, 29)) and "30 items" in str(_frame_extents(fd, start, 31))
    finally:
        os.close(fd)


def test_a_40x_dicom_level_is_decoded_at_half_size_in_the_dct_where_exact_enough(
        tissue: np.ndarray, template: Path, tmp_path: Path, tile_with: Callable[..., PatchStore]) -> None:
    cfg = TilingConfig(target_mpp=0.5, tiles_per_chunk=8)
    rgb = write_dicom_pyramid(tmp_path / "rgb", template, tissue, photometric="RGB", levels=1, mpp=0.25)  # no 0.5 mpp level
    store = tile_with(rgb, tmp_path / "a", cfg)
    assert store.attrs["tile_decoder"].startswith("direct-jpeg-1/2") and store.attrs["tile_decode_scale"] == 2
    assert store.n_tiles > 0 and store.attrs["read_level"] == 0
    # the same dense tissue with 4:2:2 chroma: 1/2 scale differs from full decoding by more than the
    # probe allows (4.1 > 3.0 grey levels), so level 0 is decoded at full size
    ybr = write_dicom_pyramid(tmp_path / "ybr", template, tissue, levels=1, mpp=0.25)
    with open_slide(ybr) as slide:
        direct, why = open_direct_level(slide, 0)
        assert direct is not None, why
        with direct:
            assert "differs from full decoding" in verify_reduced(direct, 2)
    full = tile_with(ybr, tmp_path / "b", cfg)
    assert full.attrs["tile_decode_scale"] == 1 and full.attrs["tile_decoder"].startswith("direct-jpeg (")


def test_rgb_labelled_jfif_frames_decode_as_the_reader_decodes_them(tissue: np.ndarray, template: Path,
                                                                    tmp_path: Path) -> None:
    """Frames with a JFIF marker in an instance labelled RGB: OpenSlide decodes them as RGB (as declared),
    so must we (libjpeg alone would take JFIF for YCbCr, despite the Adobe marker)."""
    folder = write_dicom_pyramid(tmp_path / "mislabelled", template, tissue, levels=1)  # JFIF frames
    path = folder / "level_0.dcm"
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "RGB"  # as some converters label them
    ds.save_as(path, enforce_file_format=True)
    with open_slide(folder) as slide:
        layout, _ = find_jpeg_layout(slide, 0)
        assert layout is not None and layout.colorspace == "RGB"
        direct, why = open_direct_level(slide, 0)
        assert direct is not None, why
        with direct:
            w, h = slide.level_dimensions[0]
            assert np.array_equal(direct.read(0, 0, w, h), slide.read_region((0, 0), 0, (w, h)))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_dicom_frames_through_the_torch_tile_reader(device: str, tissue: np.ndarray, template: Path,
                                                    tmp_path: Path) -> None:
    """The GPU tile path on YCbCr DICOM frames: its logic with torchvision's CPU decoder here, nvJPEG on CUDA."""
    from wsi_mil.tiling import gpu
    from wsi_mil.tiling.readers import DirectTileReader

    if device == "cuda":
        assert gpu.cuda_reason() == ""
    folder = write_dicom_pyramid(tmp_path / "gpu", template, tissue, levels=1)
    with open_slide(folder) as slide:
        plan = plan_reads(slide, slide.mpp, 224)
        xs, ys = np.meshgrid(np.arange(0, 1500 - 224, 224), np.arange(0, 1100 - 224, 224))
        coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
        direct, why = open_direct_level(slide, plan.level)
        assert direct is not None and gpu.rgb_reason(direct) == "", why
        reader, why = gpu.open_gpu_reader(direct, plan, 224, device=device)
        assert reader is not None, why
        ours = np.empty((len(coords), 224, 224, 3), np.uint8)
        reader.read_tiles(coords, ours)
        ref = np.empty_like(ours)
        DirectTileReader(direct, plan, 224).read_tiles(coords, ref)
        err = np.abs(ours.astype(int) - ref)
        if device == "cpu":  # torchvision's CPU decoder is libjpeg-turbo too: the same pixels
            assert err.max() == 0
        else:  # nvJPEG's IDCT and chroma upsampling differ slightly
            assert err.mean() < 1.0
        reader.close()
