"""Test data of the viewer: a slide whose 256 px cells each have their own colour, its patch store,
and the files of a model run with out-of-fold predictions (see conftest.py's ``viewer_job``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wsi_mil.jobdir import patch_store_path
from wsi_mil.stores.patches import write_patch_store

W0, H0, MPP, CELL = 1536, 1280, 0.5, 256
COLS, ROWS = W0 // CELL, H0 // CELL
RUN = "r1"
LESION = [[300.0, 300.0], [700.0, 300.0], [700.0, 650.0], [300.0, 650.0]]


def cell_colour(col: int | np.ndarray, row: int | np.ndarray) -> tuple:
    """The colour of cell (col, row) of the test slide: red encodes the column, green the row."""
    return (30 + 40 * np.asarray(col), 30 + 40 * np.asarray(row), 200)


def decode_cell(rgb: np.ndarray) -> tuple[int, int]:
    """(col, row) of a pixel colour of the test slide (JPEG error of a few levels tolerated)."""
    return int(round((float(rgb[0]) - 30) / 40)), int(round((float(rgb[1]) - 30) / 40))


def tile_scores(coords: np.ndarray) -> np.ndarray:
    """Class-1 score of each tile: grows with the column, a little with the row."""
    return (coords[:, 0] // CELL + 0.1 * (coords[:, 1] // CELL)).astype(np.float32)


def write_cell_slide(path: Path) -> None:
    """A pyramidal JPEG TIFF (downsamples 1, 2, 4) with one flat colour per 256 px cell."""
    import tifffile

    yy, xx = np.mgrid[0:H0, 0:W0]
    r, g, b = cell_colour(xx // CELL, yy // CELL)
    base = np.stack([r, g, np.full_like(r, b)], axis=2).astype(np.uint8)
    with tifffile.TiffWriter(path) as tif:
        for k, d in enumerate((1, 2, 4)):
            res = 1e4 / (MPP * d)
            tif.write(base[::d, ::d], tile=(256, 256), photometric="rgb", compression="jpeg", subfiletype=1 if k else 0,
                      resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)


def write_store(job: Path, slide_id: str, slide_path: Path, coords: np.ndarray) -> None:
    n = len(coords)
    attrs = dict(slide_id=slide_id, slide_path=str(slide_path), mpp=MPP, mpp_source="metadata", level0_width=W0,
                 level0_height=H0, target_mpp=2.0, tile_size=64, stride=64, tile_size_level0=float(CELL),
                 stride_level0=float(CELL), tile_size_um=128.0)
    write_patch_store(patch_store_path(job, slide_id), np.full((n, 64, 64, 3), 200, np.uint8), coords,
                      np.ones(n, np.float32), np.ones((H0 // 64, W0 // 64), np.uint8), 64.0, attrs, codec="zstd")


#: out-of-fold predictions of the run: (slide, label, P(tumor), site)
OOF = [(f"t{i:02d}", "tumor" if i % 2 else "normal", p, "A" if i < 10 else "B")
       for i, p in enumerate([0.2, 0.9, 0.4, 0.35, 0.1, 0.8, 0.6, 0.7, 0.3, 0.95,
                              0.15, 0.55, 0.45, 0.4, 0.05, 0.65, 0.5, 0.3, 0.25, 0.85])]


def write_oof_run(run_dir: Path) -> Path:
    """The files of a model run that the cohort summary reads: predictions.csv, metrics.json, config.json."""
    run_dir.mkdir(parents=True)
    labels = run_dir.parent / "labels.csv"
    labels.write_text("slide_id,label,site\n" + "".join(f"{s},{lab},{site}\n" for s, lab, _, site in OOF))
    lines = ["slide_id,label,split,fold,predicted,prob_normal,prob_tumor"]
    lines += [f"{s},{lab},train,{i % 4},{'tumor' if p >= 0.5 else 'normal'},{1 - p:.6f},{p:.6f}"
              for i, (s, lab, p, _) in enumerate(OOF)]
    lines.append("x-test,tumor,test,,tumor,0.1,0.9")  # test split: not out-of-fold, not summarised
    (run_dir / "predictions.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps({"out_of_fold": {"ci": {"auc": [0.61, 0.97]}, "ci_level": 0.9}}))
    (run_dir / "config.json").write_text(json.dumps({"labels_csv": str(labels), "class_names": ["normal", "tumor"]}))
    return run_dir


