"""``make_cohort``: a folder of synthetic slides with labels and ground truth.

Layout of ``COHORT/``::

    {slide_id}.tiff                 pyramidal JPEG TIFF slides
    labels.csv                      slide_id,label,case_id (label 0/1)
    ground_truth/{slide_id}.*       see wsi_mil.synth.truth
    cohort.json                     schema wsi_mil.synth.cohort/1: parameters and one entry per slide

Every file is written atomically; a slide counts as done when its TIFF and its ground-truth JSON exist and
the JSON records the same parameters, so a killed run is resumed by running it again.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil import __version__
from wsi_mil.atomic import remove_stale_temporaries, write_json_atomic, write_text_atomic
from wsi_mil.errors import ConfigError, StoreError, WsiMilError
from wsi_mil.runrecord import DONE, FAILED, SlideStatus
from wsi_mil.synth.slide import make_slide
from wsi_mil.synth.truth import ground_truth_dir, load_ground_truth, write_ground_truth

COHORT_SCHEMA = "wsi_mil.synth.cohort/1"


def slide_seed(seed: int, index: int) -> int:
    """The seed of slide ``index`` of a cohort drawn with ``seed`` (uint32)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def cohort_labels(n_slides: int, positive_fraction: float, seed: int) -> np.ndarray:
    """(n,) int 0/1: exactly round(n * positive_fraction) positives in a seeded random order."""
    n_pos = int(round(n_slides * positive_fraction))
    labels = np.array([1] * n_pos + [0] * (n_slides - n_pos), dtype=np.int64)
    return np.random.default_rng([int(seed), 1000]).permutation(labels)


def _check(n_slides: int, positive_fraction: float, size: Sequence[int], mpp: float,
           lesion_fraction: Sequence[float] | float, slides_per_case: int,
           workers: int) -> tuple[int, int, tuple[float, float]]:
    if int(n_slides) < 1:
        raise ConfigError(f"slides: need at least 1, got {n_slides}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(f"positive_fraction: must be within 0-1, got {positive_fraction}")
    if len(size) != 2 or min(int(s) for s in size) < 256:
        raise ConfigError(f"size: need width and height of at least 256 px, got {tuple(size)}")
    if not mpp > 0:
        raise ConfigError(f"mpp: must be > 0, got {mpp}")
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    if slides_per_case < 1:
        raise ConfigError(f"slides_per_case: must be >= 1, got {slides_per_case}")
    lf = (float(lesion_fraction),) * 2 if np.isscalar(lesion_fraction) else tuple(float(v) for v in lesion_fraction)
    if len(lf) != 2 or not 0 < lf[0] <= lf[1] < 0.5:
        raise ConfigError(f"lesion_fraction: need 0 < low <= high < 0.5, got {lesion_fraction}")
    return int(size[0]), int(size[1]), (lf[0], lf[1])


def _is_done(cohort: Path, slide_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The ground-truth summary of a complete slide made with ``params``, else None."""
    if not (cohort / f"{slide_id}.tiff").is_file():
        return None
    try:
        meta = load_ground_truth(cohort, slide_id)
    except StoreError:
        return None
    recorded = {k: meta.get("params", {}).get(k) for k in params}
    return meta if recorded == params else None


def _make_one(cohort: Path, slide_id: str, width: int, height: int, mpp: float, seed: int, positive: bool,
              lesion_fraction: tuple[float, float], tile_size: int, jpeg_quality: int,
              level_downsample: int, params: dict[str, Any]) -> dict[str, Any]:
    truth = make_slide(cohort / f"{slide_id}.tiff", width, height, mpp, seed, positive, lesion_fraction,
                       slide_id=slide_id, tile_size=tile_size, jpeg_quality=jpeg_quality,
                       level_downsample=level_downsample, params=params)
    write_ground_truth(ground_truth_dir(cohort), truth)
    return truth.summary()


def synth_slide_task(cohort: str, slide_id: str, *args: Any) -> SlideStatus:
    """One slide as a Dask task (arguments of ``_make_one`` after the slide id): never raises for bad input."""
    t0 = time.perf_counter()
    source = str(Path(cohort) / f"{slide_id}.tiff")
    try:
        _make_one(Path(cohort), slide_id, *args)
    except WsiMilError as exc:
        return SlideStatus(slide_id, source, FAILED, reason=str(exc), seconds=time.perf_counter() - t0)
    return SlideStatus(slide_id, source, DONE, seconds=time.perf_counter() - t0)


def make_cohort(
    out_dir: str | Path,
    n_slides: int,
    positive_fraction: float = 0.5,
    size: Sequence[int] = (4096, 4096),
    mpp: float = 0.5,
    lesion_fraction: Sequence[float] | float = (0.01, 0.05),
    seed: int = 0,
    *,
    tile_size: int = 512,
    jpeg_quality: int = 85,
    level_downsample: int = 2,
    slides_per_case: int = 1,
    prefix: str = "slide",
    overwrite: bool = False,
    progress: bool = False,
    workers: int = 1,
    scheduler: str | None = None,
) -> Path:
    """Write ``n_slides`` slides of ``size`` (W, H) px at ``mpp`` into ``out_dir`` and return it.

    ``round(n_slides * positive_fraction)`` slides are positive; each positive slide's lesions cover a
    share of its tissue drawn from ``lesion_fraction`` (low, high) (or exactly a given float). Slide ids
    are ``{prefix}_{i:03d}``; consecutive groups of ``slides_per_case`` slides share a ``case_id``.
    The same arguments give byte-identical slides and ground truth. Slides already complete with the
    same parameters are kept unless ``overwrite``. ``workers`` > 1 (a local Dask cluster of that many
    processes) or ``scheduler`` (an existing Dask scheduler) generate slides in parallel, one task each.
    """
    width, height, lf = _check(n_slides, positive_fraction, size, mpp, lesion_fraction, slides_per_case, workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gt = ground_truth_dir(out)
    gt.mkdir(exist_ok=True)
    remove_stale_temporaries(out)
    remove_stale_temporaries(gt)
    labels = cohort_labels(int(n_slides), positive_fraction, seed)
    jobs = []
    for i in range(int(n_slides)):
        sid = f"{prefix}_{i:03d}"
        params = {"cohort_seed": int(seed), "index": i, "size": [width, height], "mpp": float(mpp),
                  "lesion_fraction_range": list(lf), "label": int(labels[i]), "tile_size": tile_size,
                  "jpeg_quality": jpeg_quality, "level_downsample": level_downsample,
                  "generator": __version__}
        done = None if overwrite else _is_done(out, sid, params)
        if progress and done is not None:
            print(f"kept {sid}.tiff (complete)", file=sys.stderr)
        if done is None:
            jobs.append((sid, (width, height, float(mpp), slide_seed(seed, i), bool(labels[i]), lf, tile_size,
                               jpeg_quality, level_downsample, params)))
    if scheduler or workers > 1:
        _run_parallel(out, jobs, workers, scheduler, progress)
    else:
        for sid, args in jobs:
            t0 = time.perf_counter()
            meta = _make_one(out, sid, *args)
            if progress:
                print(f"wrote {sid}.tiff label={meta['label']} lesion_fraction={meta['lesion_fraction']:.4f} "
                      f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    entries = []
    for i in range(int(n_slides)):
        sid = f"{prefix}_{i:03d}"
        meta = load_ground_truth(out, sid)
        entries.append({"slide_id": sid, "file": f"{sid}.tiff", "label": int(labels[i]),
                        "case_id": f"case_{i // slides_per_case:03d}", "seed": slide_seed(seed, i),
                        "n_lesions": meta["n_lesions"], "lesion_fraction": meta["lesion_fraction"]})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["slide_id", "label", "case_id"])
    for e in entries:
        writer.writerow([e["slide_id"], e["label"], e["case_id"]])
    write_text_atomic(out / "labels.csv", buf.getvalue())
    write_json_atomic(out / "cohort.json", {
        "schema": COHORT_SCHEMA, "wsi_mil_version": __version__,
        "params": {"n_slides": int(n_slides), "positive_fraction": positive_fraction, "size": [width, height],
                   "mpp": float(mpp), "lesion_fraction": list(lf), "seed": int(seed), "tile_size": tile_size,
                   "jpeg_quality": jpeg_quality, "level_downsample": level_downsample,
                   "slides_per_case": slides_per_case, "prefix": prefix},
        "slides": entries,
    })
    return out


def _run_parallel(out: Path, jobs: list[tuple[str, tuple]], workers: int, scheduler: str | None,
                  progress: bool) -> None:
    """Generate slides as Dask tasks; raise the first failure (as the serial path would) once all ended."""
    from wsi_mil.parallel import dask_client, run_slide_tasks

    if not jobs:
        return
    items = [(sid, str(out / f"{sid}.tiff"), (str(out), sid, *args)) for sid, args in jobs]
    with dask_client(scheduler, workers) as client:
        statuses = run_slide_tasks(client, synth_slide_task, items, lambda status: None, "synth", progress)
    failed = sorted((s for s in statuses if s.status == FAILED), key=lambda s: s.slide_id)
    if failed:
        raise WsiMilError(f"{len(failed)} of {len(jobs)} slides failed; first: {failed[0].slide_id}: "
                          f"{failed[0].reason}")


def read_cohort_manifest(cohort_dir: str | Path) -> dict[str, Any]:
    """``cohort.json`` of a cohort folder, validated (:class:`StoreError` naming the file otherwise)."""
    path = Path(cohort_dir) / "cohort.json"
    if not path.is_file():
        raise StoreError(f"{path}: not found; write the cohort with `wsi-mil synth -o {cohort_dir} ...`")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable ({exc}); regenerate the cohort") from exc
    if not isinstance(doc, dict) or doc.get("schema") != COHORT_SCHEMA or "slides" not in doc:
        raise StoreError(f"{path}: not a {COHORT_SCHEMA} manifest; regenerate the cohort")
    return doc
