"""Where a DICOM whole-slide level's JPEG frames lie, for direct tile decoding.

A DICOM whole-slide pyramid is one series of instances, one ``VOLUME`` instance per level. With
``DimensionOrganizationType`` TILED_FULL the level's frames are its tiles in row-major order, each a
complete baseline JPEG (transfer syntax 1.2.840.10008.1.2.4.50) in the encapsulated Pixel Data:
one item per frame after the Basic Offset Table. :func:`find_dicom_layout` finds the level's
instance, checks it is such a grid and reads each frame's file offset and size by walking the items'
8-byte headers (a few bytes per frame, never the pixel data), giving the same
:class:`~wsi_mil.tiling.jpeg_layout.JpegTileLayout` a tiled JPEG TIFF gives. Anything else (other
transfer syntaxes, TILED_SPARSE, several focal planes or optical paths, frames split into several
fragments, concatenations) returns None with the reason, and the caller keeps OpenSlide.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from wsi_mil.slide import Slide
from wsi_mil.slide_formats import dicom_folder
from wsi_mil.tiling.jpeg_layout import JpegTileLayout

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000)
SEQUENCE_END_TAG = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD)
UNDEFINED_LENGTH = 0xFFFFFFFF
#: photometric interpretations of 3-sample 8-bit JPEG frames, and the colour space the JPEG holds
PHOTOMETRIC = {"RGB": "RGB", "YBR_FULL_422": "YCbCr", "YBR_FULL": "YCbCr"}
#: what picks a level's instance and rules out the rest before its whole header is read
SCREEN_TAGS = ["ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows", "DimensionOrganizationType"]


def series_instances(slide_path: Path) -> list[Path]:
    """The instance files of the series OpenSlide opens for ``slide_path`` (a folder of one series, or
    one instance file: the series :func:`~wsi_mil.slide_formats.dicom_folder` put it in)."""
    folder = slide_path if slide_path.is_dir() else slide_path.parent
    found = dicom_folder(folder)
    if found is None:
        return []
    if slide_path.is_dir():
        return list(found.series[0].instances) if len(found.series) == 1 else []
    return next((list(s.instances) for s in found.series if any(p.name == slide_path.name for p in s.instances)), [])


def _frame_extents(fd: int, start: int, n_frames: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(offsets, sizes) int64 of the ``n_frames`` items after the Basic Offset Table of the
    encapsulated Pixel Data element that starts at byte ``start``, or why they cannot be used."""
    head = os.pread(fd, 12, start)
    if len(head) < 12 or head[:4] != PIXEL_DATA_TAG or head[4:6] not in (b"OB", b"OW"):
        return "Pixel Data is not where the header ends (not explicit VR little endian)"
    if struct.unpack("<I", head[8:12])[0] != UNDEFINED_LENGTH:
        return "Pixel Data is not encapsulated"
    pos, file_size = start + 12, os.fstat(fd).st_size
    offsets = np.empty(n_frames, np.int64)
    sizes = np.empty(n_frames, np.int64)
    for i in range(-1, n_frames + 1):  # -1: the Basic Offset Table; n_frames: the sequence's end
        item = os.pread(fd, 8, pos)
        if len(item) < 8:
            return f"Pixel Data ends after {max(i, 0)} of {n_frames} frames (truncated file)"
        tag, length = item[:4], struct.unpack("<I", item[4:])[0]
        if tag == SEQUENCE_END_TAG:
            if i == n_frames:
                return offsets, sizes
            return f"Pixel Data holds {max(i, 0)} items for {n_frames} frames"
        if tag != ITEM_TAG or length == UNDEFINED_LENGTH:
            return f"Pixel Data item {i + 1} is malformed"
        if i == n_frames:
            return f"Pixel Data holds more items than its {n_frames} frames (frames split into fragments)"
        if i >= 0:
            if pos + 8 + length > file_size:
                return f"frame {i} runs past the end of the file (truncated file)"
            offsets[i], sizes[i] = pos + 8, length
        pos += 8 + length
    raise AssertionError("unreachable: the loop returns at the sequence's end item")


def find_dicom_layout(slide: Slide, level: int) -> tuple[JpegTileLayout | None, str]:
    """The JPEG frame layout of ``level``, or (None, why the level cannot be decoded directly)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    read_errors = (InvalidDicomError, OSError, ValueError, EOFError, struct.error)
    want = tuple(slide.level_dimensions[level])
    candidates = []
    try:
        instances = series_instances(Path(slide.path))
    except read_errors as exc:
        return None, f"cannot read the DICOM series: {' '.join(str(exc).split())[:160]}"
    for path in instances:  # a first pass over a few tags: no per-frame sequences parsed
        try:
            head = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=SCREEN_TAGS)
        except read_errors:
            continue
        if "VOLUME" in [str(v) for v in head.get("ImageType", [])] and \
                (int(head.get("TotalPixelMatrixColumns", 0)), int(head.get("TotalPixelMatrixRows", 0))) == want:
            candidates.append((path, head))
    if len(candidates) != 1:
        return None, f"{len(candidates)} DICOM VOLUME instances of {want[0]}x{want[1]} px in the series"
    path, head = candidates[0]
    syntax = str(head.file_meta.get("TransferSyntaxUID", ""))
    if syntax != JPEG_BASELINE:
        return None, f"DICOM transfer syntax {syntax} is not baseline JPEG"
    if str(head.get("DimensionOrganizationType", "")) != "TILED_FULL":
        return None, f"DICOM frames are organised {head.get('DimensionOrganizationType', 'without a type')}, not TILED_FULL"
    try:
        with open(path, "rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            pixels_at = f.tell()  # pydicom stops at the start of the Pixel Data element
    except read_errors as exc:
        return None, f"{path.name}: cannot read its DICOM header ({exc})"
    if int(ds.get("TotalPixelMatrixFocalPlanes", 1)) != 1 or int(ds.get("NumberOfOpticalPaths", 1)) != 1:
        return None, "several DICOM focal planes or optical paths"
    if "ConcatenationUID" in ds:
        return None, "a DICOM concatenation (the level's frames span several files)"
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if (int(ds.get("SamplesPerPixel", 0)) != 3 or int(ds.get("BitsAllocated", 0)) != 8
            or int(ds.get("PlanarConfiguration", 0)) != 0 or photometric not in PHOTOMETRIC):
        return None, f"DICOM frames are not 8-bit 3-sample {'/'.join(PHOTOMETRIC)} ({photometric})"
    tile_w, tile_h = int(ds.Columns), int(ds.Rows)
    across, down = -(-want[0] // tile_w), -(-want[1] // tile_h)
    n_frames = int(ds.get("NumberOfFrames", 1))
    if n_frames != across * down:
        return None, f"{n_frames} DICOM frames for a grid of {across}x{down} tiles"
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = _frame_extents(fd, pixels_at, n_frames)
    finally:
        os.close(fd)
    if isinstance(extents, str):
        return None, f"{path.name}: {extents}"
    offsets, sizes = extents
    return JpegTileLayout(path, want[0], want[1], tile_w, tile_h, offsets, sizes, None, PHOTOMETRIC[photometric]), ""
