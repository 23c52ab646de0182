"""Which physical scale (mpp, µm per level-0 pixel) each slide is tiled at.

The slide's metadata wins where it has a usable mpp. ``--mpp`` and the per-slide table
``--mpp-table CSV`` (``slide_id,mpp``; the table first) fill in for slides without one;
``--mpp-force`` makes them replace the metadata. An override that disagrees with the metadata
by more than :data:`DISAGREEMENT` gives a warning, whether it is used or not.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_mil.errors import ConfigError
from wsi_mil.slide import MPP_RANGE, Slide, mpp_disagreement
from wsi_mil.tiling.config import TilingConfig

DISAGREEMENT = 0.10  # relative difference between an override and the metadata that is worth a warning
MPP_KEYS = ("mpp", "mpp_table", "mpp_force")  # tiling keys that are per slide, compared through the stores' mpp
_UNKNOWN = object()


@dataclass(frozen=True)
class MppRequest:
    """What the user asked for one slide: a value (or None), where it came from, whether it is forced."""

    value: float | None = None
    given_by: str = ""  # "--mpp" or "--mpp-table FILE"
    force: bool = False

    @property
    def forced(self) -> float | None:
        """The ``mpp`` argument of :func:`wsi_mil.slide.open_slide`: replaces the metadata."""
        return self.value if self.force else None

    @property
    def fallback(self) -> float | None:
        """The ``mpp_fallback`` argument of :func:`wsi_mil.slide.open_slide`: used without metadata."""
        return None if self.force else self.value


def parse_mpp_table(text: str, name: str = "mpp table") -> dict[str, float]:
    """``slide_id,mpp`` CSV text -> {slide_id: mpp}; :class:`ConfigError` naming ``name`` and the line."""
    try:
        rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    except csv.Error as exc:
        raise ConfigError(f"{name}: not a readable CSV ({exc}); write a header slide_id,mpp and one row per slide") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "slide_id" not in header or "mpp" not in header:
        raise ConfigError(f"{name}: the first line must be a header with columns slide_id,mpp (found: "
                          f"{','.join(header)[:80] or 'nothing'})")
    i_id, i_mpp = header.index("slide_id"), header.index("mpp")
    out: dict[str, float] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(i_id, i_mpp):
            raise ConfigError(f"{name}: line {line}: expected slide_id,mpp, found {len(row)} field(s)")
        sid, raw = row[i_id].strip(), row[i_mpp].strip()
        if not sid:
            raise ConfigError(f"{name}: line {line}: empty slide_id")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: line {line}: mpp {raw[:40]!r} of slide '{sid[:80]}' is not a number") from None
        if not math.isfinite(value) or not (MPP_RANGE[0] <= value <= MPP_RANGE[1]):
            raise ConfigError(f"{name}: line {line}: mpp {raw[:40]} of slide '{sid[:80]}' is outside the plausible "
                              f"range {MPP_RANGE[0]}-{MPP_RANGE[1]} µm/px (0.25 is 40x, 0.5 is 20x)")
        if sid in out:
            raise ConfigError(f"{name}: line {line}: duplicate slide_id '{sid[:80]}'; keep one row per slide")
        out[sid] = value
    if not out:
        raise ConfigError(f"{name}: no rows; add one line slide_id,mpp per slide")
    return out


def read_mpp_table(path: str | Path) -> dict[str, float]:
    """Read a ``slide_id,mpp`` CSV file (see :func:`parse_mpp_table`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: mpp table not found; give a CSV with slide_id,mpp") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: mpp table is not UTF-8 text; save it as a CSV (slide_id,mpp)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the mpp table ({exc.strerror or exc})") from None
    return parse_mpp_table(text, str(path))


def mpp_requests(slide_ids: list[str], cfg: TilingConfig) -> tuple[dict[str, MppRequest], list[str]]:
    """Each slide's :class:`MppRequest` from ``cfg`` (reading its table), and warnings about the table."""
    table = read_mpp_table(cfg.mpp_table) if cfg.mpp_table is not None else {}
    given_table = f"--mpp-table {cfg.mpp_table}"
    out = {}
    for sid in slide_ids:
        if sid in table:
            out[sid] = MppRequest(table[sid], given_table, cfg.mpp_force)
        elif cfg.mpp is not None:
            out[sid] = MppRequest(float(cfg.mpp), "--mpp", cfg.mpp_force)
        else:
            out[sid] = MppRequest()
    unknown = sorted(set(table) - set(slide_ids))
    warnings = []
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
        warnings.append(f"{cfg.mpp_table}: {len(unknown)} slide id(s) match no slide found: {shown}")
    return out, warnings


def mpp_warning(slide: Slide, request: MppRequest) -> str:
    """A warning when the requested mpp disagrees with the slide's metadata by more than 10 %, else ""."""
    if request.value is None or slide.metadata_mpp is None:
        return ""
    diff = mpp_disagreement(request.value, slide.metadata_mpp)
    if diff <= DISAGREEMENT:
        return ""
    what = (f"mpp {request.value:g} from {request.given_by} differs from the slide metadata "
            f"({slide.metadata_mpp:g} µm/px) by {diff:.0%}")
    if request.force:
        return f"{what}; {request.value:g} is used (--mpp-force)"
    return f"{what}; the metadata is used (pass --mpp-force to use {request.value:g})"


def expected_store_mpp(request: MppRequest, attrs: dict[str, Any]) -> float | None:
    """The mpp this run would tile a slide at, given the attributes of its existing store.

    None when this run gives the slide no usable mpp (its store used an override the run lacks).
    The store records the metadata's mpp (``mpp_metadata``, None when unusable); a store written
    before that attribute existed tells it only when its ``mpp_source`` is ``metadata``.
    """
    meta: Any = attrs.get("mpp_metadata", _UNKNOWN)
    if meta is _UNKNOWN and attrs.get("mpp_source") == "metadata":
        meta = attrs.get("mpp")
    if request.value is not None and (request.force or meta is None):
        return request.value
    if meta is not _UNKNOWN and meta is not None:
        return float(meta)
    if request.value is not None:  # unknown metadata of an old store made with an override: same override?
        return request.value
    return None
