"""One small reader interface over OpenSlide: :func:`open_slide` and :func:`scan_slides`.

Coordinates are level-0 pixels unless stated otherwise. ``read_region`` returns RGB uint8 with
OpenSlide's alpha composited on white (pixels outside the image are white, not black).
The physical scale (mpp, µm per level-0 pixel) comes from the slide's metadata or an explicit
override; a missing or implausible mpp is an error that says how to pass ``--mpp``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from wsi_mil.errors import SlideError, WsiMilError

#: plausible level-0 resolutions (µm/px): 100x oil is ~0.1, a 1.25x scan ~8. A 72 dpi TIFF tag
#: gives 352.78 and a 300 dpi tag 84.67: both are refused.
MPP_RANGE = (0.05, 16.0)
SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi",
}
MPP_HINT = "pass --mpp with the scanner's level-0 µm per pixel (e.g. 0.25 for 40x, 0.5 for 20x)"


@dataclass(frozen=True)
class SlideSource:
    """A slide found on disk: its id and the file (or DICOM folder) OpenSlide opens."""

    slide_id: str
    path: Path


class Slide:
    """An open whole-slide image. Use :func:`open_slide`; close it (or use ``with``)."""

    def __init__(self, path: Path, osr: openslide.OpenSlide, mpp: float, mpp_source: str) -> None:
        self.path = path
        self._osr = osr
        self.mpp = mpp
        self.mpp_source = mpp_source
        self.properties: dict[str, str] = dict(osr.properties)
        self.vendor: str = self.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        self.dimensions: tuple[int, int] = tuple(osr.dimensions)  # type: ignore[assignment]
        self.level_count: int = int(osr.level_count)
        self.level_dimensions: list[tuple[int, int]] = [tuple(d) for d in osr.level_dimensions]  # type: ignore[misc]
        self.level_downsamples: list[float] = [float(d) for d in osr.level_downsamples]
        #: the library that decodes this slide, with its version (recorded in patch stores)
        self.reader: str = f"openslide {openslide.__library_version__}"

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
        try:
            img = self._osr.read_region((int(location[0]), int(location[1])), int(level), (int(size[0]), int(size[1])))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.path}: cannot read region {location} at level {level}: {exc}") from exc
        return composite_on_white(np.asarray(img))

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


def _dicom_entry(folder: Path) -> Path | None:
    dcm = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    return dcm[0] if dcm else None


def _metadata_mpp(path: Path, props: dict[str, str]) -> float:
    raw = (props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y))
    if raw[0] is None:
        raise SlideError(f"{path}: the slide metadata has no mpp (microns per pixel); {MPP_HINT}")
    try:
        mx = float(raw[0])
        my = float(raw[1]) if raw[1] is not None else mx
    except ValueError:
        raise SlideError(f"{path}: unreadable mpp {raw!r} in the slide metadata; {MPP_HINT}") from None
    lo, hi = MPP_RANGE
    if not (lo <= mx <= hi) or not (lo <= my <= hi):
        unit = props.get("tiff.ResolutionUnit", "")
        why = f" (likely derived from a {25400 / mx:.0f} dpi TIFF tag)" if unit == "inch" or mx > hi else ""
        raise SlideError(f"{path}: implausible mpp {mx:g} x {my:g} µm/px in the slide metadata{why}; {MPP_HINT}")
    if abs(mx - my) > 0.05 * max(mx, my):
        raise SlideError(f"{path}: non-square pixels (mpp-x {mx:g}, mpp-y {my:g}) are not supported; {MPP_HINT}")
    return (mx + my) / 2


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide file, or a folder of DICOM instances, with OpenSlide.

    ``mpp`` overrides the metadata (µm per level-0 pixel). Raises :class:`SlideError` with a
    one-line reason for unopenable files and missing or implausible mpp.
    """
    path = Path(path)
    target = path
    if path.is_dir():
        entry = _dicom_entry(path)
        if entry is None:
            raise SlideError(f"{path}: a folder is a slide only if it holds DICOM (.dcm) instances")
        target = entry
    elif not path.exists():
        raise SlideError(f"{path}: slide file not found")
    try:
        fmt = openslide.OpenSlide.detect_format(str(target))
    except openslide.OpenSlideError as exc:
        raise SlideError(f"{path}: cannot open slide: {exc}") from exc
    if fmt is None:
        raise SlideError(f"{path}: not a slide format OpenSlide can read")
    try:
        osr = openslide.OpenSlide(str(target))
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(f"{path}: cannot open slide ({fmt}): {' '.join(str(exc).split())}") from exc
    props = dict(osr.properties)
    if mpp is not None:
        if not (MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
            osr.close()
            raise SlideError(f"{path}: --mpp {mpp:g} is outside the plausible range {MPP_RANGE[0]}-{MPP_RANGE[1]} µm/px")
        return Slide(path, osr, float(mpp), "override")
    try:
        value = _metadata_mpp(path, props)
    except SlideError:
        osr.close()
        raise
    return Slide(path, osr, value, "metadata")


def _is_slide_file(p: Path) -> bool:
    if p.suffix.lower() in SLIDE_SUFFIXES:
        return True
    try:
        return openslide.OpenSlide.detect_format(str(p)) is not None
    except openslide.OpenSlideError:
        return False


def scan_slides(inputs: Sequence[str | Path]) -> list[SlideSource]:
    """Find slides in files and folders (recursively). A folder of ``.dcm`` files is one slide.

    Files given explicitly are always taken (a bad one then fails with its reason when opened).
    Raises :class:`WsiMilError` for missing inputs and for two slides with the same id.
    """
    found: list[SlideSource] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise WsiMilError(f"{p}: no such file or folder")
        if p.is_file():
            found.append(SlideSource(p.stem, p))
            continue
        if _dicom_entry(p) is not None:
            found.append(SlideSource(p.name, p))
        for sub in sorted(p.rglob("*")):
            rel = sub.relative_to(p)
            if any(part.startswith(".") or part.endswith(".zarr") for part in rel.parts):
                continue
            if sub.is_dir():
                if _dicom_entry(sub) is not None:
                    found.append(SlideSource(sub.name, sub))
            elif sub.suffix.lower() != ".dcm" and _is_slide_file(sub):
                found.append(SlideSource(sub.stem, sub))
    counts = Counter(s.slide_id for s in found)
    dupes = sorted(k for k, n in counts.items() if n > 1)
    if dupes:
        where = "; ".join(f"{d}: " + ", ".join(str(s.path) for s in found if s.slide_id == d) for d in dupes)
        raise WsiMilError(f"two or more slides share an id (file name without suffix): {where}; rename them")
    return sorted(found, key=lambda s: s.slide_id)
