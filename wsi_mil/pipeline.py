"""``run_study``: every stage of a study in order, each skipping what is already done and valid.

Stages (each is the stage's own library function; nothing is re-implemented here)::

    tile      run_tile          JOB/patches/{slide}.zarr            per slide: skips complete stores
    pretrain  run_pretrain         JOB/encoders/simclr-{arch}/         only with encoder.weights: simclr;
                                                                       resumes its checkpoint after a kill
    extract   run_extract     JOB/features/{encoder_id}/{slide}.h5  per slide: skips valid files
    train     run_train          JOB/models/{name}/                  skipped when its inputs are unchanged
    predict   run_predict        JOB/predictions/{name}.csv (+ .tiles/)  idem
    heatmap   run_heatmap         JOB/heatmaps/{name}/ + index.html   per slide: skips complete folders

Resumability: batch stages skip per slide; for the whole-cohort stages (train, predict, heatmap)
the pipeline records a fingerprint of their inputs (config, feature files, labels, model) in
``JOB/status/pipeline.json`` and re-runs a stage only when it changed or its output is missing.
Every output is written atomically by its stage, so a run killed at any point is finished by
running the same command again.

Slides that fail a stage are recorded with their reason and left out of the next ones; the
study goes on with the rest. Labelled slides that have no slide file at all are an error before
any work starts (or a warning with ``train.missing_features: drop``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wsi_mil import __version__
from wsi_mil.atomic import write_json_atomic, write_text_atomic
from wsi_mil.config import config_to_dict
from wsi_mil.encoders import is_encoder_dir, read_encoder_json, resolve_arch
from wsi_mil.errors import ConfigError, EncoderError, LabelsError, StoreError, WsiMilError
from wsi_mil.extract import stage as extract_stage
from wsi_mil.heatmaps import stage as heatmap_stage
from wsi_mil.heatmaps.config import check_cmap
from wsi_mil.jobdir import (
    features_dir,
    patch_store_path,
    patches_dir,
    pipeline_record_path,
    pretrain_checkpoint_path,
    status_path,
)
from wsi_mil.mil import stage as mil_stage
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.labels import LabelTable, describe_classes, read_labels
from wsi_mil.mil.sites import check_cv_plan
from wsi_mil.mil.targets import TargetTable, read_targets
from wsi_mil.outputs import ENCODER_FOLDER, MODEL_RUN, OutputError, check_replaceable, check_writable, output_error
from wsi_mil.parallel import dask_client
from wsi_mil.runrecord import DONE, FAILED, SKIPPED, SlideStatus
from wsi_mil.slide import scan_inputs, scan_slides
from wsi_mil.ssl import stage as ssl_stage
from wsi_mil.ssl.checkpoint import CheckpointError
from wsi_mil.stores.common import file_fingerprint, slide_id_of
from wsi_mil.stores.features import list_feature_files
from wsi_mil.stores.patches import is_complete_patch_store
from wsi_mil.study import StudyConfig, study_to_yaml
from wsi_mil.tiling import reuse
from wsi_mil.tiling import stage as tiling_stage
from wsi_mil.tiling.mpp import mpp_requests

Log = Callable[[str], None]
#: a context-manager factory called around each stage (benchmarks use it to sample memory)
StageMonitor = Callable[[str], contextlib.AbstractContextManager[Any]]

PIPELINE_SCHEMA = "wsi_mil.pipeline/1"
STAGES = ("tile", "pretrain", "extract", "train", "predict", "heatmap")


@dataclass
class StageResult:
    """One stage of one run: ``status`` is done, skipped (nothing to do) or off (not in this study)."""

    name: str
    status: str
    seconds: float = 0.0
    detail: str = ""
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class PipelineReport:
    """What :func:`run_study` did, for the final summary (and ``JOB/status/pipeline.json``)."""

    job: Path
    name: str
    stages: list[StageResult]
    n_slides: int
    failed: dict[str, str]  # slide id -> "stage: reason" of the first stage it failed in
    encoder_id: str | None = None
    run_dir: Path | None = None
    metrics: dict[str, Any] | None = None
    predictions_csv: Path | None = None
    heatmap_dir: Path | None = None
    index_html: Path | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def auc(self) -> float | None:
        """Cross-validated (out-of-fold) slide AUC of the run, if computed."""
        if not self.metrics:
            return None
        return self.metrics.get("out_of_fold", {}).get("metrics", {}).get("auc")

    @property
    def auc_ci(self) -> tuple[float, float] | None:
        ci = ((self.metrics or {}).get("out_of_fold", {}).get("ci") or {}).get("auc")
        return (float(ci[0]), float(ci[1])) if ci else None

    @property
    def exit_code(self) -> int:
        """0: every slide went through; 1: some slides failed (the study still finished)."""
        return 1 if self.failed else 0


#: attribute set on the error that stopped :func:`run_study`: the :class:`PipelineReport` until then
STOPPED_REPORT = "study_report"


def stopped_report(exc: BaseException) -> PipelineReport | None:
    """What ran before ``exc`` stopped the study (failed slides and their reasons included), if it did."""
    report = getattr(exc, STOPPED_REPORT, None)
    return report if isinstance(report, PipelineReport) else None


def _quiet(_: str) -> None:
    return None


def _nullmonitor(_: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PipelineState:
    """``JOB/status/pipeline.json``: per stage, the fingerprint of the inputs it last ran on."""

    def __init__(self, job: Path) -> None:
        self.path = pipeline_record_path(job)
        self.doc: dict[str, Any] = {"schema": PIPELINE_SCHEMA, "stages": {}}
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(doc, dict) and doc.get("schema") == PIPELINE_SCHEMA:
                    self.doc = doc
            except (OSError, ValueError):
                pass  # a damaged state only costs re-running whole-cohort stages

    def fingerprint(self, stage: str) -> tuple[str | None, str | None]:
        """(fingerprint, status) recorded for ``stage``: status ``running`` or ``done``."""
        entry = self.doc["stages"].get(stage) or {}
        return entry.get("fingerprint"), entry.get("status")

    def is_done(self, stage: str, fingerprint: str) -> bool:
        """True if ``stage`` last finished (``done``) with this very ``fingerprint``."""
        return self.fingerprint(stage) == (fingerprint, DONE)

    def mark(self, stage: str, fingerprint: str, status: str, **extra: Any) -> None:
        self.doc["stages"][stage] = {"fingerprint": fingerprint, "status": status,
                                     "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        self.save()

    def save(self, **top: Any) -> None:
        self.doc.update(top)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.doc)


@dataclass
class _Context:
    cfg: StudyConfig
    job: Path
    labels: Path
    slides: list[Path]
    scheduler: str | None
    extract_scheduler: str | None
    workers: int | None
    progress: bool
    log: Log
    state: PipelineState
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    encoder_id: str | None = None
    train_fp: str | None = None
    ok: list[str] = field(default_factory=list)  # slides that went through every stage so far

    def fail(self, stage: str, statuses: list[SlideStatus]) -> None:
        for s in statuses:
            if s.status == FAILED and s.slide_id not in self.failed:
                self.failed[s.slide_id] = f"{stage}: {s.reason}"
        self.ok = sorted(s.slide_id for s in statuses if s.ok and s.slide_id not in self.failed)


def _counts(statuses: list[SlideStatus]) -> dict[str, int]:
    out = {DONE: 0, SKIPPED: 0, FAILED: 0}
    for s in statuses:
        out[s.status] = out.get(s.status, 0) + 1
    return out


def _count_text(c: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in c.items() if n)


# -- preflight: everything that can be checked before hours of work -------------------------------
def preflight(cfg: StudyConfig, slides: list[Path], labels: Path) -> tuple[list[str], list[str]]:
    """Check inputs before any stage runs; returns (slide ids found, warnings).

    Raises :class:`~wsi_mil.errors.WsiMilError` naming the key or file: missing slides or
    labels, a labels CSV that does not parse, labelled slides with no slide file, an encoder
    architecture or weights file that does not exist, an unknown colour map.
    """

    for p in slides:
        if not p.exists():
            raise ConfigError(f"slides: {p} does not exist; point 'slides' at your slide folder")
    if not labels.is_file():
        raise ConfigError(f"labels: {labels} not found; give a CSV with slide_id,label[,case_id][,split]")
    enc = cfg.encoder
    if enc.is_simclr:
        resolve_arch(cfg.pretrain.arch)
    else:
        if enc.arch:
            resolve_arch(enc.arch)
        if enc.is_file_like and not Path(enc.weights).exists():
            raise EncoderError(f"encoder.weights: {enc.weights} not found; give the path of a weights file "
                               "(.safetensors/.pth/.bin) or an encoder folder (in Docker: mount it under /weights)")
    check_cmap(cfg.heatmap.cmap)
    check_outputs(cfg)
    table = _read_study_labels(labels, cfg)
    sources = scan_slides(list(slides))
    if not sources:
        raise ConfigError(f"slides: no slide files found in {', '.join(str(p) for p in slides)}")
    found = [s.slide_id for s in sources]
    warnings = list(table.warnings)
    missing = sorted({r.slide_id for r in table.rows} - set(found))
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        if cfg.train.missing_features == "error":
            raise LabelsError(f"{labels}: {len(missing)} labelled slide(s) have no slide file in "
                              f"{', '.join(str(p) for p in slides)}: {shown}; fix the ids, add the slides, or "
                              "set train.missing_features: drop")
        warnings.append(f"{len(missing)} labelled slide(s) have no slide file and are left out: {shown}")
    unlabelled = len(set(found) - {r.slide_id for r in table.rows})
    if unlabelled:
        warnings.append(f"{unlabelled} slide(s) are not in {labels.name}: tiled, extracted and drawn, not trained on")
    usable = table.subset(set(found))
    _check_study_folds(usable, cfg.train)
    if isinstance(table, LabelTable) and len(table.class_names) > 2 and cfg.train.classes is None:
        warnings.append(f"{labels}: {len(table.class_names)} classes, a multi-class study; "
                        f"{describe_classes([r.label for r in table.rows], table.class_names)} (if you expected two, "
                        "fix the stray labels or set train.classes)")
    return found, warnings


#: how a study's advice names the number of folds (``run`` has no ``--folds`` option)
STUDY_FOLDS_OPTION = "train.folds (--set train.folds=N)"


def _read_study_labels(labels: Path, cfg: StudyConfig) -> LabelTable | TargetTable:
    """The study's labels CSV read as its task needs: classes, or survival / regression targets."""
    if cfg.train.task == "classification":
        return read_labels(labels, cfg.train.classes)
    return read_targets(labels, cfg.train.task)


def _check_study_folds(table: LabelTable | TargetTable, tcfg: TrainConfig) -> None:
    """Enough training cases per class (or with an event, or at all) for the folds of ``tcfg``, or the
    sites of leave-one-site-out; the domains of domain-adversarial training."""
    check_cv_plan(table, tcfg, STUDY_FOLDS_OPTION)


def check_outputs(cfg: StudyConfig) -> None:
    """Refuse, before any work, outputs that cannot be written or must not be replaced.

    The job folder must be a folder that can be written; an existing run, encoder or heatmap
    folder of this study must be of its kind; existing patch stores must have been cut with
    this study's tiling parameters (:func:`check_existing_stores`).
    """
    job = cfg.job.expanduser().resolve()
    if job.exists() and not job.is_dir():
        raise OutputError(f"job: {job} is a file; 'job' must be a folder (choose another path or move the file)")
    check_writable(job, folder=True)
    check_replaceable(cfg.run_dir(job), MODEL_RUN)
    if cfg.encoder.is_simclr:
        check_replaceable(cfg.simclr_dir(job), ENCODER_FOLDER)
    hdir = cfg.heatmap_dir(job)
    if hdir.exists() and not hdir.is_dir():
        raise OutputError(f"{hdir}: is a file, not a heatmap folder; move it away")
    pred = cfg.predictions_csv(job)
    if pred.is_dir():
        raise OutputError(f"{pred}: is a folder, not a predictions CSV; move it away")
    if job.is_dir():
        check_existing_stores(job, cfg)


def check_existing_stores(job: Path, cfg: StudyConfig) -> None:
    """Refuse a job folder whose patch stores were cut with other tiling parameters (the tile
    stage's own check, :func:`wsi_mil.tiling.reuse.check_existing_stores`, with ``run``'s advice).

    Mixing tilings in one job would silently train on stale tiles; the fix is another job
    folder (or deleting ``JOB/patches`` to re-tile).
    """
    sources = scan_inputs([p.expanduser().resolve() for p in cfg.slides]).sources
    requests, _ = mpp_requests([s.slide_id for s in sources], cfg.tiling)
    reuse.check_existing_stores(
        job, sources, cfg.tiling, requests,
        advice=f"use another 'job' folder, set them back, or delete {patches_dir(job)} to tile again", prefix="tiling.")


# -- stages ----------------------------------------------------------------------------------------
def _stage_tile(ctx: _Context) -> StageResult:

    report = tiling_stage.run_tile(ctx.slides, ctx.job, ctx.cfg.tiling, scheduler=ctx.scheduler, workers=ctx.workers,
                         progress=ctx.progress)
    ctx.fail("tile", report.statuses)
    for line in report.notes():  # zero-tile warnings with their likely reason, skipped input entries
        ctx.log(line)
    c = _counts(report.statuses)
    tiles = sum(s.n_tiles for s in report.statuses if s.ok)
    return StageResult("tile", DONE if c[DONE] or c[FAILED] else SKIPPED,
                       detail=f"{len(report.statuses)} slides ({_count_text(c)}); {tiles} tiles", counts=c)


def _encoder_matches(out_dir: Path, cfg: StudyConfig, job: Path) -> bool:
    """True if ``out_dir`` holds the encoder SimCLR would train now (same config, same stores)."""

    if not is_encoder_dir(out_dir):
        return False
    meta = read_encoder_json(out_dir)
    _, paths, _ = ssl_stage.open_job_stores(job)
    return ((meta.get("training") or {}).get("config") == config_to_dict(cfg.pretrain)
            and meta.get("patch_stores") == [str(p) for p in paths])


def _stage_pretrain(ctx: _Context) -> StageResult:

    out = ctx.cfg.simclr_dir(ctx.job)
    if _encoder_matches(out, ctx.cfg, ctx.job):
        return StageResult("pretrain", SKIPPED, detail=f"encoder {out} is up to date")
    overwrite = out.exists()
    resume = pretrain_checkpoint_path(ctx.job, out).is_file()

    def show(ev: Any) -> None:
        if ev.kind == "epoch":
            ctx.log(f"  pretrain epoch {ev.epoch}/{ev.epochs}: mean loss {ev.loss:.4f}")

    try:
        summary = ssl_stage.run_pretrain(ctx.job, out, ctx.cfg.pretrain, resume=resume, device=ctx.cfg.device,
                               overwrite=overwrite, progress=show if ctx.progress else None)
    except CheckpointError as exc:
        ctx.log(f"  pretrain: the checkpoint cannot be resumed ({exc}); starting over")
        summary = ssl_stage.run_pretrain(ctx.job, out, ctx.cfg.pretrain, resume=False, device=ctx.cfg.device,
                               overwrite=overwrite, progress=show if ctx.progress else None)
    ctx.warnings += [n for n in summary.notes if not n.startswith("starting over:")]  # pipeline resumes itself
    where = f"resumed at step {summary.resumed_from}, " if summary.resumed_from else ""
    loss = f"; last loss {summary.epoch_losses[-1]:.3f}" if summary.epoch_losses else ""
    return StageResult("pretrain", DONE, detail=f"{summary.arch} on {summary.n_tiles} tiles, {where}"
                       f"{summary.global_step} steps{loss}; encoder {out}")


def _encoder_args(ctx: _Context) -> tuple[str | None, str]:
    enc = ctx.cfg.encoder
    if enc.is_simclr:
        return None, str(ctx.cfg.simclr_dir(ctx.job))
    return enc.arch, enc.weights


def _stage_extract(ctx: _Context) -> StageResult:

    arch, weights = _encoder_args(ctx)
    report = extract_stage.run_extract(ctx.job, arch, weights, ctx.cfg.extract_config(), scheduler=ctx.extract_scheduler,
                              slides=ctx.ok, progress=ctx.progress)
    ctx.encoder_id = report.encoder_id
    ctx.fail("extract", report.statuses)
    c = _counts(report.statuses)
    return StageResult("extract", DONE if c[DONE] or c[FAILED] else SKIPPED,
                       detail=f"{len(report.statuses)} slides ({_count_text(c)}); encoder {report.encoder_id}",
                       counts=c)


def _features_fingerprint(folder: Path, slides: set[str]) -> list[tuple[str, str]]:
    """(slide id, content fingerprint) of the feature files of ``slides`` in ``folder``."""

    return [(slide_id_of(p), file_fingerprint(p)) for p in list_feature_files(folder) if slide_id_of(p) in slides]


def _stage_train(ctx: _Context) -> StageResult:

    tcfg = ctx.cfg.train_config()
    fdir = features_dir(ctx.job, ctx.encoder_id or "")
    lost = set(ctx.failed)
    if lost and tcfg.missing_features == "error":
        # slides that failed an earlier stage are reported there; train on the others
        tcfg = tcfg.model_copy(update={"missing_features": "drop"})
    run_dir = ctx.cfg.run_dir(ctx.job)
    fp = _digest({"train": config_to_dict(tcfg), "encoder": ctx.encoder_id,
                  "labels": file_fingerprint(ctx.labels, full=True),
                  "features": _features_fingerprint(fdir, set(ctx.ok))})
    ctx.train_fp = fp
    if ctx.state.is_done("train", fp) and (run_dir / "metrics.json").is_file():
        return StageResult("train", SKIPPED, detail=f"{run_dir} is up to date")
    _check_study_folds(_read_study_labels(ctx.labels, ctx.cfg).subset(set(ctx.ok)), tcfg)
    ctx.state.mark("train", fp, "running")
    ctx.log(f"  train: {tcfg.head}, {tcfg.cv_name} cross-validation -> {run_dir}")
    summary = mil_stage.run_train(fdir, ctx.labels, run_dir, tcfg, log=(lambda s: ctx.log(f"    {s}")) if ctx.progress else _quiet,
                          overwrite=run_dir.exists())
    ctx.warnings += summary.warnings
    ctx.state.mark("train", fp, DONE)
    return StageResult("train", DONE, detail=f"{tcfg.head} -> {run_dir}")


def _stage_predict(ctx: _Context) -> StageResult:

    out = ctx.cfg.predictions_csv(ctx.job)
    fdir = features_dir(ctx.job, ctx.encoder_id or "")
    fp = _digest({"run": ctx.train_fp, "features": _features_fingerprint(fdir, set(ctx.ok))})
    if ctx.state.is_done("predict", fp) and out.is_file():
        return StageResult("predict", SKIPPED, detail=f"{out} is up to date")
    ctx.state.mark("predict", fp, "running")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = mil_stage.run_predict(ctx.cfg.run_dir(ctx.job), fdir, out, device=ctx.cfg.device)
    ctx.warnings += summary.warnings
    for st in summary.failed:
        ctx.failed.setdefault(st.slide_id, f"predict: {st.reason}")
    ctx.ok = [s for s in ctx.ok if s not in ctx.failed]
    ctx.state.mark("predict", fp, DONE)
    return StageResult("predict", DONE, detail=f"{summary.n_slides} slides -> {out}")


def _stage_heatmap(ctx: _Context) -> StageResult:

    out = ctx.cfg.heatmap_dir(ctx.job)
    # same model and options as the (possibly interrupted) last drawing: resume per slide;
    # a retrained model makes every existing picture stale: redraw
    fp = _digest({"run": ctx.train_fp, "heatmap": config_to_dict(ctx.cfg.heatmap), "slides": ctx.ok})
    if ctx.state.is_done("heatmap", fp) and (out / "index.html").is_file():
        return StageResult("heatmap", SKIPPED, detail=f"{out} is up to date; page {out / 'index.html'}")
    overwrite = out.exists() and ctx.state.fingerprint("heatmap")[0] != fp
    ctx.state.mark("heatmap", fp, "running")
    report = heatmap_stage.run_heatmap(ctx.cfg.run_dir(ctx.job), ctx.job, out, ctx.cfg.heatmap, slides=ctx.ok,
                          labels_csv=ctx.labels, workers=ctx.workers, scheduler=ctx.scheduler, overwrite=overwrite,
                          progress=ctx.progress)
    # drawn with the same model: a later run only retries failed slides (the others are skipped)
    ctx.state.mark("heatmap", fp, DONE if not report.failed else "partial")
    ok_before = list(ctx.ok)
    ctx.fail("heatmap", report.statuses)
    ctx.ok = [s for s in ok_before if s not in ctx.failed]
    c = _counts(report.statuses)
    return StageResult("heatmap", DONE if c[DONE] or c[FAILED] else SKIPPED,
                       detail=f"{len(report.statuses)} slides ({_count_text(c)}); page {report.index_path}", counts=c)


# -- the pipeline --------------------------------------------------------------------------------
def run_study(
    cfg: StudyConfig,
    scheduler: str | None = None,
    workers: int | None = None,
    extract_scheduler: str | None = None,
    progress: bool = True,
    log: Log = _quiet,
    monitor: StageMonitor = _nullmonitor,
    stop_after: str | None = None,
) -> PipelineReport:
    """Run every stage of ``cfg`` in order; resumable (see the module docstring).

    ``scheduler``: an existing Dask scheduler for the slide-parallel CPU stages (tile, heatmap)
    and, unless ``extract_scheduler`` is given, for extraction too (GPU workers). Without one,
    tile and heatmap share one local cluster of ``workers`` processes (``0``: no Dask, all in
    this process) and extraction runs here on ``cfg.extract.device``. ``stop_after``: the name
    of the last stage to run. ``monitor(stage)`` wraps each stage (e.g. to sample memory).
    """
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers {workers}: give 0 (no Dask, all in this process) or a positive number of "
                          "worker processes")
    if stop_after is not None and stop_after not in STAGES:
        raise ConfigError(f"--stop-after {stop_after!r}: choose one of {', '.join(STAGES)}")
    if stop_after == "pretrain" and not cfg.encoder.is_simclr:
        raise ConfigError("--stop-after pretrain: this study has no pretrain stage (it runs only with "
                          "encoder.weights: simclr)")
    t_start = time.perf_counter()
    job = cfg.job.expanduser().resolve()
    labels = cfg.labels.expanduser().resolve()
    slides = [p.expanduser().resolve() for p in cfg.slides]
    found, warnings = preflight(cfg, slides, labels)
    job.mkdir(parents=True, exist_ok=True)
    write_text_atomic(job / "study.yaml", "# the effective study config of the last 'wsi-mil run' (written by it)\n"
                      + study_to_yaml(cfg))
    state = PipelineState(job)
    ctx = _Context(cfg, job, labels, slides, scheduler, extract_scheduler or scheduler, workers, progress, log,
                   state, warnings=warnings)
    plan: list[tuple[str, Callable[[_Context], StageResult]]] = [("tile", _stage_tile)]
    if cfg.encoder.is_simclr:
        plan.append(("pretrain", _stage_pretrain))
    plan += [("extract", _stage_extract), ("train", _stage_train), ("predict", _stage_predict),
             ("heatmap", _stage_heatmap)]
    results: list[StageResult] = []
    with _shared_cluster(ctx):
        for name, fn in plan:
            log(f"[{len(results) + 1}/{len(plan)}] {name}")
            t0 = time.perf_counter()
            try:
                with monitor(name):
                    res = fn(ctx)
                if name == "tile" and not any(s for s in _ok_stores(job, found)):
                    raise StoreError(f"{patches_dir(job)}: no slide was tiled ({len(ctx.failed)} failed, reasons "
                                     f"above); see {status_path(job, 'tile')}")
            except (WsiMilError, OSError) as exc:
                # whatever stage ends the run, the summary (failed slides and their reasons) goes with the error
                err = exc if isinstance(exc, WsiMilError) else output_error(exc)
                results.append(StageResult(name, FAILED, time.perf_counter() - t0, detail=str(err)))
                setattr(err, STOPPED_REPORT, _finish(ctx, results, len(found), t_start))
                if err is exc:
                    raise
                raise err from exc
            res.seconds = time.perf_counter() - t0
            results.append(res)
            log(f"  {name} {res.status} in {res.seconds:.1f} s: {res.detail}")
            if name == stop_after:
                break
    return _finish(ctx, results, len(found), t_start)


def _finish(ctx: _Context, results: list[StageResult], n_slides: int, t_start: float) -> PipelineReport:
    """The report of this run, also recorded as ``last_run`` in ``JOB/status/pipeline.json``."""
    report = _report(ctx, results, n_slides, time.perf_counter() - t_start)
    with contextlib.suppress(OSError, WsiMilError):  # a record that cannot be written must not hide the summary
        ctx.state.save(last_run={"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "wsi_mil_version": __version__,
                                 "seconds": round(report.seconds, 2), "stages": [asdict(r) for r in results],
                                 "failed": report.failed, "auc": report.auc})
    return report


def _ok_stores(job: Path, slide_ids: list[str]) -> list[str]:

    return [s for s in slide_ids if is_complete_patch_store(patch_store_path(job, s))]


@contextlib.contextmanager
def _shared_cluster(ctx: _Context) -> Iterator[None]:
    """One local Dask cluster for tile and heatmap (instead of one each), unless told otherwise."""
    if ctx.scheduler or ctx.workers == 0:
        yield
        return

    with dask_client(None, ctx.workers) as client:
        ctx.scheduler = client.scheduler.address
        try:
            yield
        finally:
            ctx.scheduler = None


def _report(ctx: _Context, results: list[StageResult], n_slides: int, seconds: float) -> PipelineReport:
    names = {r.name for r in results}
    run_dir = ctx.cfg.run_dir(ctx.job)
    metrics = None
    if "train" in names and (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    hdir = ctx.cfg.heatmap_dir(ctx.job)
    return PipelineReport(
        job=ctx.job, name=ctx.cfg.name, stages=results, n_slides=n_slides, failed=dict(sorted(ctx.failed.items())),
        encoder_id=ctx.encoder_id, run_dir=run_dir if metrics else None, metrics=metrics,
        predictions_csv=ctx.cfg.predictions_csv(ctx.job) if "predict" in names else None,
        heatmap_dir=hdir if "heatmap" in names else None,
        index_html=hdir / "index.html" if "heatmap" in names and (hdir / "index.html").is_file() else None,
        warnings=list(dict.fromkeys(ctx.warnings)), seconds=seconds,
    )


def format_summary(report: PipelineReport) -> str:
    """The short text printed at the end of ``wsi-mil run`` and ``wsi-mil demo``."""
    ok = report.n_slides - len(report.failed)
    lines = [f"study '{report.name}' in {report.job} ({report.seconds:.0f} s)",
             f"  slides: {report.n_slides} found, {ok} processed, {len(report.failed)} failed"]
    for sid, why in report.failed.items():
        lines.append(f"    failed {sid}: {why}")
    for r in report.stages:
        lines.append(f"  {r.name:<8} {r.status:<7} {r.seconds:7.1f} s  {r.detail}")
    if report.metrics is not None:
        oof = report.metrics.get("out_of_fold", {})
        auc = report.auc
        ci = report.auc_ci
        k = len(report.metrics.get("folds", []))
        band = f" (95% bootstrap CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        lines.append(f"  cross-validated slide AUC: {'n/a' if auc is None else f'{auc:.3f}'}{band}, "
                     f"{k}-fold, out-of-fold over {oof.get('n_slides', '?')} slides")
        lines.append(f"  model run: {report.run_dir}")
    if report.predictions_csv is not None:
        lines.append(f"  predictions: {report.predictions_csv}")
    if report.heatmap_dir is not None:
        lines.append(f"  heatmaps: {report.heatmap_dir}/{{slide_id}}/ (overlay.png, tiles.geojson for QuPath, "
                     "overlay.ome.tif)")
    if report.index_html is not None:
        lines.append(f"  HTML report: {report.index_html}")
    for w in report.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
