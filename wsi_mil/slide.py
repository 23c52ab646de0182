"""One small reader interface over OpenSlide and tiffslide: :func:`open_slide` and :func:`scan_inputs`.

Coordinates are level-0 pixels unless stated otherwise. ``read_region`` returns RGB uint8 with
transparent pixels and pixels outside the image white, whatever the reader.

Readers: OpenSlide first; a TIFF-family file OpenSlide cannot open (strip-organised TIFF,
OME-TIFF, QPTIFF and other microscope exports) is read with tiffslide, and OME-TIFF goes to
tiffslide first (OpenSlide ignores its SubIFD pyramid and its physical pixel size).
``Slide.reader`` names the one used. The physical scale (mpp, µm per level-0 pixel) comes from
the slide's metadata, or an explicit override (``mpp=``), or a fallback used only when the
metadata has no usable mpp (``mpp_fallback=``).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import openslide
from PIL import Image

from wsi_mil.errors import SlideError, WsiMilError
from wsi_mil.slide_formats import (
    CONVERT_HINT,
    DicomFolder,
    describe_unsupported,
    dicom_folder,
    is_dicom_file,
    read_header,
    sniff,
    tiff_damage,
)

#: plausible level-0 resolutions (µm/px): 100x oil is ~0.1, a 1.25x scan ~8. A 72 dpi TIFF tag
#: gives 352.78 and a 300 dpi tag 84.67: both are refused.
MPP_RANGE = (0.05, 16.0)
SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi",
    ".qptiff", ".btf", ".tf2", ".tf8",
}
MPP_HINT = ("pass --mpp with the scanner's level-0 µm per pixel (e.g. 0.25 for 40x, 0.5 for 20x), "
            "or --mpp-table CSV (slide_id,mpp) for per-slide values")
Reader = Literal["auto", "openslide", "tiffslide"]
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclass(frozen=True)
class SlideSource:
    """A slide found on disk: its id and the file (or DICOM folder) the reader opens."""

    slide_id: str
    path: Path


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of a slide folder that is not tiled, and why."""

    path: Path
    reason: str


@dataclass
class SlideScan:
    """What a scan of the inputs found: the slides, and every other entry with its reason."""

    sources: list[SlideSource]
    skipped: list[SkippedEntry]


class Slide:
    """An open whole-slide image. Use :func:`open_slide`; close it (or use ``with``).

    ``metadata_mpp`` is the slide's own mpp (None when it has no usable one, ``mpp_problem``
    says why), whatever ``mpp`` (the scale used) and ``mpp_source`` (``metadata``, ``override``
    or ``fallback``) are.
    """

    def __init__(self, path: Path, osr: Any, mpp: float, mpp_source: str, reader: str = "",
                 metadata_mpp: float | None = None, mpp_problem: str = "", reader_note: str = "") -> None:
        self.path = path
        self._osr = osr
        self.mpp = mpp
        self.mpp_source = mpp_source
        self.metadata_mpp = metadata_mpp
        self.mpp_problem = mpp_problem
        self.properties: dict[str, str] = {k: str(v) for k, v in osr.properties.items() if v is not None}
        #: the library that decodes this slide, with its version (recorded in patch stores)
        self.reader: str = reader or f"openslide {openslide.__library_version__}"
        #: why the fallback reader was chosen ("" for OpenSlide)
        self.reader_note = reader_note
        self._tiffslide = self.reader.startswith("tiffslide")
        vendor = self.properties.get(openslide.PROPERTY_NAME_VENDOR) or self.properties.get("tiffslide.vendor")
        self.vendor: str = vendor or ("ome-tiff" if _is_ome_name(path) else "generic-tiff" if self._tiffslide else "unknown")
        self.dimensions: tuple[int, int] = tuple(osr.dimensions)  # type: ignore[assignment]
        self.level_count: int = int(osr.level_count)
        self.level_dimensions: list[tuple[int, int]] = [tuple(d) for d in osr.level_dimensions]  # type: ignore[misc]
        self.level_downsamples: list[float] = [float(d) for d in osr.level_downsamples]

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._osr.close()

    @property
    def associated_images(self) -> list[str]:
        """Names of associated images (label, macro, thumbnail, ...)."""
        return sorted(self._osr.associated_images.keys())

    def read_associated(self, name: str) -> np.ndarray:
        """An associated image as (h, w, 3) uint8 RGB, alpha composited on white."""
        try:
            img = self._osr.associated_images[name]
        except KeyError:
            raise SlideError(f"{self.path}: no associated image '{name}' (has: {', '.join(self.associated_images)})") from None
        return composite_on_white(np.asarray(img.convert("RGBA")))

    def level_mpp(self, level: int) -> float:
        """µm per pixel at a pyramid level."""
        return self.mpp * self.level_downsamples[level]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` = (w, h) pixels of ``level`` at level-0 ``location`` = (x, y).

        Returns (h, w, 3) uint8 RGB; transparent pixels (outside the scanned area) become white.
        """
        loc, lvl, sz = (int(location[0]), int(location[1])), int(level), (int(size[0]), int(size[1]))
        if self._tiffslide:
            return self._tiffslide_region(loc, lvl, sz)
        try:
            img = self._osr.read_region(loc, lvl, sz)
        except openslide.OpenSlideError as exc:
            raise SlideError(self._read_failure(location, level, exc)) from exc
        return composite_on_white(np.asarray(img))

    def _tiffslide_region(self, loc: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """tiffslide pads with black outside the image: read the inside, put it on white."""
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        rx, ry = int(loc[0] / ds), int(loc[1] / ds)  # tiffslide's own level-0 -> level transform
        out = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
        x0, y0, x1, y1 = max(rx, 0), max(ry, 0), min(rx + size[0], lw), min(ry + size[1], lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            arr = np.asarray(self._osr.read_region((int(round(x0 * ds)), int(round(y0 * ds))), level,
                                                   (x1 - x0, y1 - y0), as_array=True, padding=False))
        except Exception as exc:  # tifffile/imagecodecs raise many types for a damaged or exotic tile
            raise SlideError(self._read_failure(loc, level, exc)) from exc
        out[y0 - ry:y0 - ry + arr.shape[0], x0 - rx:x0 - rx + arr.shape[1]] = _to_rgb8(arr, self.path)
        return out

    def _read_failure(self, location: tuple[int, int], level: int, exc: Exception) -> str:
        damage = tiff_damage(self.path) if self.path.is_file() else None
        why = f"; the file is damaged ({damage}): copy it again" if damage else ""
        return f"{self.path}: cannot read region {tuple(location)} at level {level}: {' '.join(str(exc).split())}{why}"

    def best_level_for_mpp(self, mpp: float, tolerance: float = 0.01) -> int:
        """The coarsest level whose resolution is at least as fine as ``mpp`` (level 0 if none)."""
        best = 0
        for level in range(self.level_count):
            if self.level_mpp(level) <= mpp * (1 + tolerance):
                best = level
        return best

    def read_at_mpp(self, mpp: float, max_strip_pixels: int = 1 << 24) -> tuple[np.ndarray, float]:
        """The whole slide resampled (area average) to ``mpp`` µm/px, read in strips.

        Returns ``(image (h, w, 3) uint8, downsample relative to level 0)``. Memory holds one
        strip of the source level (at most ``max_strip_pixels`` pixels) plus the output.
        """
        w0, h0 = self.dimensions
        ds = max(mpp / self.mpp, 1.0)
        out_w, out_h = max(1, math.ceil(w0 / ds)), max(1, math.ceil(h0 / ds))
        level = self.best_level_for_mpp(mpp)
        lds = self.level_downsamples[level]
        f = ds / lds  # source pixels (at `level`) per output pixel, >= ~1
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        read_w = int(math.ceil(out_w * f))  # may pass the right edge: read_region gives white there
        rows = max(1, int(max_strip_pixels // max(1, read_w) / max(f, 1.0)))  # output rows per strip
        for r0 in range(0, out_h, rows):
            r1 = min(out_h, r0 + rows)
            y0 = int(math.floor(r0 * f))
            y1 = int(math.ceil(r1 * f))
            strip = self.read_region((0, int(round(y0 * lds))), level, (read_w, y1 - y0))
            box = (0.0, r0 * f - y0, out_w * f, r1 * f - y0)
            img = Image.fromarray(strip).resize((out_w, r1 - r0), Image.Resampling.BOX, box=box)
            out[r0:r1] = np.asarray(img)
        return out, ds


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) RGBA uint8 (non-premultiplied) -> (h, w, 3) RGB over a white background.

    An opaque image comes back as a view of ``rgba`` (no copy): copy it where you store it.
    """
    if rgba.ndim != 3 or rgba.shape[2] == 3:
        return rgba
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgba[..., :3]
    a = alpha[..., None].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def _to_rgb8(arr: np.ndarray, path: Path) -> np.ndarray:
    """A tiffslide region (h, w, c) -> (h, w, 3) uint8 RGB; refuses what is not an RGB/gray 8-bit image."""
    if arr.dtype != np.uint8:
        raise SlideError(f"{path}: {arr.dtype} samples, not an 8-bit brightfield image; {CONVERT_HINT}")
    if arr.ndim == 2 or arr.shape[2] == 1:
        return np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
    if arr.shape[2] == 4:
        return composite_on_white(arr)
    if arr.shape[2] != 3:
        raise SlideError(f"{path}: {arr.shape[2]} channels (a multiplexed or fluorescence image), not RGB; "
                         "export an RGB rendering of it as a tiled pyramidal TIFF")
    return arr


# -- physical scale ---------------------------------------------------------------------------------
def _is_ome_name(path: Path) -> bool:
    return path.name.lower().endswith((".ome.tif", ".ome.tiff", ".ome.tf2", ".ome.tf8", ".ome.btf"))


def _mpp_from_properties(path: Path, props: dict[str, str], keys: tuple[str, str]) -> tuple[float | None, str]:
    """(the metadata's mpp, or None and why it is not usable)."""
    raw = (props.get(keys[0]), props.get(keys[1]))
    if raw[0] is None:
        return None, "the slide metadata has no mpp (microns per pixel)"
    try:
        mx = float(raw[0])
        my = float(raw[1]) if raw[1] is not None else mx
    except ValueError:
        return None, f"unreadable mpp {raw!r} in the slide metadata"
    lo, hi = MPP_RANGE
    if not (math.isfinite(mx) and math.isfinite(my)) or not (lo <= mx <= hi) or not (lo <= my <= hi):
        unit = props.get("tiff.ResolutionUnit", "")
        why = f" (likely derived from a {25400 / mx:.0f} dpi TIFF tag)" if (unit == "inch" or mx > hi) and mx > 0 else ""
        return None, f"implausible mpp {mx:g} x {my:g} µm/px in the slide metadata{why}"
    if abs(mx - my) > 0.05 * max(mx, my):
        return None, f"non-square pixels (mpp-x {mx:g}, mpp-y {my:g}) are not supported"
    return (mx + my) / 2, ""


def _ome_mpp(osr: Any) -> dict[str, str]:
    """``PhysicalSizeX/Y`` of an OME-TIFF's first image, in µm, as pseudo-properties (empty if absent)."""
    tf = getattr(osr, "ts_tifffile", None)
    xml = getattr(tf, "ome_metadata", None) if tf is not None else None
    if not xml:
        return {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return {}
    out = {}
    for axis in ("X", "Y"):
        value, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm")
        if value is not None and unit in _OME_UNITS:
            try:
                out[f"ome.mpp-{axis.lower()}"] = str(float(value) * _OME_UNITS[unit])
            except ValueError:
                out[f"ome.mpp-{axis.lower()}"] = value
    return out


def metadata_mpp(path: Path, osr: Any, reader: str) -> tuple[float | None, str]:
    """The slide's own mpp (µm per level-0 pixel) or (None, why it has no usable one)."""
    props = {k: str(v) for k, v in osr.properties.items() if v is not None}
    if reader.startswith("tiffslide"):
        value, why = _mpp_from_properties(path, props, ("tiffslide.mpp-x", "tiffslide.mpp-y"))
        if value is None:
            ome = _ome_mpp(osr)
            if ome:
                return _mpp_from_properties(path, ome, ("ome.mpp-x", "ome.mpp-y"))
        return value, why
    return _mpp_from_properties(path, props, (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y))


def mpp_disagreement(value: float, metadata: float | None) -> float:
    """Relative difference |value - metadata| / metadata (0 when there is no metadata)."""
    return 0.0 if metadata is None else abs(value - metadata) / metadata


# -- readers ------------------------------------------------------------------------------------------
def _open_openslide(target: Path) -> tuple[Any, str, bool]:
    """(an OpenSlide handle or None, why OpenSlide cannot open the file, whether it knows the format)."""
    try:
        fmt = openslide.OpenSlide.detect_format(str(target))
    except openslide.OpenSlideError as exc:
        return None, " ".join(str(exc).split()), False
    if fmt is None:
        return None, "not a format it reads", False
    try:
        return openslide.OpenSlide(str(target)), "", True
    except (openslide.OpenSlideError, OSError) as exc:
        return None, f"{fmt}: {' '.join(str(exc).split())}", True


def _open_tiffslide(target: Path) -> tuple[Any, str]:
    """(a tiffslide handle whose smallest level decodes, "") or (None, why tiffslide cannot read it)."""
    import tiffslide

    try:
        ts = tiffslide.TiffSlide(target)
    except Exception as exc:  # tifffile/zarr raise many types on exotic TIFFs
        return None, " ".join(str(exc).split()) or type(exc).__name__
    try:  # decode one tile of the smallest level: an unknown codec or a damaged file shows now
        level = ts.level_count - 1
        w, h = ts.level_dimensions[level]
        arr = np.asarray(ts.read_region((0, 0), level, (min(w, 64), min(h, 64)), as_array=True, padding=False))
        if arr.size == 0:
            raise ValueError("empty image")
    except Exception as exc:
        ts.close()
        return None, " ".join(str(exc).split()) or type(exc).__name__
    return ts, ""


def _tiffslide_name() -> str:
    import tiffslide

    return f"tiffslide {tiffslide.__version__}"


def _open_reader(path: Path, target: Path, kind: str, reader: Reader) -> tuple[Any, str, str]:
    """(handle, reader name, why the fallback was used) for ``target``; :class:`SlideError` if none can."""
    os_name = f"openslide {openslide.__library_version__}"
    if reader == "tiffslide":
        ts, why = _open_tiffslide(target)
        if ts is None:
            raise SlideError(f"{path}: cannot open slide: tiffslide: {why}")
        return ts, _tiffslide_name(), "tiffslide requested"
    if reader == "openslide" or kind != "tiff":
        osr, why, known = _open_openslide(target)
        if osr is not None:
            return osr, os_name, ""
        if reader == "openslide" or known or kind == "dicom":
            raise SlideError(f"{path}: cannot open slide: OpenSlide: {why}")
        raise SlideError(describe_unsupported(path, read_header(target)))
    # a TIFF-family file: OpenSlide first, tiffslide when OpenSlide cannot (OME-TIFF: the other way round)
    ome = _is_ome_name(path)
    ts_why = ""
    if ome:
        ts, ts_why = _open_tiffslide(target)
        if ts is not None:
            return ts, _tiffslide_name(), "OME-TIFF (OpenSlide ignores its pyramid and pixel size)"
    osr, os_why, _ = _open_openslide(target)
    if osr is not None:
        return osr, os_name, f"tiffslide could not read it: {ts_why}" if ome else ""
    damage = tiff_damage(target)
    if damage:
        raise SlideError(f"{path}: cannot open slide: the file is damaged ({damage}); copy it again")
    if not ome:
        ts, ts_why = _open_tiffslide(target)
        if ts is not None:
            return ts, _tiffslide_name(), f"OpenSlide could not open it: {os_why}"
    raise SlideError(f"{path}: cannot open slide: a TIFF neither reader handles (OpenSlide: {os_why}; "
                     f"tiffslide: {ts_why}); {CONVERT_HINT}")


def _dicom_target(path: Path, folder: DicomFolder | None) -> Path:
    if folder is None or not folder.series:
        extra = f" (its .dcm files: {folder.others[0][1]})" if folder and folder.others else ""
        raise SlideError(f"{path}: a folder is a slide only if it holds whole-slide DICOM (.dcm) instances{extra}")
    if len(folder.series) > 1:
        raise SlideError(f"{path}: holds {len(folder.series)} DICOM series; open one of its .dcm files, or give "
                         "the folder to `wsi-mil tile` (each series becomes its own slide)")
    return folder.series[0].instances[0]


def open_slide(path: str | Path, mpp: float | None = None, *, mpp_fallback: float | None = None,
               reader: Reader = "auto") -> Slide:
    """Open a slide file, or a folder of one DICOM series, with OpenSlide or tiffslide.

    ``mpp`` overrides the metadata (µm per level-0 pixel); ``mpp_fallback`` is used only when
    the metadata has no usable mpp. ``reader`` forces a reader (default: choose, see the module
    docstring). Raises :class:`SlideError` with a one-line reason that says what the file is
    (missing, empty, unreadable, truncated, unsupported) and what to do.
    """
    path = Path(path)
    if path.is_dir():
        target, kind = _dicom_target(path, dicom_folder(path)), "dicom"
    else:
        kind = sniff(read_header(path))
        target = path
    for value in (mpp, mpp_fallback):
        if value is not None and not (MPP_RANGE[0] <= value <= MPP_RANGE[1]):
            raise SlideError(f"{path}: mpp {value:g} is outside the plausible range {MPP_RANGE[0]}-{MPP_RANGE[1]} µm/px")
    osr, name, note = _open_reader(path, target, kind, reader)
    meta, problem = metadata_mpp(path, osr, name)
    if mpp is not None:
        return Slide(path, osr, float(mpp), "override", name, meta, problem, note)
    if meta is not None:
        return Slide(path, osr, meta, "metadata", name, meta, problem, note)
    if mpp_fallback is not None:
        return Slide(path, osr, float(mpp_fallback), "fallback", name, meta, problem, note)
    osr.close()
    raise SlideError(f"{path}: {problem}; {MPP_HINT}")


# -- finding slides in folders ----------------------------------------------------------------------
def slide_id_of(path: Path) -> str:
    """A slide file's id: its name without the suffix (and without ``.ome`` for OME-TIFF)."""
    return re.sub(r"\.ome$", "", path.stem, flags=re.IGNORECASE)


def _file_verdict(p: Path) -> str:
    """"" if ``p`` is a slide file (by suffix, TIFF magic or OpenSlide), else why it is skipped."""
    if p.suffix.lower() in SLIDE_SUFFIXES:
        return ""
    try:
        with p.open("rb") as f:
            head = f.read(132)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc}); fix its permissions if it is a slide"
    kind = sniff(head)
    if kind == "tiff":
        return ""
    try:
        if openslide.OpenSlide.detect_format(str(p)) is not None:
            return ""
    except openslide.OpenSlideError:
        pass
    if not head:
        return "an empty file, not a slide"
    if kind.endswith("image") or kind.endswith("codestream") or kind.endswith("CZI file"):
        return f"{kind}, not a whole-slide format; to tile it, {CONVERT_HINT}"
    what = kind if kind != "unknown" else f"a {p.suffix or 'suffix-less'} file"
    return f"not a slide: {what} that no reader opens"


def _scan_folder(folder: Path, found: list[SlideSource], skipped: list[SkippedEntry]) -> None:
    """Every entry of ``folder`` (recursively) into ``found`` or ``skipped``."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        skipped.append(SkippedEntry(folder, f"folder unreadable ({exc.strerror or exc})"))
        return
    mrxs = {p.stem for p in entries if p.is_file() and p.suffix.lower() == ".mrxs"}
    dicom = dicom_folder(folder) if any(p.is_file() and not p.name.startswith(".") and is_dicom_file(p)
                                        for p in entries) else None
    if dicom is not None:
        ids = dicom.series_ids(folder)
        for sid, series in zip(ids, dicom.series):
            found.append(SlideSource(sid, folder if len(dicom.series) == 1 else series.instances[0]))
        skipped.extend(SkippedEntry(p, why) for p, why in dicom.others)
    for p in entries:
        if p.name.startswith("."):
            skipped.append(SkippedEntry(p, "hidden"))
        elif p.is_dir():
            if p.name.endswith(".zarr"):
                skipped.append(SkippedEntry(p, "a zarr store (an output), not a slide"))
            elif p.name == "ground_truth" and (folder / "cohort.json").is_file():
                skipped.append(SkippedEntry(p, "the lesion ground truth of a `wsi-mil synth` cohort (masks, not slides)"))
            elif p.name not in mrxs:  # an MRXS slide's data folder is read with its .mrxs file
                _scan_folder(p, found, skipped)
        elif dicom is not None and is_dicom_file(p):
            continue  # grouped into series above
        elif not p.is_file():
            skipped.append(SkippedEntry(p, "not a regular file (a broken link or a device)"))
        else:
            why = _file_verdict(p)
            if why:
                skipped.append(SkippedEntry(p, why))
            else:
                found.append(SlideSource(slide_id_of(p), p))


def scan_inputs(inputs: Sequence[str | Path]) -> SlideScan:
    """Find slides in files and folders (recursively), and say why every other entry is skipped.

    A folder of DICOM instances is one slide per series (named after the folder when it holds
    one series). Files given explicitly are always taken (a bad one then fails with its reason
    when opened). Raises :class:`WsiMilError` for missing inputs and two slides with one id.
    """
    found: list[SlideSource] = []
    skipped: list[SkippedEntry] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise WsiMilError(f"{p}: no such file or folder")
        if p.is_file():
            found.append(SlideSource(slide_id_of(p), p))
        else:
            _scan_folder(p, found, skipped)
    counts = Counter(s.slide_id for s in found)
    dupes = sorted(k for k, n in counts.items() if n > 1)
    if dupes:
        where = "; ".join(f"{d}: " + ", ".join(str(s.path) for s in found if s.slide_id == d) for d in dupes)
        raise WsiMilError(f"two or more slides share an id (file name without suffix): {where}; rename them")
    return SlideScan(sorted(found, key=lambda s: s.slide_id), sorted(skipped, key=lambda e: str(e.path)))


def scan_slides(inputs: Sequence[str | Path]) -> list[SlideSource]:
    """The slides of :func:`scan_inputs` (the skipped entries are dropped)."""
    return scan_inputs(inputs).sources
