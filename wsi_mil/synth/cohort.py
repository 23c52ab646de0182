"""``make_cohort``: a folder of synthetic slides with labels and ground truth.

Layout of ``COHORT/``::

    {slide_id}.tiff                 pyramidal JPEG TIFF slides
    labels.csv                      slide_id,label,case_id (label 0/1), plus site with several sites
    ground_truth/{slide_id}.*       see wsi_mil.synth.truth
    cohort.json                     schema wsi_mil.synth.cohort/1: parameters and one entry per slide

Every file is written atomically; a slide counts as done when its TIFF and its ground-truth JSON exist and
the JSON records the same parameters, so a killed run is resumed by running it again. Slides are made
one task each through :func:`wsi_mil.parallel.map_slides` (``workers=0``: in this process).

With ``sites`` > 1 the slides come from simulated hospitals (:mod:`wsi_mil.synth.site`): cases are dealt to
the sites in turn (case ``c`` to site ``c % sites``), each site has its own positive share, and every slide
of a site is stained, blurred, colour-mapped and JPEG-compressed as that site does it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from wsi_mil import __version__
from wsi_mil.atomic import remove_stale_temporaries, write_json_atomic, write_text_atomic
from wsi_mil.errors import ConfigError, StoreError, WsiMilError
from wsi_mil.outputs import SYNTH_SLIDE, OutputError, check_replaceable, check_writable, is_job_folder
from wsi_mil.parallel import map_slides
from wsi_mil.runrecord import DONE, FAILED, SlideStatus
from wsi_mil.synth.site import SiteEffect
from wsi_mil.synth.slide import make_slide
from wsi_mil.synth.truth import ground_truth_dir, load_ground_truth, write_ground_truth

COHORT_SCHEMA = "wsi_mil.synth.cohort/1"


def slide_seed(seed: int, index: int) -> int:
    """The seed of slide ``index`` of a cohort drawn with ``seed`` (uint32)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def cohort_labels(n_slides: int, positive_fraction: float, seed: int) -> NDArray[np.int64]:
    """(n,) int 0/1: exactly round(n * positive_fraction) positives in a seeded random order."""
    n_pos = int(round(n_slides * positive_fraction))
    labels = np.array([1] * n_pos + [0] * (n_slides - n_pos), dtype=np.int64)
    return np.random.default_rng([int(seed), 1000]).permutation(labels)


def site_labels(sites: NDArray[np.int64], prevalence: Sequence[float], seed: int) -> NDArray[np.int64]:
    """(n,) int 0/1 for slides of sites ``sites`` (n,): in site k exactly round(n_k * prevalence[k])
    positives, in a seeded random order per site."""
    labels = np.zeros(len(sites), np.int64)
    for k, p in enumerate(prevalence):
        idx = np.flatnonzero(sites == k)
        n_pos = int(round(len(idx) * p))
        site = np.array([1] * n_pos + [0] * (len(idx) - n_pos), dtype=np.int64)
        labels[idx] = np.random.default_rng([int(seed), 1000, k]).permutation(site)
    return labels


@dataclass(frozen=True)
class _CohortSpec:
    """The validated parameters of one cohort: sizes in level-0 px, ``mpp`` in µm/px,
    ``lesion_fraction`` the (low, high) share of tissue on positive slides."""

    n_slides: int
    positive_fraction: float
    width: int
    height: int
    mpp: float
    lesion_fraction: tuple[float, float]
    seed: int
    tile_size: int
    jpeg_quality: int
    level_downsample: int
    slides_per_case: int
    prefix: str
    sites: int = 1
    site_prevalence: tuple[float, ...] | None = None
    stain_shift: float = 1.0

    def slide_id(self, i: int) -> str:
        return f"{self.prefix}_{i:03d}"

    def site_of(self) -> NDArray[np.int64]:
        """(n_slides,) site index of each slide: case c (consecutive slides_per_case slides) is at site
        c % sites."""
        return (np.arange(self.n_slides) // self.slides_per_case) % self.sites

    def site_effects(self) -> list[SiteEffect]:
        """The sites' staining and scanning (only used when sites > 1)."""
        return SiteEffect.draw_all(self.seed, self.sites, self.stain_shift, self.jpeg_quality)

    def labels(self) -> NDArray[np.int64]:
        """(n_slides,) 0/1 labels: the single-site draw, or per site with its prevalence."""
        if self.sites == 1:
            return cohort_labels(self.n_slides, self.positive_fraction, self.seed)
        prevalence = self.site_prevalence or (self.positive_fraction,) * self.sites
        return site_labels(self.site_of(), prevalence, self.seed)

    def slide_params(self, i: int, label: int, site: SiteEffect | None = None) -> dict[str, Any]:
        """What slide ``i``'s ground truth records (a slide with other parameters is made again)."""
        params = {"cohort_seed": self.seed, "index": i, "size": [self.width, self.height], "mpp": self.mpp,
                  "lesion_fraction_range": list(self.lesion_fraction), "label": int(label),
                  "tile_size": self.tile_size, "jpeg_quality": self.jpeg_quality,
                  "level_downsample": self.level_downsample, "generator": __version__}
        if site is not None:
            params.update(jpeg_quality=site.jpeg_quality, site=site.name, site_effect=site.to_json())
        return params

    def manifest_params(self) -> dict[str, Any]:
        """The ``params`` of cohort.json."""
        params = {"n_slides": self.n_slides, "positive_fraction": self.positive_fraction,
                  "size": [self.width, self.height], "mpp": self.mpp, "lesion_fraction": list(self.lesion_fraction),
                  "seed": self.seed, "tile_size": self.tile_size, "jpeg_quality": self.jpeg_quality,
                  "level_downsample": self.level_downsample, "slides_per_case": self.slides_per_case,
                  "prefix": self.prefix}
        if self.sites > 1:
            params.update(sites=self.sites, stain_shift=self.stain_shift,
                          site_prevalence=list(self.site_prevalence) if self.site_prevalence else None)
        return params


def _check(n_slides: int, positive_fraction: float, size: Sequence[int], mpp: float,
           lesion_fraction: Sequence[float] | float, seed: int, tile_size: int, jpeg_quality: int,
           level_downsample: int, slides_per_case: int, prefix: str, workers: int | None, sites: int = 1,
           site_prevalence: Sequence[float] | None = None, stain_shift: float = 1.0) -> _CohortSpec:
    if int(n_slides) < 1:
        raise ConfigError(f"slides: need at least 1, got {n_slides}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ConfigError(f"positive_fraction: must be within 0-1, got {positive_fraction}")
    if len(size) != 2 or min(int(s) for s in size) < 256:
        raise ConfigError(f"size: need width and height of at least 256 px, got {tuple(size)}")
    if not mpp > 0:
        raise ConfigError(f"mpp: must be > 0, got {mpp}")
    if workers is not None and workers < 0:
        raise ConfigError(f"workers: must be >= 0 (0: in this process), got {workers}")
    if slides_per_case < 1:
        raise ConfigError(f"slides_per_case: must be >= 1, got {slides_per_case}")
    lf: tuple[float, ...]
    if np.isscalar(lesion_fraction):
        lf = (float(cast(float, lesion_fraction)),) * 2
    else:
        lf = tuple(float(v) for v in cast(Sequence[float], lesion_fraction))
    if len(lf) != 2 or not 0 < lf[0] <= lf[1] < 0.5:
        raise ConfigError(f"lesion_fraction: need 0 < low <= high < 0.5, got {lesion_fraction}")
    prevalence = _check_sites(int(n_slides), sites, site_prevalence, stain_shift, slides_per_case)
    return _CohortSpec(int(n_slides), positive_fraction, int(size[0]), int(size[1]), float(mpp), (lf[0], lf[1]),
                       int(seed), tile_size, jpeg_quality, level_downsample, slides_per_case, prefix,
                       int(sites), prevalence, float(stain_shift))


def _check_sites(n_slides: int, sites: int, site_prevalence: Sequence[float] | None, stain_shift: float,
                 slides_per_case: int) -> tuple[float, ...] | None:
    """Validate the site options; returns the per-site prevalence (None: the global positive fraction)."""
    if int(sites) != sites or sites < 1:
        raise ConfigError(f"sites: need a whole number >= 1 (1: one site, no site effects), got {sites}")
    n_cases = -(-n_slides // slides_per_case)
    if sites > n_cases:
        raise ConfigError(f"sites: {sites} sites need at least {sites} cases (one each), got {n_cases}; "
                          "ask for more slides or fewer sites")
    if not (math.isfinite(stain_shift) and stain_shift >= 0):
        raise ConfigError(f"stain_shift: must be a finite number >= 0 (0: sites differ only in prevalence), "
                          f"got {stain_shift}")
    if site_prevalence is None:
        return None
    if sites == 1:
        raise ConfigError("site_prevalence: only with several sites; for one site use positive_fraction")
    prev = tuple(float(p) for p in site_prevalence)
    if len(prev) != sites:
        raise ConfigError(f"site_prevalence: need one positive share per site ({sites}), got {len(prev)} "
                          f"({', '.join(f'{p:g}' for p in prev)})")
    bad = [p for p in prev if not 0.0 <= p <= 1.0]
    if bad:
        raise ConfigError(f"site_prevalence: every share must be within 0-1, got {bad[0]:g}")
    return prev


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
              level_downsample: int, params: dict[str, Any], site: SiteEffect | None = None) -> dict[str, Any]:
    truth = make_slide(cohort / f"{slide_id}.tiff", width, height, mpp, seed, positive, lesion_fraction,
                       slide_id=slide_id, tile_size=tile_size, jpeg_quality=jpeg_quality,
                       level_downsample=level_downsample, params=params, site=site)
    write_ground_truth(ground_truth_dir(cohort), truth)
    return truth.summary()


def _synth_slide(cohort: str, slide_id: str, *args: Any) -> SlideStatus:
    """One slide (arguments of ``_make_one`` after the slide id); errors propagate (the serial path)."""
    t0 = time.perf_counter()
    _make_one(Path(cohort), slide_id, *args)
    return SlideStatus(slide_id, str(Path(cohort) / f"{slide_id}.tiff"), DONE, seconds=time.perf_counter() - t0)


def synth_slide_task(cohort: str, slide_id: str, *args: Any) -> SlideStatus:
    """One slide as a Dask task (arguments of ``_make_one`` after the slide id): never raises for bad input."""
    t0 = time.perf_counter()
    try:
        return _synth_slide(cohort, slide_id, *args)
    except WsiMilError as exc:
        return SlideStatus(slide_id, str(Path(cohort) / f"{slide_id}.tiff"), FAILED, reason=str(exc),
                           seconds=time.perf_counter() - t0)


def _pending_slides(out: Path, spec: _CohortSpec, labels: NDArray[np.int64], overwrite: bool,
                    progress: bool) -> list[tuple[str, str, tuple[Any, ...]]]:
    """``map_slides`` items of the slides still to make: (slide_id, source, task arguments)."""
    items = []
    effects = spec.site_effects() if spec.sites > 1 else None
    site_of = spec.site_of()
    for i in range(spec.n_slides):
        sid = spec.slide_id(i)
        site = effects[int(site_of[i])] if effects else None
        params = spec.slide_params(i, int(labels[i]), site)
        if not overwrite and _is_done(out, sid, params) is not None:
            if progress:
                print(f"kept {sid}.tiff (complete)", file=sys.stderr)
            continue
        args: tuple[Any, ...] = (str(out), sid, spec.width, spec.height, spec.mpp, slide_seed(spec.seed, i),
                                 bool(labels[i]), spec.lesion_fraction, spec.tile_size, params["jpeg_quality"],
                                 spec.level_downsample, params)
        if site is not None:
            args += (site,)
        items.append((sid, str(out / f"{sid}.tiff"), args))
    return items


def _make_slides(out: Path, items: list[tuple[str, str, tuple[Any, ...]]], workers: int | None,
                 scheduler: str | None, progress: bool) -> None:
    """Make the slides of ``items``. In this process (``workers=0``, no scheduler) the first failure
    raises as it happens; on Dask the first failure (by slide id) raises once all tasks ended."""
    if not items:
        return
    if workers == 0 and not scheduler:
        def written(status: SlideStatus) -> None:
            if progress:
                meta = load_ground_truth(out, status.slide_id)
                print(f"wrote {status.slide_id}.tiff label={meta['label']} "
                      f"lesion_fraction={meta['lesion_fraction']:.4f} ({status.seconds:.1f} s)", file=sys.stderr)

        map_slides(_synth_slide, items, written, "synth", workers=0)
        return
    statuses = map_slides(synth_slide_task, items, lambda status: None, "synth", scheduler, workers, progress)
    failed = [s for s in statuses if s.status == FAILED]  # map_slides sorts by slide id
    if failed:
        raise WsiMilError(f"{len(failed)} of {len(items)} slides failed; first: {failed[0].slide_id}: "
                          f"{failed[0].reason}")


def _write_index(out: Path, spec: _CohortSpec, labels: NDArray[np.int64]) -> None:
    """labels.csv and cohort.json, from the ground truth of every slide."""
    entries = []
    several = spec.sites > 1
    site_of = spec.site_of()
    for i in range(spec.n_slides):
        sid = spec.slide_id(i)
        meta = load_ground_truth(out, sid)
        entry = {"slide_id": sid, "file": f"{sid}.tiff", "label": int(labels[i]),
                 "case_id": f"case_{i // spec.slides_per_case:03d}", "seed": slide_seed(spec.seed, i),
                 "n_lesions": meta["n_lesions"], "lesion_fraction": meta["lesion_fraction"]}
        if several:
            entry["site"] = f"site_{int(site_of[i])}"
            entry["slide_stain"] = meta["params"].get("slide_stain")
        entries.append(entry)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["slide_id", "label", "case_id"] + (["site"] if several else []))
    for e in entries:
        writer.writerow([e["slide_id"], e["label"], e["case_id"]] + ([e["site"]] if several else []))
    write_text_atomic(out / "labels.csv", buf.getvalue())
    doc: dict[str, Any] = {"schema": COHORT_SCHEMA, "wsi_mil_version": __version__,
                           "params": spec.manifest_params()}
    if several:
        doc["sites"] = [{**site.to_json(), "n_slides": int((site_of == site.index).sum()),
                         "n_positive": int(labels[site_of == site.index].sum())} for site in spec.site_effects()]
    doc["slides"] = entries
    write_json_atomic(out / "cohort.json", doc)


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
    workers: int | None = 0,
    scheduler: str | None = None,
    sites: int = 1,
    site_prevalence: Sequence[float] | None = None,
    stain_shift: float = 1.0,
) -> Path:
    """Write ``n_slides`` slides of ``size`` (W, H) px at ``mpp`` (µm/px) into ``out_dir`` and return it.

    ``round(n_slides * positive_fraction)`` slides are positive; each positive slide's lesions cover a
    share of its tissue drawn from ``lesion_fraction`` (low, high) (or exactly a given float). Slide ids
    are ``{prefix}_{i:03d}``; consecutive groups of ``slides_per_case`` slides share a ``case_id``.
    The same arguments give byte-identical slides and ground truth. Slides already complete with the
    same parameters are kept unless ``overwrite``. ``workers=0`` (default) makes the slides one after
    another in this process; ``workers`` > 0 (a local Dask cluster of that many processes; None: one
    per core) or ``scheduler`` (an existing Dask scheduler) makes them in parallel, one task each.

    ``sites`` > 1: cases are dealt to that many simulated sites in turn; site k has exactly
    round(n_k * ``site_prevalence[k]``) positives (default: ``positive_fraction`` at every site), and its
    slides are stained and scanned as the site does it, ``stain_shift`` scaling how far sites differ
    (0: not at all; 1: default; 2: strong). labels.csv then has a ``site`` column, and cohort.json and the
    ground truth record each slide's site and the site's parameters. ``sites=1`` is the plain cohort.
    """
    spec = _check(n_slides, positive_fraction, size, mpp, lesion_fraction, seed, tile_size, jpeg_quality,
                  level_downsample, slides_per_case, prefix, workers, sites, site_prevalence, stain_shift)
    out = Path(out_dir)
    if is_job_folder(out):
        raise OutputError(f"{out}: is a job folder; write the cohort to a folder of its own")
    check_writable(out, folder=True)
    out.mkdir(parents=True, exist_ok=True)
    gt = ground_truth_dir(out)
    gt.mkdir(exist_ok=True)
    remove_stale_temporaries(out)
    remove_stale_temporaries(gt)
    labels = spec.labels()
    pending = _pending_slides(out, spec, labels, overwrite, progress)
    for sid, _, _ in pending:  # a file of that name that this tool did not write is never replaced
        check_replaceable(out / f"{sid}.tiff", SYNTH_SLIDE)
    _make_slides(out, pending, workers, scheduler, progress)
    _write_index(out, spec, labels)
    return out


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
