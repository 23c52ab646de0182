"""The heatmap stage: a MIL run + a job folder -> per-slide pictures and a cohort page.

For each slide: read the feature file (``JOB/features/{encoder_id}/{slide_id}.h5``), score it
with the run (:func:`wsi_mil.mil.load_model_run` -> ``predict_bag``), read coordinates, tissue
mask and tiles from the patch store (``JOB/patches/{slide_id}.zarr``) and a thumbnail from the
original slide (``slide_path`` in the store's attributes), then write
``OUT/{slide_id}/`` = overlay.png, tiles.geojson, overlay.ome.tif, top_tiles.png, scores.csv and
``slide.json`` (what was shown). The slide folder is written to a temporary sibling and renamed
into place when complete. Finally ``OUT/index.html`` lists every slide.

Per-slide status goes to ``OUT/status.csv`` (a :class:`~wsi_mil.runrecord.RunRecord`): the
heatmaps of one run live with their status, and two runs rendered from the same job do not
overwrite each other's record. A slide that fails (no feature file, no store, features from
another encoder, coordinates that disagree) is recorded with its reason, shown on the cohort
page, and the other slides are still rendered. A slide whose slide file cannot be read is drawn
without thumbnail, with a note. A slide with no tissue is drawn (empty outputs) with a note.
"""

from __future__ import annotations

import csv
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil import __version__
from wsi_mil.atomic import atomic_path, remove_stale_temporaries, write_json_atomic
from wsi_mil.config import config_to_dict
from wsi_mil.errors import ConfigError, LabelsError, StoreError, WsiMilError
from wsi_mil.heatmaps.config import HeatmapConfig, check_cmap
from wsi_mil.heatmaps.render import OUTPUTS, SlideArrays, choose_class, render_slide
from wsi_mil.heatmaps.report import ReportRow, render_report_html
from wsi_mil.heatmaps.scoremap import stride_level0
from wsi_mil.heatmaps.summary import cohort_summary
from wsi_mil.jobdir import HEATMAPS, feature_file_path, features_dir, heatmaps_dir, patch_store_path, patches_dir
from wsi_mil.mil import load_model_run
from wsi_mil.mil.labels import read_label_csv
from wsi_mil.outputs import HEATMAP_SLIDE, OutputError, check_replaceable, check_writable, is_job_folder
from wsi_mil.parallel import map_slides
from wsi_mil.runrecord import DONE, FAILED, SKIPPED, RunRecord, SlideStatus, StageReport, guard_slide
from wsi_mil.slide import open_slide
from wsi_mil.stores.common import file_fingerprint, slide_id_of
from wsi_mil.stores.features import read_feature_file
from wsi_mil.stores.patches import open_patch_store

HEATMAP_SCHEMA = "wsi_mil.heatmap/1"
SLIDE_JSON = "slide.json"
STATUS_CSV = "status.csv"
INDEX_HTML = "index.html"


@functools.lru_cache(maxsize=4)
def _load_run(run_dir: str) -> Any:
    """The MIL run (cached per process: Dask workers load it once)."""

    return load_model_run(run_dir)


def read_run_labels(run_dir: str | Path) -> dict[str, str]:
    """slide id -> label recorded by the run (``RUN/predictions.csv`` with a ``label`` column)."""
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "slide_id" not in reader.fieldnames or "label" not in reader.fieldnames:
            return {}
        return {r["slide_id"]: r["label"] for r in reader if r.get("slide_id") and r.get("label") not in (None, "")}


def read_display_labels(path: str | Path) -> dict[str, str]:
    """slide id -> label from a labels CSV (``slide_id,label``, other columns ignored).

    Lenient on purpose: labels are only shown, so a file of one class or a subset of the
    cohort is fine; a missing column, an empty cell or a duplicate slide id is an error.
    """

    path = Path(path)
    header, rows = read_label_csv(path)
    if "slide_id" not in header or "label" not in header:
        raise LabelsError(f"{path}: needs the columns slide_id and label (header: {','.join(header)})")
    out: dict[str, str] = {}
    for rec, line in rows:
        sid, label = rec.get("slide_id", ""), rec.get("label", "")
        if not sid or not label:
            raise LabelsError(f"{path}: line {line}: empty slide_id or label; fill it in or remove the row")
        if sid in out:
            raise LabelsError(f"{path}: line {line}: duplicate slide_id '{sid}'; keep one row per slide")
        out[sid] = label
    return out


def read_thumbnail(slide_path: str | Path, mpp: float | None, max_px: int) -> np.ndarray:
    """The whole slide as (h, w, 3) uint8 RGB, longer side about ``max_px``.

    Reads through :func:`wsi_mil.slide.open_slide` at the matching scale: a pyramid's coarse
    level makes this cheap; memory is one strip of the level read plus the thumbnail.
    """

    with open_slide(slide_path, mpp=mpp) as slide:
        w0, h0 = slide.dimensions
        target_mpp = slide.mpp * max(w0, h0) / float(max_px)
        thumb, _ = slide.read_at_mpp(max(target_mpp, slide.mpp))
    return thumb


def _inputs_key(run: Any, run_key: str, job: Path, slide_id: str) -> dict:
    """What a slide's heatmaps depend on: the run (path, weights) and the feature file's content."""
    weights = Path(run_key) / str(getattr(run, "config", {}).get("weights_file", "model.safetensors"))
    fpath = feature_file_path(job, run.encoder_id, slide_id)
    return {
        "run": run_key,
        "weights": file_fingerprint(weights) if weights.is_file() else None,
        "features": file_fingerprint(fpath) if fpath.is_file() else None,
    }


def _manifest_ok(folder: Path, inputs: dict, cfg_key: dict) -> bool:
    """True when ``folder`` holds complete heatmaps made from the same inputs and options."""
    try:
        m = json.loads((folder / SLIDE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (m.get("schema") == HEATMAP_SCHEMA and m.get("inputs") == inputs and m.get("config") == cfg_key
            and all((folder / f).is_file() for f in OUTPUTS))


def _slide_arrays(slide_id: str, run: Any, job: Path, cfg: HeatmapConfig, label: str | None) -> SlideArrays:
    """Everything one slide needs, read from the job folder and scored with the run."""

    store = open_patch_store(patch_store_path(job, slide_id))
    fpath = feature_file_path(job, run.encoder_id, slide_id)
    if not fpath.is_file():
        raise StoreError(f"{fpath}: no feature file for slide '{slide_id}' from encoder '{run.encoder_id}'; "
                         "run 'wsi-mil extract' with the run's encoder")

    ff = read_feature_file(fpath, run.encoder_id, getattr(run, "embed_dim", None))  # float32, converted by HDF5
    features, fcoords = ff.features, ff.coords
    del ff
    if fcoords.shape != store.coords.shape or not np.array_equal(fcoords, store.coords):
        raise StoreError(f"{fpath}: its tile coordinates differ from the patch store {store.path}; the features "
                         "come from another tiling: re-run 'wsi-mil extract --overwrite'")
    attrs = store.attrs
    missing = [k for k in ("level0_width", "level0_height", "mpp", "tile_size_level0") if not attrs.get(k)]
    if missing:
        raise StoreError(f"{store.path}: patch store lacks attribute(s) {', '.join(missing)}; re-run 'wsi-mil tile'")
    n = store.n_tiles
    c = len(run.class_names)
    if n:
        pred = run.predict_bag(features, overwrite_input=True)  # features are not used afterwards
        probs = np.asarray(pred.probs, dtype=np.float64)
        scores = np.asarray(pred.tile_scores, dtype=np.float32).reshape(n, c)
        selected = np.asarray(pred.selected).astype(np.int8).reshape(n, c)
    else:
        probs = None
        scores = np.zeros((0, c), np.float32)
        selected = np.zeros((0, c), np.int8)
    del features  # the largest array of the slide: gone before drawing starts
    mask, mask_ds = store.tissue_mask()
    notes: list[str] = []
    thumb = None
    slide_path = attrs.get("slide_path")
    try:
        if not slide_path:
            raise WsiMilError(f"{store.path}: no slide_path attribute")
        thumb = read_thumbnail(slide_path, float(attrs["mpp"]), cfg.thumbnail_px)
    except WsiMilError as exc:
        notes.append(f"slide thumbnail unavailable ({exc}); drawn over the tissue outline only")
    return SlideArrays(
        slide_id=slide_id, coords=store.coords, tile_scores=scores, selected=selected,
        class_names=list(run.class_names), width0=int(attrs["level0_width"]), height0=int(attrs["level0_height"]),
        mpp=float(attrs["mpp"]), tile_size_level0=float(attrs["tile_size_level0"]), step_level0=stride_level0(attrs),
        thumbnail=thumb, tissue_mask=mask, mask_downsample=mask_ds, probs=probs, label=label,
        read_tiles=store.read_tile_indices, notes=notes,
    )


def heatmap_one_slide(slide_id: str, run_dir: str, job: str, out_dir: str, cfg: HeatmapConfig,
                      label: str | None = None, overwrite: bool = False) -> SlideStatus:
    """Render ``OUT/{slide_id}/``; never raises for bad input (returns a failed status)."""
    t0 = time.perf_counter()
    folder = Path(out_dir) / slide_id
    source = str(patch_store_path(job, slide_id))
    cfg_key = config_to_dict(cfg)

    def work() -> SlideStatus:
        run_key = str(Path(run_dir).resolve())
        run = _load_run(run_key)
        inputs = _inputs_key(run, run_key, Path(job), slide_id)
        if not overwrite and _manifest_ok(folder, inputs, cfg_key):
            n = int(json.loads((folder / SLIDE_JSON).read_text(encoding="utf-8")).get("n_tiles", 0))
            return SlideStatus(slide_id, source, SKIPPED, "complete heatmaps exist", n, time.perf_counter() - t0)
        check_replaceable(folder, HEATMAP_SLIDE)  # only a heatmap folder is ever replaced at OUT/{slide_id}
        arrays = _slide_arrays(slide_id, run, Path(job), cfg, label)
        cls = choose_class(run.class_names, cfg.class_name, arrays.probs)
        with atomic_path(folder) as tmp:
            summary = render_slide(tmp, arrays, cls, cfg.render_options())
            summary.update(schema=HEATMAP_SCHEMA, wsi_mil_version=__version__, run=run_key,
                           encoder_id=run.encoder_id, job=str(Path(job).resolve()), inputs=inputs,
                           config=cfg_key)
            write_json_atomic(Path(tmp) / SLIDE_JSON, summary)
        note = "; ".join(summary["notes"])
        return SlideStatus(slide_id, source, DONE, note, summary["n_tiles"], time.perf_counter() - t0)

    return guard_slide(slide_id, source, "drawing heatmaps", work, where=slide_id)


def discover_slides(job: Path, encoder_id: str) -> list[str]:
    """Slides to draw by default: every patch store or feature file (of the run's encoder) of the job.

    The run's own predictions are not a source: a run applied to a new job must not try (and
    report as failed) the slides it was trained on.
    """
    ids: set[str] = set()
    pdir = patches_dir(job)
    if pdir.is_dir():
        ids.update(slide_id_of(p) for p in pdir.glob("*.zarr") if not p.name.startswith("."))
    fdir = features_dir(job, encoder_id)
    if fdir.is_dir():
        ids.update(slide_id_of(p) for p in fdir.glob("*.h5") if not p.name.startswith("."))
    return sorted(ids)


@dataclass
class HeatmapReport(StageReport):
    """What the stage did: every slide's status (slide-id order), the record and the cohort page."""

    index_path: Path = Path()


def _report_row(out_dir: Path, st: SlideStatus, label: str | None) -> ReportRow:
    folder = out_dir / st.slide_id
    if st.status != FAILED and (folder / SLIDE_JSON).is_file():
        m = json.loads((folder / SLIDE_JSON).read_text(encoding="utf-8"))
        files = {f: f"{st.slide_id}/{f}" for f in OUTPUTS if (folder / f).is_file()}
        return ReportRow(st.slide_id, st.status, "; ".join(m.get("notes") or []) or st.reason,
                         m.get("label") if m.get("label") is not None else label,
                         m.get("predicted"), m.get("probability"), m.get("n_tiles"), files)
    return ReportRow(st.slide_id, st.status, st.reason, label, None, None, None, {})


def run_heatmap(
    run_dir: str | Path,
    job: str | Path,
    out_dir: str | Path,
    cfg: HeatmapConfig | None = None,
    slides: list[str] | None = None,
    labels_csv: str | Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> HeatmapReport:
    """Draw the heatmaps of ``slides`` (default: every slide of the job) and the cohort page.

    ``workers=0`` draws in this process (no Dask); otherwise one Dask task per slide on a local
    cluster of ``workers`` processes (default: one per core), or on the cluster at ``scheduler``.
    """
    cfg = cfg or HeatmapConfig()
    check_cmap(cfg.cmap)
    run_dir, job, out_dir = Path(run_dir), Path(job), Path(out_dir)
    if not job.is_dir():
        raise StoreError(f"{job}: job folder not found")
    if is_job_folder(out_dir):
        raise OutputError(f"{out_dir}: is a job folder; heatmaps go to a folder of their own, e.g. "
                          f"{heatmaps_dir(job, run_dir.name)}")
    check_writable(out_dir, folder=True)  # before any slide is drawn
    run = _load_run(str(run_dir.resolve()))
    if cfg.class_name is not None and cfg.class_name not in list(run.class_names):
        raise ConfigError(f"--class {cfg.class_name!r} is not a class of run {run_dir}; choose one of "
                          f"{', '.join(run.class_names)}")
    labels = read_run_labels(run_dir)
    if labels_csv is not None:
        labels.update(read_display_labels(labels_csv))
    ids = list(dict.fromkeys(slides)) if slides else discover_slides(job, run.encoder_id)
    if not ids:
        raise StoreError(f"{job}: no slides found (no patch stores or '{run.encoder_id}' feature files); run "
                         "'wsi-mil tile' and 'wsi-mil extract' first")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    record = RunRecord(out_dir / STATUS_CSV)
    items = [(s, str(patch_store_path(job, s)),
              (s, str(run_dir.resolve()), str(job.resolve()), str(out_dir.resolve()), cfg, labels.get(s), overwrite))
             for s in ids]

    statuses = map_slides(heatmap_one_slide, items, record.record, "heatmap", scheduler, workers, progress)
    # the page lists every slide recorded in OUT_DIR (earlier runs with --slides included)
    listed = sorted(record.rows.values(), key=lambda s: s.slide_id)
    rows = [_report_row(out_dir, st, labels.get(st.slide_id)) for st in listed]
    n_failed = sum(st.status == FAILED for st in listed)
    shown = cfg.class_name or (run.class_names[1] if len(run.class_names) == 2 else "predicted class of each slide")
    meta = (f"run {run_dir.resolve()} · encoder {run.encoder_id} · classes {', '.join(run.class_names)} · "
            f"scores shown: {shown} · {len(listed)} slides, {n_failed} failed · "
            f"{time.strftime('%Y-%m-%d %H:%M')} · wsi_mil {__version__}")
    shown_index = list(run.class_names).index(cfg.class_name) if cfg.class_name else 1
    summary = cohort_summary(run_dir, list(run.class_names), shown_index, labels_csv)
    # a page at JOB/heatmaps/{run}/ is served by 'wsi-mil view JOB': link each slide to the viewer
    viewer_run = out_dir.name if out_dir.resolve().parent == (job / HEATMAPS).resolve() else None
    figures = [f for f in ("km_curves.png", "predicted_vs_true.png") if (run_dir / f).is_file()]  # task runs
    for f in figures:
        with atomic_path(out_dir / f) as tmp_png:
            tmp_png.write_bytes((run_dir / f).read_bytes())
    index = render_report_html(out_dir, rows, f"Heatmaps: {run_dir.name}", meta, embed=cfg.embed_images,
                               summary=summary, viewer_run=viewer_run, figures=figures)
    return HeatmapReport(statuses, record.path, index_path=index)
