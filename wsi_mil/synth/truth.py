"""Ground truth of synthetic slides: files, loaders and tile labels.

Per slide, in ``COHORT/ground_truth/``:

* ``{slide_id}.json``: ``schema`` ``wsi_mil.synth.truth/1``, label, level-0 size and mpp, pyramid levels,
  ``mask_downsample``, lesion and tissue areas (level-0 px^2), the lesion share of the tissue, the seed.
* ``{slide_id}.geojson``: lesion polygons in level-0 pixels (QuPath-compatible FeatureCollection; empty
  for negative slides); its ``properties`` repeat the mask downsample.
* ``{slide_id}_mask.png``: lesion mask (0/255) at ``mask_downsample`` (all zero for negative slides).
* ``{slide_id}_tissue.png``: tissue mask (0/255) at the same downsample.

Mask pixel (i, j) covers level-0 pixels ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)`` and is set when its centre
lies inside a lesion polygon.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil import __version__
from wsi_mil.atomic import atomic_path, write_json_atomic
from wsi_mil.errors import ConfigError, StoreError
from wsi_mil.stores.common import read_schema_json

TRUTH_SCHEMA = "wsi_mil.synth.truth/1"
GROUND_TRUTH_DIR = "ground_truth"


@dataclass
class SlideTruth:
    """What was drawn on one synthetic slide.

    lesions: list of (K, 2) float64 polygons (x, y) in level-0 px; mask: (h, w) bool lesion mask and
    tissue_mask: (h, w) bool, both at ``mask_downsample``; areas in level-0 px^2.
    """

    slide_id: str
    path: Path | None
    width: int
    height: int
    mpp: float
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    positive: bool
    seed: int
    lesions: list[np.ndarray]
    lesion_area: float
    tissue_area: float
    mask: np.ndarray
    tissue_mask: np.ndarray
    mask_downsample: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> int:
        return int(self.positive)

    @property
    def lesion_fraction(self) -> float:
        """Lesion area / tissue area (0 for negative slides)."""
        return self.lesion_area / self.tissue_area if self.tissue_area > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON sidecar content (no arrays)."""
        return {
            "schema": TRUTH_SCHEMA,
            "wsi_mil_version": __version__,
            "slide_id": self.slide_id,
            "slide_file": self.path.name if self.path else None,
            "label": self.label,
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": self.level_downsamples,
            "mask_downsample": self.mask_downsample,
            "mask_shape": list(self.mask.shape),
            "n_lesions": len(self.lesions),
            "lesion_area_px": self.lesion_area,
            "tissue_area_px": self.tissue_area,
            "lesion_fraction": self.lesion_fraction,
            "seed": self.seed,
            "params": self.params,
        }


def ground_truth_dir(cohort_dir: str | Path) -> Path:
    return Path(cohort_dir) / GROUND_TRUTH_DIR


def _png_bytes(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def lesion_geojson(truth: SlideTruth) -> dict[str, Any]:
    """QuPath-style FeatureCollection of the lesion polygons (level-0 px, closed rings)."""
    feats = []
    for i, poly in enumerate(truth.lesions):
        ring = [[round(float(x), 2), round(float(y), 2)] for x, y in poly]
        ring.append(ring[0])
        feats.append({
            "type": "Feature",
            "id": f"{truth.slide_id}-lesion-{i}",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "name": f"lesion {i}",
                           "classification": {"name": "Lesion", "color": [220, 30, 30]}},
        })
    return {
        "type": "FeatureCollection",
        "properties": {"schema": TRUTH_SCHEMA, "slide_id": truth.slide_id, "units": "level-0 pixels",
                       "mask_downsample": truth.mask_downsample, "mpp": truth.mpp,
                       "width": truth.width, "height": truth.height},
        "features": feats,
    }


def write_ground_truth(gt_dir: str | Path, truth: SlideTruth) -> Path:
    """Write the four ground-truth files of one slide (each atomically, the JSON sidecar last)."""
    gt_dir = Path(gt_dir)
    gt_dir.mkdir(parents=True, exist_ok=True)
    sid = truth.slide_id
    write_json_atomic(gt_dir / f"{sid}.geojson", lesion_geojson(truth))
    _write_bytes_atomic(gt_dir / f"{sid}_mask.png", _png_bytes(truth.mask))
    _write_bytes_atomic(gt_dir / f"{sid}_tissue.png", _png_bytes(truth.tissue_mask))
    write_json_atomic(gt_dir / f"{sid}.json", truth.summary())
    return gt_dir / f"{sid}.json"


def load_ground_truth(cohort_dir: str | Path, slide_id: str) -> dict[str, Any]:
    """The JSON sidecar of one slide, validated; :class:`StoreError` names the file when it is not."""
    path = ground_truth_dir(cohort_dir) / f"{slide_id}.json"
    if not path.is_file():
        raise StoreError(f"{path}: no ground truth for slide '{slide_id}'; is {cohort_dir} a cohort "
                         "written by `wsi-mil synth`?")
    meta = read_schema_json(path, TRUTH_SCHEMA, ("label", "width", "height", "mask_downsample", "mask_shape"),
                            fix="regenerate the cohort")
    return meta


def _read_png_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L")) > 127
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable mask ({exc}); regenerate the cohort") from exc
    if arr.shape != shape:
        raise StoreError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} px, its JSON says "
                         f"{shape[1]}x{shape[0]}; regenerate the cohort")
    return arr


def load_lesion_mask(cohort_dir: str | Path, slide_id: str) -> tuple[np.ndarray, float]:
    """(mask (h, w) bool, downsample relative to level 0) of one slide; all False for a negative slide."""
    meta = load_ground_truth(cohort_dir, slide_id)
    shape = (int(meta["mask_shape"][0]), int(meta["mask_shape"][1]))
    ds = float(meta["mask_downsample"])
    path = ground_truth_dir(cohort_dir) / f"{slide_id}_mask.png"
    if not path.is_file():
        if int(meta["label"]) == 0:
            return np.zeros(shape, bool), ds
        raise StoreError(f"{path}: lesion mask of positive slide '{slide_id}' is missing; regenerate the cohort")
    return _read_png_mask(path, shape), ds


def load_tissue_mask(cohort_dir: str | Path, slide_id: str) -> tuple[np.ndarray, float]:
    """(tissue mask (h, w) bool, downsample) of one slide, as drawn (before texture)."""
    meta = load_ground_truth(cohort_dir, slide_id)
    shape = (int(meta["mask_shape"][0]), int(meta["mask_shape"][1]))
    path = ground_truth_dir(cohort_dir) / f"{slide_id}_tissue.png"
    if not path.is_file():
        raise StoreError(f"{path}: tissue mask is missing; regenerate the cohort")
    return _read_png_mask(path, shape), float(meta["mask_downsample"])


def load_lesion_polygons(cohort_dir: str | Path, slide_id: str) -> list[np.ndarray]:
    """Lesion polygons of one slide: list of (K, 2) float64 (x, y) level-0 px (closing vertex dropped)."""
    path = ground_truth_dir(cohort_dir) / f"{slide_id}.geojson"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        rings = [np.asarray(f["geometry"]["coordinates"][0], np.float64) for f in doc["features"]]
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: lesion polygons are missing; regenerate the cohort") from exc
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise StoreError(f"{path}: not a lesion FeatureCollection ({exc}); regenerate the cohort") from exc
    return [r[:-1] if len(r) > 1 and np.array_equal(r[0], r[-1]) else r for r in rings]


def lesion_fraction(mask: np.ndarray, downsample: float, coords: np.ndarray,
                    tile_size_level0: float) -> np.ndarray:
    """(N,) float32 share of each tile's area covered by lesion.

    mask: (h, w) bool at ``downsample``; coords: (N, 2) level-0 (x, y) top-left corners; tiles are squares
    of ``tile_size_level0`` level-0 px. Exact for the piecewise-constant mask (area-weighted, fractional
    mask pixels at tile borders counted by their overlap); area outside the mask counts as no lesion.
    """
    mask = np.asarray(mask)
    coords = np.asarray(coords)
    if mask.ndim != 2:
        raise ConfigError(f"lesion_fraction: mask must be 2-D (h, w), got shape {mask.shape}")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ConfigError(f"lesion_fraction: coords must be (N, 2) level-0 (x, y), got shape {coords.shape}")
    if not (downsample > 0 and tile_size_level0 > 0):
        raise ConfigError(f"lesion_fraction: downsample and tile size must be > 0, got {downsample}, "
                          f"{tile_size_level0}")
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), axis=0), axis=1)

    def integral(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        # bilinear interpolation of the summed-area table is exact for a piecewise-constant mask
        fy = np.clip(yy, 0.0, float(h))
        fx = np.clip(xx, 0.0, float(w))
        i0 = np.minimum(np.floor(fy).astype(np.int64), max(h - 1, 0))
        j0 = np.minimum(np.floor(fx).astype(np.int64), max(w - 1, 0))
        ty, tx = fy - i0, fx - j0
        return (sat[i0, j0] * (1 - ty) * (1 - tx) + sat[i0 + 1, j0] * ty * (1 - tx)
                + sat[i0, j0 + 1] * (1 - ty) * tx + sat[i0 + 1, j0 + 1] * ty * tx)

    x0 = coords[:, 0].astype(np.float64) / downsample
    y0 = coords[:, 1].astype(np.float64) / downsample
    t = float(tile_size_level0) / downsample
    x1, y1 = x0 + t, y0 + t
    covered = integral(y1, x1) - integral(y0, x1) - integral(y1, x0) + integral(y0, x0)
    return np.clip(covered / (t * t), 0.0, 1.0).astype(np.float32)
