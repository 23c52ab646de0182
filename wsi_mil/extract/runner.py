"""The in-process extraction pipeline over a list of slides on one device.

One DataLoader streams every slide's tiles in order (no pipeline drain between slides); the
engine embeds them on the device; when a slide's last rows arrive, its features are copied to
pinned host memory asynchronously and a background thread writes the feature file atomically.
With a stain normaliser, each slide's transform is fitted on background threads ahead of its
tiles (:class:`~wsi_mil.stain.fit.FitAhead`) and applied by the engine on the device. A slide
whose store cannot be read, whose stain cannot be fitted, or whose file cannot be written, fails
alone; the others carry on. If a loader process dies (e.g. a crash in a codec), the unfinished
slides are read again one per loader until the one that kills it is found; it fails, and
streaming resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from wsi_mil.errors import WsiMilError
from wsi_mil.extract.data import TileRange, largest_item_bytes, make_loader, plan_ranges
from wsi_mil.extract.engine import InferenceEngine
from wsi_mil.runrecord import DONE, FAILED, SlideStatus
from wsi_mil.stores.features import write_feature_file

if TYPE_CHECKING:
    from wsi_mil.stain.base import FittedStain, StainNormalizer
    from wsi_mil.stain.fit import FitAhead


@dataclass
class SlideJob:
    """One slide to embed: its store, where its features go and what they record.

    ``tile_size``: the store's tile side S in px (its validated ``tile_size`` attribute);
    ``coords``: (N, 2) int64 level-0 tile corners from the store; ``chunk_ranges``: the store's
    ``[start, stop)`` storage chunks; ``attrs``: feature-file attributes except the encoder's.
    """

    slide_id: str
    store_path: str
    out_path: str
    n_tiles: int
    tile_size: int
    coords: NDArray[np.int64]
    chunk_ranges: list[tuple[int, int]]
    attrs: dict[str, Any] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    """``exc`` as one line: a :class:`WsiMilError`'s own message, else ``Type: message``."""
    if isinstance(exc, WsiMilError):
        return str(exc)
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


class _Slide:
    """Accumulates one slide's feature rows, (n, D) tensors on the device, in row order; with its
    fitted stain transform and that fit's feature-file attributes once known."""

    def __init__(self, job: SlideJob) -> None:
        self.job = job
        self.parts: list[torch.Tensor] = []
        self.rows = 0
        self.error = ""
        self.t0 = time.perf_counter()
        self.stain: FittedStain | None = None
        self.stain_attrs: dict[str, Any] = {}


def write_slide(job: SlideJob, features: NDArray[np.floating[Any]], encoder_attrs: dict[str, Any],
                extra: dict[str, Any]) -> None:
    """Write one slide's feature file (atomic) after checking its row count; ``features``: (N, D)."""
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
    stain: StainNormalizer | None = None,
) -> list[SlideStatus]:
    """Embed every slide of ``jobs`` with ``engine`` and write its feature file.

    ``on_done`` is called once per slide (from this thread) as soon as its file is written or
    it failed. Returns the statuses in ``jobs`` order. Reads hold at most the engine's batch
    size (at the start of the run) of tiles, never less than one storage chunk. ``stain``: the
    stain normaliser (each slide fitted once, before its first tiles are embedded), or None.
    """
    extra = dict(extra_attrs or {})
    extra.update(precision=engine.precision, device=str(engine.device))
    if stain is not None:
        extra.update(stain_norm=stain.name, stain_target=stain.target())
    runner = SlideRunner(engine, jobs, encoder_attrs, embed_dim, on_done, extra, batch_size=engine.batch_size,
                         stain=stain)
    return runner.run(num_workers, loader)


class SlideRunner:
    """One :func:`run_slides` call: streams slides through loaders, embeds them, writes them.

    State: the statuses recorded so far, the feature files being written (one writer thread,
    in slide order) and, while a loader streams, the slides it has opened. Every slide is
    recorded exactly once, through :meth:`finish`.
    """

    def __init__(
        self,
        engine: InferenceEngine,
        jobs: Sequence[SlideJob],
        encoder_attrs: dict[str, Any],
        embed_dim: int,
        on_done: Callable[[SlideStatus], None],
        extra: dict[str, Any],
        batch_size: int,
        stain: StainNormalizer | None = None,
    ) -> None:
        self.engine = engine
        self.jobs = jobs
        self.encoder_attrs = encoder_attrs
        self.embed_dim = embed_dim
        self.on_done = on_done
        self.extra = extra
        self.batch_size = int(batch_size)  # tiles per read (>= one storage chunk)
        self.statuses: dict[int, SlideStatus] = {}
        self.pending: list[tuple[int, Future[None], float]] = []  # (slide, write, start time)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsi_mil-write")
        self.open_slides: dict[int, _Slide] = {}  # slides of the current stream opened and not yet done
        self.next_slide = 0  # the current stream's next slide not yet opened
        self.stain = stain
        self.fits: FitAhead | None = None  # the slides' stain fits, made ahead on background threads

    # -- recording -------------------------------------------------------------------------
    def finish(self, i: int, status: str, reason: str = "", seconds: float = 0.0) -> None:
        """Record slide ``i``'s status and report it."""
        job = self.jobs[i]
        st = SlideStatus(job.slide_id, job.store_path, status, reason=reason,
                         n_tiles=job.n_tiles if status == DONE else 0, seconds=seconds)
        self.statuses[i] = st
        self.on_done(st)

    def reap(self, block: bool) -> None:
        """Record the writes that are done, oldest first (``block``: wait for all of them)."""
        while self.pending and (block or self.pending[0][1].done()):
            i, fut, t0 = self.pending.pop(0)
            try:
                fut.result()
            except Exception as exc:  # disk full, permissions: this slide fails, others go on
                self.finish(i, FAILED, f"{self.jobs[i].out_path}: cannot write features: {_one_line(exc)}",
                            time.perf_counter() - t0)
            else:
                self.finish(i, DONE, seconds=time.perf_counter() - t0)

    def submit(self, i: int, slide: _Slide) -> None:
        """Queue slide ``i``'s feature file: its rows are copied to pinned host memory
        asynchronously (an event marks the copy's end on CUDA) and written by the writer thread."""
        if slide.parts:
            dev = torch.cat(slide.parts) if len(slide.parts) > 1 else slide.parts[0]
            slide.parts = []
            host = torch.empty(dev.shape, dtype=dev.dtype, pin_memory=dev.device.type == "cuda")
            host.copy_(dev, non_blocking=True)
            event = torch.cuda.Event(blocking=True) if dev.device.type == "cuda" else None
            if event is not None:
                event.record(torch.cuda.current_stream(dev.device))
        else:
            host = torch.empty((0, self.embed_dim), dtype=self.engine.out_dtype)
            event = None
        encoder_attrs, extra = self.encoder_attrs, {**self.extra, **slide.stain_attrs}

        def write() -> None:
            if event is not None:
                event.synchronize()
            write_slide(slide.job, host.numpy(), encoder_attrs, extra)

        self.pending.append((i, self.writer.submit(write), slide.t0))

    # -- streaming -------------------------------------------------------------------------
    def run(self, num_workers: int | None, loader: str) -> list[SlideStatus]:
        """Stream every slide; after a loader process died, read slides alone until the one that
        kills it is found (it fails), then stream the rest together again."""
        if self.stain is not None:
            from wsi_mil.stain.fit import FitAhead

            self.fits = FitAhead(self.stain, [j.store_path if j.n_tiles else None for j in self.jobs])
        try:
            start, isolate = 0, False
            while start < len(self.jobs):
                stop = start + 1 if isolate else len(self.jobs)
                resume, crash = self.stream(start, stop, num_workers, loader)
                if crash and isolate:  # the slide read alone crashed its loader: it is the culprit
                    self.finish(start, FAILED, f"{self.jobs[start].store_path}: a loader process died while "
                                               f"reading it ({crash})")
                    start, isolate = start + 1, False
                else:
                    # after a crash in a shared loader, slides are read alone until the culprit is found
                    start, isolate = resume, bool(crash)
        finally:
            if self.fits is not None:
                self.fits.close()
            self.writer.shutdown(wait=True)  # even when aborting: finished slides are written and recorded
            self.reap(block=True)
        return [self.statuses[i] for i in range(len(self.jobs))]

    def plan(self, start: int, stop: int) -> list[TileRange]:
        """The reads of slides ``start..stop-1``, in order."""
        ranges: list[TileRange] = []
        for i in range(start, stop):
            job = self.jobs[i]
            ranges += plan_ranges(i, job.store_path, job.chunk_ranges, self.batch_size, job.tile_size)
        return ranges

    def open_until(self, i: int) -> None:
        """Open the stream's slides up to ``i``; slides with no tiles have no reads: they are
        submitted here, in order."""
        while self.next_slide <= i:
            k = self.next_slide
            self.open_slides[k] = _Slide(self.jobs[k])
            if self.jobs[k].n_tiles == 0:
                self.submit(k, self.open_slides.pop(k))
            self.next_slide += 1

    def stream(self, start: int, stop: int, num_workers: int | None, loader: str = "auto") -> tuple[int, str]:
        """Stream slides ``start..stop-1`` through one loader.

        Returns ``(stop, "")`` when done, or ``(first unfinished slide, reason)`` when a loader
        process died: that slide and the ones after it were not recorded and must be redone.
        """
        engine = self.engine
        ranges = self.plan(start, stop)
        self.open_slides, self.next_slide = {}, start
        slides = self.open_slides
        batches = iter(make_loader(ranges, engine.device, num_workers, item_bytes=largest_item_bytes(ranges),
                                   mode=loader))
        try:
            for batch in batches:
                self.open_until(batch.slide)
                slide = slides.get(batch.slide)
                if slide is None:  # failed earlier: drop its remaining tiles
                    continue
                if batch.error or batch.tiles is None:
                    slides.pop(batch.slide)
                    self.finish(batch.slide, FAILED, batch.error, time.perf_counter() - slide.t0)
                    continue
                if self.fits is not None and slide.stain is None:
                    try:  # the slide's stain fit, once, before its first tiles are embedded
                        fitted = self.fits.result(batch.slide)
                    except Exception as exc:  # too little tissue, unreadable sample: this slide fails alone
                        slides.pop(batch.slide)
                        self.finish(batch.slide, FAILED, _one_line(exc), time.perf_counter() - slide.t0)
                        continue
                    slide.stain, slide.stain_attrs = fitted.transform, fitted.attrs()
                if batch.start != slide.rows:
                    raise WsiMilError(f"{slide.job.store_path}: rows {batch.start}-{batch.stop} arrived "
                                      f"out of order (expected {slide.rows})")
                try:
                    slide.parts.append(engine.embed(batch.tiles, slide.stain))
                except WsiMilError as exc:
                    slides.pop(batch.slide)
                    self.finish(batch.slide, FAILED, f"{slide.job.store_path}: {exc}",
                                time.perf_counter() - slide.t0)
                    continue
                slide.rows = batch.stop
                if slide.rows == slide.job.n_tiles:
                    self.submit(batch.slide, slides.pop(batch.slide))
                self.reap(False)
            self.open_until(stop - 1)
        except (RuntimeError, ConnectionError, EOFError) as exc:
            # a worker that dies right after queueing a batch leaves the tensor's shared-memory
            # handle unreachable: receiving it fails with ConnectionResetError or EOFError
            died = ("DataLoader worker" in str(exc) if isinstance(exc, RuntimeError)
                    else hasattr(batches, "_shutdown_workers"))
            if not died:
                raise
            # a loader process died (a crash in a codec, the OOM killer). Workers read ahead, so the
            # slide at fault may be any unfinished one: they are all redone.
            unfinished = [i for i, sl in slides.items() if i < self.next_slide] + [self.next_slide]
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
            self.finish(i, FAILED, f"{slide.job.store_path}: got {slide.rows} of {slide.job.n_tiles} tiles")
        return stop, ""
