"""scores.csv: one row per tile, for people who do their own analysis.

Columns: ``tile_id`` (row in the patch store and feature file), ``x``, ``y`` (level-0 top-left
corner, pixels), ``size`` (level-0 side of the tile, pixels), then ``score_{class}`` for every
class (the MIL head's per-tile score, unscaled) and ``selected_{class}`` (+1 selected among
the top, -1 among the bottom, 0 not selected). Written in chunks, atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsi_mil.atomic import atomic_path
from wsi_mil.errors import WsiMilError

CHUNK = 8192


def column_names(class_names: Sequence[str]) -> list[str]:
    """The header of scores.csv for these classes."""
    return (["tile_id", "x", "y", "size"] + [f"score_{c}" for c in class_names]
            + [f"selected_{c}" for c in class_names])


def write_scores_csv(
    path: str | Path,
    coords: np.ndarray,
    tile_scores: np.ndarray,
    selected: np.ndarray,
    class_names: Sequence[str],
    tile_size_level0: float,
) -> Path:
    """Write scores.csv (atomic).

    coords: (N, 2) int level-0 (x, y); tile_scores: (N, C) float; selected: (N, C) int;
    class_names: C names; tile_size_level0: level-0 tile side in pixels.
    """
    coords = np.asarray(coords, dtype=np.int64)
    tile_scores = np.asarray(tile_scores, dtype=np.float32)
    selected = np.asarray(selected).astype(np.int64, copy=False)
    n, c = coords.shape[0], len(class_names)
    if coords.shape != (n, 2) or tile_scores.shape != (n, c) or selected.shape != (n, c):
        raise WsiMilError(
            f"{path}: expected coords (N, 2), tile_scores and selected (N, {c}); got "
            f"{coords.shape}, {tile_scores.shape}, {selected.shape}"
        )
    size = float(tile_size_level0)
    size_text = str(int(size)) if size.is_integer() else f"{size:.4f}"
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            head = io.StringIO()
            csv.writer(head, lineterminator="\n").writerow(column_names(class_names))
            f.write(head.getvalue())
            template = "%d,%d,%d," + size_text.replace("%", "%%") + ",%.6g" * c + ",%d" * c
            for start in range(0, n, CHUNK):
                stop = min(n, start + CHUNK)
                cols = [range(start, stop), coords[start:stop, 0].tolist(), coords[start:stop, 1].tolist()]
                cols += [tile_scores[start:stop, j].tolist() for j in range(c)]
                cols += [selected[start:stop, j].tolist() for j in range(c)]
                f.write("\n".join(template % row for row in zip(*cols)) + "\n")
    return Path(path)


def read_scores_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Read scores.csv back: column name -> (N,) array (int columns as int64, scores float64)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    data = np.array(rows, dtype=object).reshape(len(rows), len(header)) if rows else np.zeros((0, len(header)), object)
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        col = data[:, j]
        if name.startswith("score_") or name == "size":
            out[name] = col.astype(np.float64)
        else:
            out[name] = col.astype(np.int64)
    return out
