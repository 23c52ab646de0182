"""The in-process extraction pipeline over a list of slides on one device.

One DataLoader streams every slide's tiles in order (no pipeline drain between slides); the
engine embeds them on the device; when a slide's last rows arrive, its features are copied to
pinned host memory asynchronously and a background thread writes the feature file atomically.
A slide whose store cannot be read, or whose file cannot be written, fails alone; the others
carry on. If a loader process dies (e.g. a crash in a codec), the unfinished slides are read
again one per loader until the one that kills it is found; it fails, and streaming resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wsi_mil.errors import WsiMilError
from wsi_mil.extract.data import TileBatch, make_loader, plan_ranges
from wsi_mil.extract.engine import InferenceEngine
from wsi_mil.runrecord import DONE, FAILED, SlideStatus
from wsi_mil.stores.features import write_feature_file


@dataclass
class SlideJob:
    """One slide to embed: its store, where its features go and what they record.

    ``coords``: (N, 2) int64 level-0 tile corners from the store; ``chunk_ranges``: the store's
    ``[start, stop)`` storage chunks; ``attrs``: feature-file attributes except the encoder's.
    """

    slide_id: str
    store_path: str
    out_path: str
    n_tiles: int
    coords: np.ndarray
    chunk_ranges: list[tuple[int, int]]
    attrs: dict[str, Any] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, WsiMilError):
        return str(exc)
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


class _Slide:
    """Accumulates one slide's feature rows on the device."""

    def __init__(self, job: SlideJob) -> None:
        self.job = job
        self.parts: list[torch.Tensor] = []
        self.rows = 0
        self.error = ""
        self.t0 = time.perf_counter()


def write_slide(job: SlideJob, features: np.ndarray, encoder_attrs: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write one slide's feature file (atomic) after checking its row count."""
    if features.shape[0] != job.n_tiles:
        raise WsiMilError(f"{job.store_path}: {features.shape[0]} feature rows for {job.n_tiles} tiles")
    attrs = dict(job.attrs)
    attrs.update(encoder_attrs)
    attrs.update(extra)
    attrs["slide_id"] = job.slide_id
    write_feature_file(job.out_path, features, job.coords, attrs)


def run_slides(
    engine: InferenceEngine,
    jobs: Sequence[SlideJob],
    encoder_attrs: dict[str, Any],
    embed_dim: int,
    on_done: Callable[[SlideStatus], None],
    num_workers: int | None = None,
    extra_attrs: dict[str, Any] | None = None,
    loader: str = "auto",
) -> list[SlideStatus]:
    """Embed every slide of ``jobs`` with ``engine`` and write its feature file.

    ``on_done`` is called once per slide (from this thread) as soon as its file is written or
    it failed. Returns the statuses in ``jobs`` order.
    """
    extra = dict(extra_attrs or {})
    extra.update(precision=engine.precision, device=str(engine.device))
    statuses: dict[int, SlideStatus] = {}
    pending: list[tuple[int, Future, float]] = []
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsi_mil-write")

    def finish(i: int, status: str, reason: str = "", seconds: float = 0.0) -> None:
        job = jobs[i]
        st = SlideStatus(job.slide_id, job.store_path, status, reason=reason,
                         n_tiles=job.n_tiles if status == DONE else 0, seconds=seconds)
        statuses[i] = st
        on_done(st)

    def reap(block: bool) -> None:
        while pending and (block or pending[0][1].done()):
            i, fut, t0 = pending.pop(0)
            try:
                fut.result()
            except Exception as exc:  # disk full, permissions: this slide fails, others go on
                finish(i, FAILED, f"{jobs[i].out_path}: cannot write features: {_one_line(exc)}",
                       time.perf_counter() - t0)
            else:
                finish(i, DONE, seconds=time.perf_counter() - t0)

    def submit(i: int, slide: _Slide) -> None:
        if slide.parts:
            dev = torch.cat(slide.parts) if len(slide.parts) > 1 else slide.parts[0]
            slide.parts = []
            host = torch.empty(dev.shape, dtype=dev.dtype, pin_memory=dev.device.type == "cuda")
            host.copy_(dev, non_blocking=True)
            event = torch.cuda.Event(blocking=True) if dev.device.type == "cuda" else None
            if event is not None:
                event.record(torch.cuda.current_stream(dev.device))
        else:
            host = torch.empty((0, embed_dim), dtype=engine.out_dtype)
            event = None

        def write() -> None:
            if event is not None:
                event.synchronize()
            write_slide(slide.job, host.numpy(), encoder_attrs, extra)

        pending.append((i, writer.submit(write), slide.t0))

    try:
        start, isolate = 0, False
        while start < len(jobs):
            stop = start + 1 if isolate else len(jobs)
            resume, crash = _stream(engine, jobs, start, stop, num_workers, submit, finish, reap, loader)
            if crash and isolate:  # the slide read alone crashed its loader: it is the culprit
                finish(start, FAILED, f"{jobs[start].store_path}: a loader process died while reading "
                                      f"it ({crash})")
                start, isolate = start + 1, False
            else:
                # after a crash in a shared loader, slides are read alone until the culprit is found
                start, isolate = resume, bool(crash)
    finally:
        writer.shutdown(wait=True)  # even when aborting: finished slides are written and recorded
        reap(block=True)
    return [statuses[i] for i in range(len(jobs))]


def _stream(
    engine: InferenceEngine,
    jobs: Sequence[SlideJob],
    start: int,
    stop: int,
    num_workers: int | None,
    submit: Callable[[int, _Slide], None],
    finish: Callable[..., None],
    reap: Callable[[bool], None],
    loader: str = "auto",
) -> tuple[int, str]:
    """Stream slides ``start..stop-1`` through one loader.

    Returns ``(stop, "")`` when done, or ``(first unfinished slide, reason)`` when a loader
    process died: that slide and the ones after it were not recorded and must be redone.
    """
    ranges = []
    item_bytes = 0
    for i in range(start, stop):
        side = int(jobs[i].attrs.get("tile_size", 0))
        mine = plan_ranges(i, jobs[i].store_path, jobs[i].chunk_ranges, engine.batch_size, side)
        side = side or 224
        item_bytes = max([item_bytes] + [(r.stop - r.start) * side * side * 3 for r in mine])
        ranges += mine
    slides: dict[int, _Slide] = {}
    nxt = start  # next slide not yet opened

    def open_until(i: int) -> None:
        nonlocal nxt
        while nxt <= i:  # slides with no tiles have no ranges: they finish here, in order
            slides[nxt] = _Slide(jobs[nxt])
            if jobs[nxt].n_tiles == 0:
                submit(nxt, slides.pop(nxt))
            nxt += 1

    batches = iter(make_loader(ranges, engine.device, num_workers, item_bytes=item_bytes, mode=loader))
    try:
        for batch in batches:
            batch: TileBatch
            open_until(batch.slide)
            slide = slides.get(batch.slide)
            if slide is None:  # failed earlier: drop its remaining tiles
                continue
            if batch.error:
                slides.pop(batch.slide)
                finish(batch.slide, FAILED, batch.error, time.perf_counter() - slide.t0)
                continue
            if batch.start != slide.rows:
                raise WsiMilError(f"{slide.job.store_path}: rows {batch.start}-{batch.stop} arrived "
                                  f"out of order (expected {slide.rows})")
            try:
                slide.parts.append(engine.embed(batch.tiles))
            except WsiMilError as exc:
                slides.pop(batch.slide)
                finish(batch.slide, FAILED, f"{slide.job.store_path}: {exc}", time.perf_counter() - slide.t0)
                continue
            slide.rows = batch.stop
            if slide.rows == slide.job.n_tiles:
                submit(batch.slide, slides.pop(batch.slide))
            reap(False)
        open_until(stop - 1)
    except (RuntimeError, ConnectionError, EOFError) as exc:
        # a worker that dies right after queueing a batch leaves the tensor's shared-memory
        # handle unreachable: receiving it fails with ConnectionResetError or EOFError
        died = "DataLoader worker" in str(exc) if isinstance(exc, RuntimeError) else hasattr(batches, "_shutdown_workers")
        if not died:
            raise
        # a loader process died (a crash in a codec, the OOM killer). Workers read ahead, so the
        # slide at fault may be any unfinished one: they are all redone.
        unfinished = [i for i, sl in slides.items() if i < nxt] + [nxt]
        return min(unfinished), _one_line(exc)
    finally:
        # stop the loader's processes and unregister them now: a DataLoader iterator left to the
        # garbage collector keeps its SIGCHLD check armed, which raises later, anywhere
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            try:
                shutdown()
            except RuntimeError as exc:  # the SIGCHLD check fired while stopping: already handled
                if "DataLoader worker" not in str(exc):
                    raise
        del batches
    for i, slide in sorted(slides.items()):  # a store that ended early
        finish(i, FAILED, f"{slide.job.store_path}: got {slide.rows} of {slide.job.n_tiles} tiles")
    return stop, ""
