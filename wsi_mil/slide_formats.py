"""What a file is before a reader opens it: format sniffing, damage diagnosis, DICOM series.

:mod:`wsi_mil.slide` asks this module why a file cannot be opened (empty, unreadable,
truncated, a format no reader handles) so that every failure says which it is and what to do,
and how a folder of DICOM instances splits into slides (one per series).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wsi_mil.errors import SlideError

#: the DICOM SOP class OpenSlide reads: VL Whole Slide Microscopy Image Storage
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
HEADER_BYTES = 132  # enough for every magic below (DICOM's "DICM" sits at offset 128)
CONVERT_HINT = ("convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave IN OUT.tif --tile --pyramid "
                "--compression jpeg --Q 90` or `bfconvert -pyramid-resolutions 4 -tilex 512 -tiley 512 IN OUT.ome.tif`, "
                "and tile OUT (with --mpp if the scale is lost)")

_MAGICS: tuple[tuple[bytes, int, str], ...] = (
    (b"II*\x00", 0, "tiff"), (b"MM\x00*", 0, "tiff"), (b"II+\x00", 0, "tiff"), (b"MM\x00+", 0, "tiff"),
    (b"DICM", 128, "dicom"),
    (b"\x89PNG\r\n\x1a\n", 0, "a PNG image"), (b"\xff\xd8\xff", 0, "a JPEG image"),
    (b"\x00\x00\x00\x0cjP  ", 0, "a JPEG 2000 image"), (b"\xffO\xffQ", 0, "a JPEG 2000 codestream"),
    (b"ZISRAWFILE", 0, "a Zeiss CZI file"), (b"\x89HDF\r\n\x1a\n", 0, "an HDF5 file"),
    (b"PK\x03\x04", 0, "a ZIP archive"), (b"%PDF", 0, "a PDF document"), (b"BM", 0, "a BMP image"),
    (b"\x1f\x8b", 0, "a gzip archive"), (b"<?xml", 0, "an XML document"),
)


def read_header(path: Path, n: int = HEADER_BYTES) -> bytes:
    """The first ``n`` bytes of ``path``; a missing, empty or unreadable file is a :class:`SlideError`."""
    try:
        with path.open("rb") as f:
            head = f.read(n)
    except FileNotFoundError:
        raise SlideError(f"{path}: slide file not found") from None
    except PermissionError:
        raise SlideError(f"{path}: unreadable: permission denied; give this user read access "
                         "(chmod o+r, or run as a user of the file's group)") from None
    except IsADirectoryError:
        raise SlideError(f"{path}: is a folder, not a slide file") from None
    except OSError as exc:
        raise SlideError(f"{path}: unreadable: {exc.strerror or exc}; check the disk or network share") from None
    if not head:
        raise SlideError(f"{path}: empty file (0 bytes): the copy or download did not finish; copy it again")
    return head


def sniff(head: bytes) -> str:
    """``"tiff"``, ``"dicom"``, a phrase naming another format (``"a PNG image"``) or ``"unknown"``."""
    for magic, offset, kind in _MAGICS:
        if head[offset:offset + len(magic)] == magic:
            return kind
    return "unknown"


def tiff_damage(path: Path) -> str | None:
    """Why a TIFF file is damaged (its directories or image data run past the end), or None.

    Walks the chain of image file directories (IFDs) by hand, so a truncated file is named as
    such even where libraries only say "unsupported".
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(16)
            if sniff(head) != "tiff":
                return None
            if len(head) < 8:
                return f"truncated: the file is {size} bytes, shorter than a TIFF header"
            order = "<" if head[:2] == b"II" else ">"
            big = struct.unpack(order + "H", head[2:4])[0] == 43
            if big:
                if len(head) < 16:
                    return f"truncated: the file is {size} bytes, shorter than a BigTIFF header"
                offset = struct.unpack(order + "Q", head[8:16])[0]
            else:
                offset = struct.unpack(order + "I", head[4:8])[0]
            count_fmt, count_len, entry_len, next_fmt = ("Q", 8, 20, "Q") if big else ("H", 2, 12, "I")
            seen: set[int] = set()
            k = 0
            while offset and offset not in seen and k < 100_000:
                seen.add(offset)
                if offset + count_len > size:
                    return (f"truncated: the file is {size} bytes but its TIFF directory {k} starts at byte {offset}")
                f.seek(offset)
                n = struct.unpack(order + count_fmt, f.read(count_len))[0]
                end = offset + count_len + n * entry_len + struct.calcsize(next_fmt)
                if end > size:
                    return f"truncated: the file is {size} bytes but its TIFF directory {k} ends at byte {end}"
                f.seek(offset + count_len + n * entry_len)
                offset = struct.unpack(order + next_fmt, f.read(struct.calcsize(next_fmt)))[0]
                k += 1
    except (OSError, struct.error):
        return None
    return _tiff_data_past_end(path, size)


def _tiff_data_past_end(path: Path, size: int) -> str | None:
    """The first page whose tile or strip data reaches past the end of the file, if any."""
    import logging

    import tifffile

    logging.getLogger("tifffile").setLevel(logging.ERROR)
    try:
        with tifffile.TiffFile(path) as tf:
            for i, page in enumerate(tf.pages):
                offsets = getattr(page, "dataoffsets", ())
                counts = getattr(page, "databytecounts", ())
                end = max((int(o) + int(c) for o, c in zip(offsets, counts)), default=0)
                if end > size:
                    return f"truncated: the file is {size} bytes but image data of page {i} runs to byte {end}"
    except Exception:  # tifffile cannot parse it at all: no more specific diagnosis than the caller's
        return None
    return None


def describe_unsupported(path: Path, head: bytes) -> str:
    """A one-line reason for a file no reader handles, naming its format when it is recognisable."""
    kind = sniff(head)
    if kind == "unknown":
        return (f"{path}: unsupported: not a slide format OpenSlide or tiffslide can read (unrecognised content); "
                f"if it is a slide from another scanner, {CONVERT_HINT}")
    return f"{path}: unsupported: not a slide format OpenSlide or tiffslide can read ({kind}); {CONVERT_HINT}"


@dataclass
class DicomSeries:
    """The whole-slide instances of one DICOM series in one folder (the first is opened)."""

    uid: str
    number: str
    instances: list[Path] = field(default_factory=list)


@dataclass
class DicomFolder:
    """A folder's DICOM files sorted into whole-slide series and others (with the reason)."""

    series: list[DicomSeries]
    others: list[tuple[Path, str]]

    def series_ids(self, folder: Path) -> list[str]:
        """Slide ids: the folder name for one series; ``{folder}_s{SeriesNumber}`` (or a hash) for several."""
        if len(self.series) == 1:
            return [folder.name]
        numbers = [s.number for s in self.series]
        if all(numbers) and len(set(numbers)) == len(numbers):
            return [f"{folder.name}_s{n}" for n in numbers]
        return [f"{folder.name}_{hashlib.sha1(s.uid.encode()).hexdigest()[:8]}" for s in self.series]


def is_dicom_file(path: Path) -> bool:
    """True for a ``.dcm`` file or any file with the DICOM preamble (``DICM`` at byte 128)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            return sniff(f.read(HEADER_BYTES)) == "dicom"
    except OSError:
        return False


def dicom_folder(folder: Path) -> DicomFolder | None:
    """The DICOM files directly in ``folder`` grouped by series; None when it holds none."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom_file(p))
    if not files:
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    by_uid: dict[str, DicomSeries] = {}
    others: list[tuple[Path, str]] = []
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True,
                                 specific_tags=["SOPClassUID", "SeriesInstanceUID", "SeriesNumber"])
        except InvalidDicomError:
            others.append((p, "not a DICOM file (no 'DICM' header)"))
            continue
        except (OSError, ValueError, EOFError, struct.error) as exc:
            others.append((p, f"a damaged DICOM file ({' '.join(str(exc).split())[:120] or type(exc).__name__})"))
            continue
        sop, uid = str(ds.get("SOPClassUID", "")), str(ds.get("SeriesInstanceUID", ""))
        if sop != WSI_SOP_CLASS:
            others.append((p, f"a DICOM file of SOP class {sop or 'unknown'}, not a whole-slide image instance"))
            continue
        if not uid:
            others.append((p, "a whole-slide DICOM instance without a SeriesInstanceUID"))
            continue
        by_uid.setdefault(uid, DicomSeries(uid, str(ds.get("SeriesNumber", "") or ""))).instances.append(p)
    return DicomFolder(sorted(by_uid.values(), key=lambda s: (s.instances[0].name, s.uid)), others)
