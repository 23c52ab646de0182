"""``run_extract``: every patch store of a job -> one HDF5 feature file per slide.

Resumable: a slide whose ``features/{encoder_id}/{slide_id}.h5`` is complete, made by the same
encoder, with the same stain normalisation (method and target) and from the same patch store
(content fingerprint) is skipped. With ``stain_norm`` set, the encoder id carries the method
(``-macenko``), each slide's stain parameters are fitted once from a sample of its tiles, where
the slide is embedded (this process, a device process or a Dask worker), on background threads
ahead of its tiles; a slide that cannot be fitted fails alone; the engine normalises its tiles
on the device. Every slide ends as a
:class:`~wsi_mil.runrecord.SlideStatus` in ``JOB/status/extract-{encoder_id}.csv``.

Where it runs: one device runs in this process (no Dask). Several devices run one process per
device, slides spread across them by tile count. ``scheduler`` sends one task per slide to an
existing Dask cluster (its workers use their own GPU, or the CPU).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_mod
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wsi_mil.atomic import remove_stale_temporaries
from wsi_mil.config import config_to_dict
from wsi_mil.encoders import Encoder, create_encoder
from wsi_mil.encoders.factory import stain_encoder_id
from wsi_mil.errors import EncoderError, StoreError, WsiMilError
from wsi_mil.extract.config import ExtractConfig
from wsi_mil.extract.engine import InferenceEngine, resolve_precision
from wsi_mil.extract.memory import estimate_memory
from wsi_mil.extract.runner import SlideJob, _one_line, run_slides
from wsi_mil.jobdir import feature_file_path, features_dir, features_root, patches_dir, status_path
from wsi_mil.outputs import FEATURE_FILE, check_writable, replace_refusal
from wsi_mil.parallel import dask_client, device_resources, run_slide_tasks
from wsi_mil.runrecord import FAILED, SKIPPED, RunRecord, SlideStatus, StageReport, guard_slide
from wsi_mil.stain.base import StainNormalizer
from wsi_mil.stain.registry import create_stain_normalizer
from wsi_mil.stores.common import file_fingerprint, slide_id_of
from wsi_mil.stores.features import read_feature_attrs
from wsi_mil.stores.patches import list_patch_stores, open_patch_store

log = logging.getLogger(__name__)

#: patch-store attributes copied into every feature file
STORE_ATTRS = ("slide_path", "slide_hash", "mpp", "mpp_source", "target_mpp", "tile_size", "tile_size_um",
               "tile_size_level0", "stride", "read_level", "level0_width", "level0_height", "vendor")


@dataclass
class ExtractReport(StageReport):
    """What :func:`run_extract` did: one status per store in slide-id order, the record, and where
    the feature files are."""

    encoder_id: str = ""
    features_dir: Path = Path()
    memory_estimate: str = ""


@dataclass(frozen=True)
class EncoderSpec:
    """What rebuilds an encoder in another process: ``create_encoder(arch, weights, manifest=...)``.

    ``weights`` None takes the path the weights ``manifest`` pins for ``arch``; ``stain_norm``: the
    stain normalisation its features are made with (it is part of the encoder id).
    """

    arch: str | None
    weights: str | None
    manifest: str | None = None
    stain_norm: str = "none"

    def build(self) -> Encoder:
        return with_stain_norm(create_encoder(self.arch, self.weights, manifest=self.manifest), self.stain_norm)


def with_stain_norm(enc: Encoder, stain_norm: str) -> Encoder:
    """``enc`` whose id names the features made from ``stain_norm``-normalised tiles (``none``: ``enc``)."""
    encoder_id = stain_encoder_id(enc.encoder_id, stain_norm)
    return enc if encoder_id == enc.encoder_id else replace(enc, encoder_id=encoder_id)


def stain_attrs(stain: StainNormalizer | None) -> dict[str, Any]:
    """The run's part of a feature file's stain attributes: ``stain_norm`` and (with one) ``stain_target``."""
    if stain is None:
        return {"stain_norm": "none"}
    return {"stain_norm": stain.name, "stain_target": stain.target()}


def stage_name(encoder_id: str) -> str:
    """The run-record name of an extraction: ``extract-{encoder_id}``."""
    return f"extract-{encoder_id}"


def resolve_devices(device: str) -> list[torch.device]:
    """``auto``/``cuda``/``cuda:0,cuda:1``/``cpu`` -> the devices to run on (one process each)."""
    text = device.strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda":
        if not torch.cuda.is_available():
            raise WsiMilError("--device cuda: no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES and the "
                              "driver), or use --device cpu")
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            dev = torch.device(part)
        except RuntimeError as exc:
            raise WsiMilError(f"--device '{device}': '{part}' is not a device (use cpu, cuda, cuda:N)") from exc
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise WsiMilError(f"--device '{device}': no CUDA GPU is visible; use --device cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise WsiMilError(f"--device '{device}': only {torch.cuda.device_count()} GPU(s) are visible")
        elif dev.type != "cpu":
            raise WsiMilError(f"--device '{device}': '{part}' is not supported (use cpu, cuda, cuda:N)")
        out.append(dev)
    if not out:
        raise WsiMilError(f"--device '{device}': no device given")
    return out


def _torch_dtype(name: str) -> torch.dtype:
    return torch.float16 if name == "float16" else torch.float32


def make_engine(encoder: Encoder, device: torch.device, cfg: ExtractConfig) -> InferenceEngine:
    """An :class:`InferenceEngine` for ``encoder`` on ``device`` configured by ``cfg``."""
    return InferenceEngine(
        encoder.model, encoder.data_config, device=device, batch_size=cfg.batch_size,
        precision=cfg.precision, compile=cfg.compile, out_dtype=_torch_dtype(cfg.features_dtype),
        channels_last=cfg.channels_last,
    )


def _same_stain(attrs: dict[str, Any], stain: StainNormalizer | None) -> bool:
    """Whether a feature file's attributes record the stain normalisation ``stain`` (method and target)."""
    wanted = stain_attrs(stain)
    return all(attrs.get(k, "none" if k == "stain_norm" else None) == v for k, v in wanted.items())


def prepare_slide(store_path: Path, out_path: Path, encoder_id: str, overwrite: bool = False,
                  stain: StainNormalizer | None = None) -> SlideJob | SlideStatus:
    """Open and check one store; a status when it fails or its valid output exists, else a job.

    ``stain``: the run's stain normaliser: an existing file counts as valid only if it records the
    same method and target (a file made without normalisation never stands in for one made with it).
    """
    t0 = time.perf_counter()
    slide_id = slide_id_of(store_path)
    try:
        store = open_patch_store(store_path)
        fingerprint = file_fingerprint(store_path)
    except (StoreError, OSError) as exc:
        return SlideStatus(slide_id, str(store_path), FAILED, reason=_one_line(exc), seconds=time.perf_counter() - t0)
    refusal = replace_refusal(out_path, FEATURE_FILE)  # only a feature file is ever replaced there
    if refusal:
        return SlideStatus(slide_id, str(store_path), FAILED, reason=refusal, seconds=time.perf_counter() - t0)
    if not overwrite and out_path.exists():
        try:
            attrs = read_feature_attrs(out_path)
        except StoreError:
            attrs = {}
        if (attrs.get("encoder_id") == encoder_id and attrs.get("patch_store_hash") == fingerprint
                and int(attrs.get("n_tiles", -1)) == store.n_tiles and _same_stain(attrs, stain)):
            return SlideStatus(slide_id, str(store_path), SKIPPED, n_tiles=store.n_tiles,
                               seconds=time.perf_counter() - t0)
    attrs = {k: store.attrs[k] for k in STORE_ATTRS if k in store.attrs}
    attrs.update(patch_store=str(Path(store_path).resolve()), patch_store_hash=fingerprint,
                 tiling_config=store.attrs.get("config", {}))
    return SlideJob(
        slide_id=store.slide_id if store.slide_id else slide_id,
        store_path=str(store_path),
        out_path=str(out_path),
        n_tiles=store.n_tiles,
        tile_size=store.tile_size,
        coords=store.coords,
        chunk_ranges=store.chunk_ranges(),
        attrs=attrs,
    )


def prepare_slides(stores: Sequence[tuple[Path, Path]], encoder_id: str, overwrite: bool = False,
                   threads: int = 8, stain: StainNormalizer | None = None) -> list[SlideJob | SlideStatus]:
    """:func:`prepare_slide` for each ``(store_path, out_path)``, in order, on a few threads
    (opening a store and fingerprinting it is file I/O and hashing, which release the GIL)."""
    if len(stores) <= 1 or threads <= 1:
        return [prepare_slide(p, out, encoder_id, overwrite, stain) for p, out in stores]
    with ThreadPoolExecutor(min(threads, len(stores)), thread_name_prefix="wsi_mil-open") as pool:
        return list(pool.map(lambda item: prepare_slide(item[0], item[1], encoder_id, overwrite, stain), stores))


def _balance(jobs: Sequence[SlideJob], n: int) -> list[list[SlideJob]]:
    """Spread slides over ``n`` devices: largest first onto the least-loaded device."""
    loads = [0] * n
    parts: list[list[SlideJob]] = [[] for _ in range(n)]
    for job in sorted(jobs, key=lambda j: -j.n_tiles):
        k = loads.index(min(loads))
        parts[k].append(job)
        loads[k] += job.n_tiles + 64  # a per-slide cost even for tiny slides
    return parts


def run_extract(
    job: str | Path,
    encoder: str | None | Encoder = None,
    weights: str | Path | None = None,
    cfg: ExtractConfig | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    slides: Sequence[str] | None = None,
    on_done: Callable[[SlideStatus], None] | None = None,
    progress: bool = False,
    manifest: str | Path | None = None,
) -> ExtractReport:
    """Embed every complete patch store of ``job`` (or the ``slides`` named) with one encoder.

    ``encoder``/``weights``: as :func:`~wsi_mil.encoders.create_encoder` (``encoder`` may also
    be a ready :class:`Encoder`: then this process runs everything, on the first device of
    ``cfg.device``). ``manifest``: a weights manifest (YAML) pinning the weights' path and
    sha256; ``weights`` may then be None. A memory estimate for the first device is printed
    (``progress``) or logged before any slide runs. Returns the report: one status per store in slide-id order; the run record
    is ``JOB/status/extract-{encoder_id}.csv``.
    """
    cfg = cfg or ExtractConfig()
    job = Path(job)
    devices = resolve_devices(cfg.device) if not scheduler else []
    stain = create_stain_normalizer(cfg.stain_norm)
    check_writable(features_root(job), folder=True)  # before the encoder is built
    check_writable(status_path(job, "extract"))
    if isinstance(encoder, Encoder):
        enc, spec = with_stain_norm(encoder, cfg.stain_norm), None
    else:
        if weights is None and manifest is None:
            raise EncoderError("give --weights: a weights file, a publisher or encoder folder, 'hub', 'timm' or "
                               "'random' (or --weights-manifest)")
        spec = EncoderSpec(encoder, str(weights) if weights is not None else None,
                           str(manifest) if manifest is not None else None, cfg.stain_norm)
        enc = spec.build()
    stores = list_patch_stores(job)
    if slides is not None:
        wanted = set(slides)
        stores = [p for p in stores if slide_id_of(p) in wanted]
        unknown = wanted - {slide_id_of(p) for p in stores}
        if unknown:
            raise StoreError(f"{patches_dir(job)}: no patch store for slide(s) {', '.join(sorted(unknown))}")
    if not stores:
        raise StoreError(f"{patches_dir(job)}: no patch stores; run 'wsi-mil tile' first")
    out_dir = features_dir(job, enc.encoder_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    record = RunRecord(status_path(job, stage_name(enc.encoder_id)))
    bar = Progress(TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"),
                   TimeElapsedColumn(), disable=not progress)
    task = bar.add_task("extract", total=len(stores), last="")
    first = devices[0] if devices else torch.device("cpu")
    memory = estimate_memory(enc.model, enc.data_config, cfg.batch_size, resolve_precision(cfg.precision, first), first)
    log.info(memory.line())
    if progress:
        bar.console.print(memory.line(), markup=False, soft_wrap=True)

    def done(st: SlideStatus) -> None:
        record.record(st)
        bar.update(task, advance=1, last=f"{st.slide_id}: {st.status}")
        if on_done is not None:
            on_done(st)

    jobs: list[SlideJob] = []
    statuses: list[SlideStatus] = []
    outputs = [(p, feature_file_path(job, enc.encoder_id, slide_id_of(p))) for p in stores]
    for item in prepare_slides(outputs, enc.encoder_id, overwrite, stain=stain):
        if isinstance(item, SlideStatus):
            done(item)
            statuses.append(item)
        else:
            jobs.append(item)
    extra = {"extract_config": config_to_dict(cfg), **stain_attrs(stain)}
    with bar:
        statuses += _dispatch(enc, spec, jobs, cfg, extra, done, scheduler, devices)
    return ExtractReport(sorted(statuses, key=lambda s: s.slide_id), record.path, encoder_id=enc.encoder_id,
                         features_dir=out_dir, memory_estimate=memory.line())


def _dispatch(enc: Encoder, spec: EncoderSpec | None, jobs: list[SlideJob], cfg: ExtractConfig,
              extra: dict[str, Any], done: Callable[[SlideStatus], None], scheduler: str | None,
              devices: list[torch.device]) -> list[SlideStatus]:
    """Run ``jobs`` here (one device), in one process per device, or on a Dask cluster."""
    statuses: list[SlideStatus] = []
    if jobs:
        if scheduler:
            if spec is None:
                raise WsiMilError("a Dask scheduler needs an encoder spec (arch + weights), not a built Encoder")
            statuses += _run_dask(scheduler, spec, enc.encoder_id, jobs, cfg, extra, done)
        else:
            if len(devices) == 1 or spec is None:
                engine = make_engine(enc, devices[0], cfg)
                statuses += run_slides(engine, jobs, enc.attrs(), enc.embed_dim, done, cfg.num_workers, extra, cfg.loader,
                                       stain=create_stain_normalizer(cfg.stain_norm))
            else:
                statuses += _run_processes(devices, spec, enc.encoder_id, jobs, cfg, extra, done)
    return statuses


# -- several devices: one process each -------------------------------------------------------
def _device_main(device: str, spec: EncoderSpec, encoder_id: str, jobs: list[SlideJob], cfg: ExtractConfig,
                 extra: dict[str, Any], queue: Any) -> None:
    """Entry point of one device process: embeds its slides, reports each status on ``queue``."""
    try:
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        enc = spec.build()
        if enc.encoder_id != encoder_id:
            raise EncoderError(f"{spec.weights}: the weights changed during the run "
                               f"(encoder id {enc.encoder_id}, expected {encoder_id})")
        engine = make_engine(enc, dev, cfg)
        run_slides(engine, jobs, enc.attrs(), enc.embed_dim, queue.put, cfg.num_workers, extra, cfg.loader,
                   stain=create_stain_normalizer(cfg.stain_norm))
    except Exception as exc:  # report, the parent fails this process's remaining slides
        queue.put(("error", _one_line(exc)))
    queue.put(("exit", device))


def _run_processes(devices: Sequence[torch.device], spec: EncoderSpec, encoder_id: str, jobs: list[SlideJob],
                   cfg: ExtractConfig, extra: dict[str, Any], done: Callable[[SlideStatus], None]) -> list[SlideStatus]:
    """One spawned process per device; statuses are recorded here as they arrive."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    parts = _balance(jobs, len(devices))
    procs = []
    for dev, part in zip(devices, parts):
        if part:
            proc = ctx.Process(target=_device_main, args=(str(dev), spec, encoder_id, part, cfg, extra, q),
                               name=f"wsi_mil-extract-{dev}")
            proc.start()
            procs.append((proc, part))
    seen: dict[str, SlideStatus] = {}
    errors: list[str] = []
    running = len(procs)
    while running:
        try:
            msg = q.get(timeout=5.0)
        except queue_mod.Empty:
            if all(not p.is_alive() for p, _ in procs):
                break
            continue
        if isinstance(msg, SlideStatus):
            seen[msg.slide_id] = msg
            done(msg)
        elif msg[0] == "error":
            errors.append(msg[1])
        elif msg[0] == "exit":
            running -= 1
    for proc, _ in procs:
        proc.join(timeout=30)
    out = list(seen.values())
    reason = errors[0] if errors else "its device process ended before the slide was done"
    for _, part in procs:
        for j in part:
            if j.slide_id not in seen:
                st = SlideStatus(j.slide_id, j.store_path, FAILED, reason=reason)
                done(st)
                out.append(st)
    return out


# -- an existing Dask cluster: one task per slide --------------------------------------------
_WORKER_CACHE: dict[tuple, tuple[Encoder, InferenceEngine]] = {}


def extract_slide_task(spec: EncoderSpec, encoder_id: str, slide: SlideJob, cfg: ExtractConfig,
                       extra: dict[str, Any]) -> SlideStatus:
    """Dask task: embed one slide on this worker's device (its GPU if it has one, else the CPU).

    The encoder and engine are built once per worker process and reused for its next slides.
    """

    def work() -> SlideStatus:
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        key = (spec, encoder_id, str(device), cfg.model_dump_json())
        if key not in _WORKER_CACHE:
            enc = spec.build()
            if enc.encoder_id != encoder_id:
                raise EncoderError(f"{spec.weights}: on this worker the weights give encoder id "
                                   f"{enc.encoder_id}, expected {encoder_id}; give every worker the same file")
            _WORKER_CACHE.clear()
            _WORKER_CACHE[key] = (enc, make_engine(enc, device, cfg))
        enc, engine = _WORKER_CACHE[key]
        workers = cfg.num_workers if cfg.num_workers is not None else (0 if device.type == "cpu" else None)
        return run_slides(engine, [slide], enc.attrs(), enc.embed_dim, lambda s: None, workers, extra,
                          cfg.loader, stain=create_stain_normalizer(cfg.stain_norm))[0]

    return guard_slide(slide.slide_id, slide.store_path, "extracting features", work)


def _run_dask(scheduler: str, spec: EncoderSpec, encoder_id: str, jobs: list[SlideJob], cfg: ExtractConfig,
              extra: dict[str, Any], done: Callable[[SlideStatus], None]) -> list[SlideStatus]:
    items = [(j.slide_id, j.store_path, (spec, encoder_id, j, cfg, extra)) for j in jobs]
    with dask_client(scheduler) as client:
        resources = device_resources(client, cfg.device)  # a GPU worker unless device: cpu (or auto, none has one)
        return run_slide_tasks(client, extract_slide_task, items, done, "extract", show_progress=False,
                               resources=resources)

