"""A small job for the viewer: one slide whose 256 px cells each have their own colour, a heatmap
run over it, a slide whose file is damaged, and synthetic-cohort ground truth beside the slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from viewer_data import CELL, COLS, H0, LESION, MPP, ROWS, RUN, W0, tile_scores, write_cell_slide, write_oof_run, write_store

from wsi_mil.heatmaps.render import SlideArrays, render_slide
from wsi_mil.heatmaps.report import ReportRow, render_report_html
from wsi_mil.heatmaps.summary import cohort_summary
from wsi_mil.jobdir import heatmaps_dir


@pytest.fixture(scope="session")
def viewer_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JOB with slides 's1' (scored by run 'r1', lesion ground truth) and 'broken' (damaged slide file)."""
    root = tmp_path_factory.mktemp("viewer")
    cohort = root / "cohort"
    (cohort / "ground_truth").mkdir(parents=True)
    slide = cohort / "s1.tiff"
    write_cell_slide(slide)
    (cohort / "cohort.json").write_text(json.dumps({"schema": "wsi_mil.synth.cohort/1"}))
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [LESION + [LESION[0]]]},
               "properties": {"classification": {"name": "lesion"}}}
    (cohort / "ground_truth" / "s1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    broken = cohort / "broken.tiff"
    broken.write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header and nothing else
    job = root / "job"
    ys, xs = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    coords = (np.stack([xs.ravel(), ys.ravel()], 1) * CELL).astype(np.int64)
    write_store(job, "s1", slide, coords)
    write_store(job, "broken", broken, coords)
    s = tile_scores(coords)
    sel = np.zeros(len(s), np.int8)
    sel[np.argsort(-s)[:3]] = 1
    sel[np.argsort(s)[:3]] = -1
    arrays = SlideArrays("s1", coords, np.stack([-s, s], 1), np.stack([-sel, sel], 1).astype(np.int8),
                         ["normal", "tumor"], W0, H0, MPP, float(CELL), float(CELL), probs=np.array([0.2, 0.8]),
                         label="tumor", read_tiles=lambda idx: np.full((len(idx), 64, 64, 3), 200, np.uint8))
    meta = render_slide(heatmaps_dir(job, RUN) / "s1", arrays, 1)
    meta.update(schema="wsi_mil.heatmap/1")
    (heatmaps_dir(job, RUN) / "s1" / "slide.json").write_text(json.dumps(meta))
    files = {f: f"s1/{f}" for f in meta["files"]}
    rows = [ReportRow("s1", "done", "", "tumor", meta["predicted"], meta["probability"], meta["n_tiles"], files),
            ReportRow("s2", "done", "", "normal", "tumor", 0.7, 30), ReportRow("s3", "done", "", "tumor", "normal", 0.3, 30),
            ReportRow("s4", "done", "", "normal", "normal", 0.1, 30), ReportRow("s5", "failed", "patch store not found")]
    run_dir = write_oof_run(root / "models" / RUN)
    summary = cohort_summary(run_dir, ["normal", "tumor"], 1)
    render_report_html(heatmaps_dir(job, RUN), rows, "Heatmaps: r1", summary=summary, viewer_run=RUN)
    return job
