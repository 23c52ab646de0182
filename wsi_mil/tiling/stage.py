"""The tile stage: slides -> tissue mask -> tile grid -> one zarr patch store per slide.

Each slide is one Dask task (:func:`tile_one_slide`) that never raises for bad input: it returns
a :class:`SlideStatus`. Tiles are read at an exact physical scale from the cheapest pyramid level
at least as fine as the target, resampled with an area filter when the level's scale differs
from the target by more than half a pixel over a tile, and streamed to the store chunk by chunk.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_mil.atomic import remove_stale_temporaries, write_text_atomic
from wsi_mil.config import config_to_dict
from wsi_mil.errors import WsiMilError
from wsi_mil.jobdir import patch_store_path, patches_dir, status_path
from wsi_mil.outputs import PATCH_STORE, check_writable, replace_refusal
from wsi_mil.parallel import map_slides
from wsi_mil.runrecord import DONE, FAILED, SKIPPED, RunRecord, SlideStatus, StageReport, guard_slide
from wsi_mil.slide import SkippedEntry, Slide, SlideSource, open_slide, scan_inputs
from wsi_mil.stores.common import file_fingerprint, path_size
from wsi_mil.stores.patches import PatchStoreWriter, validate_patch_store
from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.diagnose import explain_no_tiles
from wsi_mil.tiling.grid import make_tile_grid
from wsi_mil.tiling.mpp import MppRequest, mpp_requests, mpp_warning
from wsi_mil.tiling.pool import encoded_chunks
from wsi_mil.tiling.readers import DecodeOptions, OpenSlideTileReader, decoder_version, open_tile_reader
from wsi_mil.tiling.regions import ReadPlan
from wsi_mil.tiling.reuse import check_existing_stores, difference_text, store_differences
from wsi_mil.tiling.tissue import detect_tissue


def plan_reads(slide: Slide, target_mpp: float, tile_size: int) -> ReadPlan:
    """Choose the coarsest level at least as fine as ``target_mpp`` (µm/px); resample only if needed."""
    level = slide.best_level_for_mpp(target_mpp)
    ds = slide.level_downsamples[level]
    region = tile_size * target_mpp / slide.mpp / ds
    resample = abs(region - tile_size) > 0.5
    return ReadPlan(level, ds, region, resample)


def read_tile(slide: Slide, x: int, y: int, plan: ReadPlan, tile_size: int) -> np.ndarray:
    """One tile (S, S, 3) uint8 whose top-left corner is level-0 (x, y), through the slide's reader."""
    return OpenSlideTileReader(slide, plan, tile_size).read_tile(x, y)


def _write_tiles(slide: Slide, plan: ReadPlan, coords: np.ndarray, writer: PatchStoreWriter, cfg: TilingConfig,
                 options: DecodeOptions | None = None) -> dict:
    """Read and encode every tile of ``coords`` (N, 2) into ``writer``, chunks in parallel threads.

    Returns the decoding attributes recorded in the store (decoder, DCT scale, threads).
    """
    opts = options or DecodeOptions.from_env()
    reader = open_tile_reader(slide, plan, cfg.tile_size, coords, opts)
    threads = opts.thread_count() if reader.thread_safe else 1
    try:
        for data, k in encoded_chunks(reader.read_tiles, coords, writer.chunk, cfg.tile_size, cfg.codec,
                                      cfg.jpeg_quality, cfg.jpeg_subsampling, threads):
            writer.append_encoded(data, k)
    finally:
        reader.close()
    return dict(tile_decoder=reader.name if reader.name == "openslide" else f"{reader.name} ({decoder_version(reader.scale)})",
                tile_decode_scale=reader.scale, tile_decoder_fallback=reader.fallback_reason, tile_threads=threads)


OTHER_PARAMETERS = "made with other tiling parameters"
WARNING = "warning: "  # prefix of a done slide's reason that carries a warning (e.g. 0 tiles, mpp disagreement)


def _reusable_store(out: Path, source: SlideSource, cfg: TilingConfig,
                    request: MppRequest) -> tuple[dict | None, str]:
    """(the store's attributes if it is valid and made from the same slide and config, else None;
    the reason it cannot be reused)."""
    try:
        _, attrs = validate_patch_store(out)
    except WsiMilError as exc:
        return None, str(exc)
    diffs = store_differences(attrs, cfg, request)
    if diffs:
        return None, f"{OTHER_PARAMETERS} ({difference_text(diffs)})"
    if attrs.get("slide_size_bytes") != path_size(source.path):
        return None, "made from another version of the slide file"
    return attrs, ""


def tile_one_slide(source: SlideSource, job: str | Path, cfg: TilingConfig, overwrite: bool = False,
                   request: MppRequest | None = None) -> SlideStatus:
    """Tile one slide into ``JOB/patches/{slide_id}.zarr``; never raises for bad input.

    ``request`` is the slide's mpp request (default: from ``cfg.mpp`` and ``cfg.mpp_force``; the
    table is read by :func:`run_tile`). A done slide's ``reason`` carries its warnings, if any.
    """
    t0 = time.perf_counter()
    out = patch_store_path(job, source.slide_id)
    src = str(source.path)
    req = request or MppRequest(cfg.mpp, "--mpp" if cfg.mpp is not None else "", cfg.mpp_force)
    if not overwrite and out.exists():
        attrs, why = _reusable_store(out, source, cfg, req)
        if attrs is not None:
            return SlideStatus(source.slide_id, src, SKIPPED, "complete store exists", int(attrs["n_tiles"]),
                               time.perf_counter() - t0)
        if why.startswith(OTHER_PARAMETERS):
            return SlideStatus(source.slide_id, src, FAILED,
                               f"{out}: exists but was {why}; pass --overwrite or use another job folder",
                               0, time.perf_counter() - t0)
    refusal = replace_refusal(out, PATCH_STORE)  # only a patch store is ever replaced at JOB/patches/{id}.zarr
    if refusal:
        return SlideStatus(source.slide_id, src, FAILED, refusal, 0, time.perf_counter() - t0)

    def work() -> SlideStatus:
        n, warnings = _tile(source, out, cfg, req)
        reason = WARNING + "; ".join(warnings) if warnings else ""
        return SlideStatus(source.slide_id, src, DONE, reason, n, time.perf_counter() - t0)

    return guard_slide(source.slide_id, src, "tiling", work)


def _tile(source: SlideSource, out: Path, cfg: TilingConfig, request: MppRequest) -> tuple[int, list[str]]:
    """Tile one slide; (number of tiles, warnings)."""
    with open_slide(source.path, mpp=request.forced, mpp_fallback=request.fallback) as slide:
        warnings = [w for w in [mpp_warning(slide, request)] if w]
        thumb, mask_ds = slide.read_at_mpp(cfg.tissue.mask_mpp)
        mask = detect_tissue(thumb, mask_ds * slide.mpp, cfg.tissue)
        stride = cfg.stride or cfg.tile_size
        grid = make_tile_grid(slide.dimensions, slide.mpp, cfg.target_mpp, cfg.tile_size, stride,
                              mask, mask_ds, cfg.min_tissue_fraction)
        plan = plan_reads(slide, cfg.target_mpp, cfg.tile_size)
        n = len(grid.coords)
        if n == 0:
            mpp_text = f"{slide.mpp:g} µm/px from " + ("the metadata" if slide.mpp_source == "metadata"
                                                        else request.given_by or "an override")
            warnings.append(explain_no_tiles(thumb, mask, mask_ds * slide.mpp,
                                             (slide.dimensions[0] * slide.mpp, slide.dimensions[1] * slide.mpp),
                                             cfg, mpp_text))
        attrs = dict(
            slide_id=source.slide_id, slide_path=str(Path(source.path).resolve()),
            slide_size_bytes=path_size(source.path), slide_hash=file_fingerprint(source.path),
            reader=slide.reader, reader_note=slide.reader_note, vendor=slide.vendor,
            level0_width=slide.dimensions[0], level0_height=slide.dimensions[1],
            mpp=slide.mpp, mpp_source=slide.mpp_source, mpp_given_by=request.given_by if slide.mpp_source != "metadata" else "",
            mpp_metadata=slide.metadata_mpp, mpp_metadata_problem=slide.mpp_problem, target_mpp=cfg.target_mpp,
            tile_size=cfg.tile_size, tile_size_um=cfg.tile_size * cfg.target_mpp, stride=stride,
            tile_size_level0=grid.tile_size_level0, stride_level0=grid.stride_level0,
            read_level=plan.level, read_level_downsample=plan.level_downsample,
            resampled=plan.resample, grid_shape=list(grid.grid_shape),
            tissue=config_to_dict(cfg.tissue), config=config_to_dict(cfg), warnings=warnings,
        )
        with PatchStoreWriter(out, n, cfg.tile_size, attrs, cfg.codec, cfg.jpeg_quality,
                              cfg.tiles_per_chunk, cfg.chunks_per_shard, cfg.jpeg_subsampling) as writer:
            writer.attrs.update(_write_tiles(slide, plan, grid.coords, writer, cfg))
            writer.close(grid.coords, grid.tissue_fraction, mask, mask_ds)
    return n, warnings


#: skipped input entries shown in the terminal (all of them are in the CSV)
SHOWN_SKIPPED = 5


@dataclass
class TileReport(StageReport):
    """The tile stage's report: also the entries of the inputs that are not slides, and run warnings."""

    skipped_entries: list[SkippedEntry] = field(default_factory=list)
    skipped_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """Lines to show the user: run warnings, each slide's warning, and the skipped entries."""
        lines = [f"warning: {w}" for w in self.warnings]
        lines += [f"warning {s.slide_id}: {s.reason[len(WARNING):]}" for s in self.statuses
                  if s.status == DONE and s.reason.startswith(WARNING)]
        if self.skipped_entries:
            n = len(self.skipped_entries)
            what = "1 input entry is not a slide and was" if n == 1 else f"{n} input entries are not slides and were"
            lines.append(f"{what} skipped (listed in {self.skipped_path}):")
            lines += [f"  skipped {e.path}: {e.reason}" for e in self.skipped_entries[:SHOWN_SKIPPED]]
            if len(self.skipped_entries) > SHOWN_SKIPPED:
                lines.append(f"  ... and {len(self.skipped_entries) - SHOWN_SKIPPED} more (all in {self.skipped_path})")
        return lines


def _write_skipped(path: Path, entries: list[SkippedEntry]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "reason"])
    w.writerows([str(e.path), e.reason] for e in entries)
    write_text_atomic(path, buf.getvalue())


def run_tile(
    inputs: Sequence[str | Path],
    job: str | Path,
    cfg: TilingConfig | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TileReport:
    """Tile every slide found in ``inputs`` into ``JOB/patches``; resumable.

    Entries of the input folders that are not slides are listed with their reason in
    ``JOB/status/tile_skipped_inputs.csv``; a run whose tiling parameters differ from the job's
    existing stores is refused (:class:`ConfigError`) unless ``overwrite``.

    ``workers=0`` runs in this process (no Dask, for debugging); otherwise one Dask task per
    slide on a local cluster of ``workers`` processes, or on the cluster at ``scheduler``.
    """
    cfg = cfg or TilingConfig()
    job = Path(job)
    scan = scan_inputs(list(inputs))
    sources = scan.sources
    if not sources:
        why = f" ({len(scan.skipped)} entries skipped, e.g. {scan.skipped[0].path}: {scan.skipped[0].reason})" \
            if scan.skipped else ""
        raise WsiMilError(f"no slides found in {', '.join(str(i) for i in inputs)}{why}")
    requests, warnings = mpp_requests([s.slide_id for s in sources], cfg)
    if not overwrite:
        check_existing_stores(job, sources, cfg, requests)
    check_writable(patches_dir(job), folder=True)  # before any slide is read
    check_writable(status_path(job, "tile"))
    patches_dir(job).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(patches_dir(job))
    record = RunRecord(status_path(job, "tile"))
    skipped_path = status_path(job, "tile_skipped_inputs")
    _write_skipped(skipped_path, scan.skipped)
    items = [(s.slide_id, str(s.path), (s, str(job.resolve()), cfg, overwrite, requests[s.slide_id]))
             for s in sources]
    statuses = map_slides(tile_one_slide, items, record.record, "tile", scheduler, workers, progress)
    return TileReport(statuses, record.path, scan.skipped, skipped_path, warnings)
