"""DICOM whole-slide pyramids written from an image, for tests and benchmarks of the DICOM readers.

:func:`write_dicom_pyramid` writes one series, one ``VOLUME`` instance per level (each half the
size of the one before), TILED_FULL, with baseline JPEG frames in the encapsulated Pixel Data. The
header of every instance is copied from ``template``, an existing whole-slide DICOM instance that
OpenSlide opens (e.g. OpenSlide's own test fixture ``boxes_0.dcm``), with its sizes, UIDs, pixel
spacing, photometric interpretation and pixels replaced: writing a complete whole-slide header from
nothing is left to dedicated tools (wsidicomizer, PixelMed).
"""

from __future__ import annotations

import copy
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

PHOTOMETRICS = ("YBR_FULL_422", "RGB")


def jpeg_frames(image: np.ndarray, tile: int, photometric: str = "YBR_FULL_422", quality: int = 90) -> list[bytes]:
    """The (H, W, 3) uint8 ``image``'s ``tile`` px tiles in row-major order as baseline JPEGs (edge tiles
    padded with white). YBR_FULL_422: YCbCr 4:2:2; RGB: RGB components without a colour transform."""
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric {photometric!r}: choose one of {', '.join(PHOTOMETRICS)}")
    h, w, _ = image.shape
    across, down = -(-w // tile), -(-h // tile)
    padded = np.full((down * tile, across * tile, 3), 255, np.uint8)
    padded[:h, :w] = image
    def encode(t: np.ndarray) -> bytes:
        if photometric == "RGB":
            return bytes(imagecodecs.jpeg8_encode(t, level=quality, colorspace="RGB", outcolorspace="RGB"))
        return bytes(imagecodecs.jpeg8_encode(t, level=quality, subsampling="422"))

    return [encode(np.ascontiguousarray(padded[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]))
            for r in range(down) for c in range(across)]


def write_dicom_pyramid(folder: Path, template: Path, image: np.ndarray, *, photometric: str = "YBR_FULL_422",
                        levels: int = 2, mpp: float = 0.5, tile: int = 256, quality: int = 90,
                        fragments_per_frame: int = 1) -> Path:
    """Write ``level_{i}.dcm`` (i < ``levels``) of ``image`` (H, W, 3) uint8 at ``mpp`` µm/px into
    ``folder``; returns ``folder`` (one DICOM series: OpenSlide opens the folder or any of its files).
    ``fragments_per_frame`` > 1 splits each frame's bytes over several Pixel Data items."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(template)
    series, pyramid = generate_uid(), generate_uid()
    for level in range(levels):
        factor = 2 ** level
        img = image if level == 0 else np.asarray(Image.fromarray(image).resize(
            (image.shape[1] // factor, image.shape[0] // factor), Image.Resampling.BOX))
        h, w, _ = img.shape
        frames = jpeg_frames(img, tile, photometric, quality)
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.PyramidUID, ds.InstanceNumber = series, pyramid, level + 1
        ds.ImageType = ["ORIGINAL" if level == 0 else "DERIVED", "PRIMARY", "VOLUME", "NONE" if level == 0 else "RESAMPLED"]
        shared = ds.SharedFunctionalGroupsSequence[0]
        shared.WholeSlideMicroscopyImageFrameTypeSequence[0].FrameType = ds.ImageType
        spacing = f"{mpp * factor / 1000:.8f}".rstrip("0")
        shared.PixelMeasuresSequence[0].PixelSpacing = [spacing, spacing]
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * mpp * factor / 1000, h * mpp * factor / 1000
        ds.Rows = ds.Columns = tile
        ds.NumberOfFrames = len(frames)
        ds.PhotometricInterpretation = photometric
        ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame)
        ds["PixelData"].is_undefined_length = True
        ds.save_as(folder / f"level_{level}.dcm", enforce_file_format=True)
    return folder
