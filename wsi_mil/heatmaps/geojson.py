"""Tiles as a GeoJSON FeatureCollection that QuPath (0.4 and later) imports as objects.

One Feature per tile: ``geometry`` a Polygon (one closed ring, level-0 pixels, origin at the
top-left of the full-resolution image: QuPath's convention) and ``properties``:

- ``objectType``: ``"tile"`` (a QuPath tile object, a kind of detection: measurement maps,
  measurement tables and classifiers work on it);
- ``classification``: ``{"name", "color": [r, g, b]}``, one of three classes per scored class
  ``C``: ``"C top"`` (selected by the min-max layer among the highest), ``"C bottom"``
  (selected among the lowest) and ``"C tile"`` (not selected);
- ``measurements``: a flat ``name -> number`` mapping (QuPath reads numbers only): ``score``
  (the shown class), any extra per-tile measurements (e.g. the scores of every class),
  ``selected`` (+1 top, -1 bottom, 0 not selected), ``tile id`` (row in the patch store);
- ``isLocked``: true, so the tiles cannot be moved by a stray click.

The file is written as a stream, a few thousand features at a time, so memory stays small for
hundreds of thousands of tiles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wsi_mil.atomic import atomic_path
from wsi_mil.errors import WsiMilError
from wsi_mil.heatmaps.scoremap import check_tile_arrays

TOP_COLOR = (220, 30, 30)
BOTTOM_COLOR = (30, 90, 220)
TILE_COLOR = (150, 150, 150)
CHUNK = 4096


def tile_class_names(class_name: str) -> tuple[str, str, str]:
    """QuPath classification names for (top-selected, bottom-selected, other) tiles."""
    return f"{class_name} top", f"{class_name} bottom", f"{class_name} tile"


def _pair(key: str, v: float) -> str | None:
    """``"key": number`` for a measurement; None for NaN/inf (QuPath reads numbers only)."""
    v = float(v)
    if not math.isfinite(v):
        return None
    text = str(int(v)) if v.is_integer() else f"{v:.9g}"  # 9 digits: float32 round-trips exactly
    return f"{key}: {text}"


def write_tiles_geojson(
    path: str | Path,
    coords: np.ndarray,
    scores: np.ndarray,
    selected: np.ndarray,
    tile_size_level0: float,
    class_name: str,
    extra_measurements: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write one QuPath tile object per tile (atomic).

    coords: (N, 2) level-0 (x, y) top-left corners, pixels; scores: (N,) scores of
    ``class_name``; selected: (N,) int (+1 top, -1 bottom, 0 none); tile_size_level0: tile side
    in level-0 pixels; extra_measurements: name -> (N,) numbers added to each tile.
    """
    coords, scores = check_tile_arrays(coords, scores, str(path))
    n = coords.shape[0]
    selected = np.asarray(selected).astype(np.int64, copy=False)
    if selected.shape != (n,):
        raise WsiMilError(f"{path}: selected must have shape ({n},), got {selected.shape}")
    extra = {k: np.asarray(v, dtype=np.float64) for k, v in (extra_measurements or {}).items()}
    for k, v in extra.items():
        if v.shape != (n,):
            raise WsiMilError(f"{path}: measurement '{k}' must have shape ({n},), got {v.shape}")
    size = float(tile_size_level0)
    top_name, bottom_name, tile_name = tile_class_names(class_name)

    def cls(name: str, color: tuple[int, int, int]) -> str:
        return json.dumps({"name": name, "color": list(color)})

    classes = {1: cls(top_name, TOP_COLOR), -1: cls(bottom_name, BOTTOM_COLOR), 0: cls(tile_name, TILE_COLOR)}
    # one %-template per feature: a single formatting call per tile (about 2 µs)
    c1 = "%d" if size.is_integer() else "%.2f"  # far corner: integral sizes stay integral, else 0.01 px
    ring = f"[[%d, %d], [{c1}, %d], [{c1}, {c1}], [%d, {c1}], [%d, %d]]"
    meas = '"score": %.9g' + "".join(f", {json.dumps(k).replace('%', '%%')}: %.9g" for k in extra)
    template = ('{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [' + ring + ']}, '
                '"properties": {"objectType": "tile", "classification": %s, "isLocked": true, '
                '"measurements": {' + meas + ', "selected": %d, "tile id": %d}}}')
    extra_keys = [json.dumps(k) for k in extra]
    extra_cols = list(extra.values())
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write('{"type": "FeatureCollection", "features": [')
            for start in range(0, n, CHUNK):
                stop = min(n, start + CHUNK)
                x = coords[start:stop, 0]
                y = coords[start:stop, 1]
                xs, ys = x.tolist(), y.tolist()
                x1s, y1s = (x + size).tolist(), (y + size).tolist()
                sel = np.sign(selected[start:stop]).tolist()
                sc = scores[start:stop].tolist()
                ex = [c[start:stop].tolist() for c in extra_cols]
                finite = np.isfinite(scores[start:stop])
                for c in extra_cols:
                    finite &= np.isfinite(c[start:stop])
                parts = []
                for j in range(stop - start):
                    a, b, c, d = xs[j], ys[j], x1s[j], y1s[j]
                    if finite[j]:
                        parts.append(template % (a, b, c, b, c, d, a, d, a, b, classes[sel[j]], sc[j],
                                                 *[e[j] for e in ex], sel[j], start + j))
                    else:  # NaN/inf measurements are left out (QuPath reads numbers only)
                        m = [_pair('"score"', sc[j])] + [_pair(k, e[j]) for k, e in zip(extra_keys, ex)]
                        m += [f'"selected": {sel[j]}', f'"tile id": {start + j}']
                        head = template.split('"measurements": {')[0] % (a, b, c, b, c, d, a, d, a, b, classes[sel[j]])
                        parts.append(head + '"measurements": {' + ", ".join(p for p in m if p) + "}}}")
                if start:
                    f.write(",")
                f.write("\n" + ",\n".join(parts))
            f.write("\n]}\n")
    return Path(path)
