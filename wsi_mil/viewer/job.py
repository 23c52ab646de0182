"""What the viewer shows of a job folder: its slides, a heatmap run's scores, synthetic ground truth.

Slides are the job's patch stores (``JOB/patches/{slide_id}.zarr``): their attributes give the
slide file, its mpp and level-0 size. Only these ids are served: a URL names a slide id, never a
path. Scores come from ``JOB/heatmaps/{run}/{slide_id}/scores.csv`` and ``slide.json`` (written by
``wsi-mil heatmap``). Ground truth comes from a synthetic cohort (``wsi-mil synth``): when the
slide file lies in a folder with ``cohort.json``, its lesion polygons are read from
``ground_truth/{slide_id}.geojson`` there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import StoreError, WsiMilError
from wsi_mil.heatmaps.table import read_scores_csv
from wsi_mil.jobdir import HEATMAPS
from wsi_mil.stores.common import slide_id_of
from wsi_mil.stores.patches import list_patch_stores, open_patch_store
from wsi_mil.synth.truth import load_lesion_polygons
from wsi_mil.viewer.layer import ScoreLayer


class ViewerError(WsiMilError):
    """The job or run cannot be shown."""


@dataclass(frozen=True)
class SlideEntry:
    """A slide of the job: id, slide file, level-0 mpp and size (px), tile side (level-0 px)."""

    slide_id: str
    slide_path: Path
    mpp: float
    width: int
    height: int
    tile_size0: float
    n_tiles: int


def list_runs(job: Path) -> list[str]:
    """Names of the heatmap runs of ``job`` (folders of ``JOB/heatmaps`` holding slide folders)."""
    d = Path(job) / HEATMAPS
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def choose_run(job: Path, run: str | None) -> str | None:
    """The run to show: ``run`` when given (it must exist), the only run, else None (slides only)."""
    runs = list_runs(job)
    if run is None:
        return runs[0] if len(runs) == 1 else None
    if run not in runs:
        have = ", ".join(runs) if runs else "none"
        raise ViewerError(f"{Path(job) / HEATMAPS / run}: no heatmaps of run '{run}' (runs with heatmaps: {have}); "
                          f"run 'wsi-mil heatmap' first or choose --run")
    return run


def list_slides(job: Path) -> dict[str, SlideEntry]:
    """slide id -> :class:`SlideEntry` for every complete patch store of ``job``."""
    out: dict[str, SlideEntry] = {}
    for path in list_patch_stores(job):
        try:
            store = open_patch_store(path)
        except StoreError:
            continue  # incomplete or damaged store: the tile stage reports it
        a = store.attrs
        if not a.get("slide_path") or not a.get("mpp"):
            continue
        sid = slide_id_of(path)
        out[sid] = SlideEntry(sid, Path(str(a["slide_path"])), float(a["mpp"]), int(a.get("level0_width") or 0),
                              int(a.get("level0_height") or 0), float(a.get("tile_size_level0") or 0.0), store.n_tiles)
    return out


def load_layer(job: Path, run: str, slide_id: str, cmap: str = "coolwarm") -> ScoreLayer | None:
    """The score layer of ``slide_id`` in heatmap run ``run``; None when the run did not draw it."""
    folder = Path(job) / HEATMAPS / run / slide_id
    scores_csv, meta_json = folder / "scores.csv", folder / "slide.json"
    if not scores_csv.is_file() or not meta_json.is_file():
        return None
    try:
        meta: dict[str, Any] = json.loads(meta_json.read_text(encoding="utf-8"))
        table = read_scores_csv(scores_csv)
        cls = str(meta["class_shown"])
        coords = np.stack([table["x"], table["y"]], axis=1).astype(np.int64)
        scores = table[f"score_{cls}"].astype(np.float32)
        selected = table[f"selected_{cls}"].astype(np.int8)
        size0 = float(meta["tile_size_level0"])
        step0 = float((meta.get("grid") or {}).get("step") or size0)
        lo, hi = (meta.get("score_range") or [None, None])[:2]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ViewerError(f"{folder}: unreadable heatmap files ({exc}); re-run 'wsi-mil heatmap --overwrite'") from exc
    return ScoreLayer(coords, scores, selected, size0, step0, cls, cmap, lo, hi)


def ground_truth_polygons(slide: SlideEntry) -> list[list[list[float]]] | None:
    """Lesion polygons ([[x, y], ...] level-0 px) when the slide comes from a synthetic cohort, else None."""
    cohort = slide.slide_path.parent
    if not (cohort / "cohort.json").is_file():
        return None
    try:
        return [np.round(p, 1).tolist() for p in load_lesion_polygons(cohort, slide.slide_id)]
    except StoreError:
        return None
