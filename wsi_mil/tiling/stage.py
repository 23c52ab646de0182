"""The tile stage: slides -> tissue mask -> tile grid -> one zarr patch store per slide.

Each slide is one Dask task (:func:`tile_one_slide`) that never raises for bad input: it returns
a :class:`SlideStatus`. Tiles are read at an exact physical scale from the cheapest pyramid level
at least as fine as the target, resampled with an area filter when the level's scale differs
from the target by more than half a pixel over a tile, and streamed to the store chunk by chunk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_mil.atomic import remove_stale_temporaries
from wsi_mil.config import config_to_dict
from wsi_mil.errors import WsiMilError
from wsi_mil.jobdir import patch_store_path, patches_dir, status_path
from wsi_mil.parallel import map_slides
from wsi_mil.runrecord import DONE, FAILED, SKIPPED, RunRecord, SlideStatus, StageReport, guard_slide
from wsi_mil.slide import Slide, SlideSource, open_slide, scan_slides
from wsi_mil.stores.common import file_fingerprint, path_size
from wsi_mil.stores.patches import PatchStoreWriter, validate_patch_store
from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.grid import make_tile_grid
from wsi_mil.tiling.tissue import detect_tissue


@dataclass(frozen=True)
class ReadPlan:
    """How tiles are read: pyramid level, region size at that level (float), resampling."""

    level: int
    level_downsample: float
    region_size: float  # pixels at `level` covering one tile
    resample: bool


def plan_reads(slide: Slide, target_mpp: float, tile_size: int) -> ReadPlan:
    """Choose the coarsest level at least as fine as ``target_mpp`` (µm/px); resample only if needed."""
    level = slide.best_level_for_mpp(target_mpp)
    ds = slide.level_downsamples[level]
    region = tile_size * target_mpp / slide.mpp / ds
    resample = abs(region - tile_size) > 0.5
    return ReadPlan(level, ds, region, resample)


def read_tile(slide: Slide, x: int, y: int, plan: ReadPlan, tile_size: int) -> np.ndarray:
    """One tile (S, S, 3) uint8 whose top-left corner is level-0 (x, y)."""
    if not plan.resample:
        return slide.read_region((x, y), plan.level, (tile_size, tile_size))
    ds = plan.level_downsample
    lx, ly = x / ds, y / ds
    ix, iy = int(math.floor(lx)), int(math.floor(ly))
    n = int(math.ceil(plan.region_size + (lx - ix))) + 1
    m = int(math.ceil(plan.region_size + (ly - iy))) + 1
    region = slide.read_region((int(round(ix * ds)), int(round(iy * ds))), plan.level, (n, m))
    box = (lx - ix, ly - iy, lx - ix + plan.region_size, ly - iy + plan.region_size)
    filt = Image.Resampling.BOX if plan.region_size > tile_size else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(region).resize((tile_size, tile_size), filt, box=box))


OTHER_PARAMETERS = "made with other tiling parameters"


def _reusable_store(out: Path, source: SlideSource, cfg: TilingConfig) -> tuple[dict | None, str]:
    """(the store's attributes if it is valid and made from the same slide and config, else None;
    the reason it cannot be reused)."""
    try:
        _, attrs = validate_patch_store(out)
    except WsiMilError as exc:
        return None, str(exc)
    if attrs.get("config") != config_to_dict(cfg):
        return None, OTHER_PARAMETERS
    if attrs.get("slide_size_bytes") != path_size(source.path):
        return None, "made from another version of the slide file"
    return attrs, ""


def tile_one_slide(source: SlideSource, job: str | Path, cfg: TilingConfig, overwrite: bool = False) -> SlideStatus:
    """Tile one slide into ``JOB/patches/{slide_id}.zarr``; never raises for bad input."""
    t0 = time.perf_counter()
    out = patch_store_path(job, source.slide_id)
    src = str(source.path)
    if not overwrite and out.exists():
        attrs, why = _reusable_store(out, source, cfg)
        if attrs is not None:
            return SlideStatus(source.slide_id, src, SKIPPED, "complete store exists", int(attrs["n_tiles"]),
                               time.perf_counter() - t0)
        if why == OTHER_PARAMETERS:
            return SlideStatus(source.slide_id, src, FAILED,
                               f"{out}: exists but was {why}; pass --overwrite or use another job folder",
                               0, time.perf_counter() - t0)

    def work() -> SlideStatus:
        n = _tile(source, out, cfg)
        return SlideStatus(source.slide_id, src, DONE, "", n, time.perf_counter() - t0)

    return guard_slide(source.slide_id, src, "tiling", work)


def _tile(source: SlideSource, out: Path, cfg: TilingConfig) -> int:
    with open_slide(source.path, mpp=cfg.mpp) as slide:
        thumb, mask_ds = slide.read_at_mpp(cfg.tissue.mask_mpp)
        mask = detect_tissue(thumb, mask_ds * slide.mpp, cfg.tissue)
        stride = cfg.stride or cfg.tile_size
        grid = make_tile_grid(slide.dimensions, slide.mpp, cfg.target_mpp, cfg.tile_size, stride,
                              mask, mask_ds, cfg.min_tissue_fraction)
        plan = plan_reads(slide, cfg.target_mpp, cfg.tile_size)
        attrs = dict(
            slide_id=source.slide_id, slide_path=str(Path(source.path).resolve()),
            slide_size_bytes=path_size(source.path), slide_hash=file_fingerprint(source.path),
            reader=slide.reader, vendor=slide.vendor,
            level0_width=slide.dimensions[0], level0_height=slide.dimensions[1],
            mpp=slide.mpp, mpp_source=slide.mpp_source, target_mpp=cfg.target_mpp,
            tile_size=cfg.tile_size, tile_size_um=cfg.tile_size * cfg.target_mpp, stride=stride,
            tile_size_level0=grid.tile_size_level0, stride_level0=grid.stride_level0,
            read_level=plan.level, read_level_downsample=plan.level_downsample,
            resampled=plan.resample, grid_shape=list(grid.grid_shape),
            tissue=config_to_dict(cfg.tissue), config=config_to_dict(cfg),
        )
        n = len(grid.coords)
        with PatchStoreWriter(out, n, cfg.tile_size, attrs, cfg.codec, cfg.jpeg_quality,
                              cfg.tiles_per_chunk, cfg.chunks_per_shard, cfg.jpeg_subsampling) as writer:
            batch = np.empty((min(max(n, 1), writer.chunk), cfg.tile_size, cfg.tile_size, 3), dtype=np.uint8)
            fill = 0
            for x, y in grid.coords:
                batch[fill] = read_tile(slide, int(x), int(y), plan, cfg.tile_size)
                fill += 1
                if fill == len(batch):
                    writer.append(batch)
                    fill = 0
            if fill:
                writer.append(batch[:fill])
            writer.close(grid.coords, grid.tissue_fraction, mask, mask_ds)
    return n


def run_tile(
    inputs: Sequence[str | Path],
    job: str | Path,
    cfg: TilingConfig | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> StageReport:
    """Tile every slide found in ``inputs`` into ``JOB/patches``; resumable.

    ``workers=0`` runs in this process (no Dask, for debugging); otherwise one Dask task per
    slide on a local cluster of ``workers`` processes, or on the cluster at ``scheduler``.
    """
    cfg = cfg or TilingConfig()
    job = Path(job)
    sources = scan_slides(list(inputs))
    if not sources:
        raise WsiMilError(f"no slides found in {', '.join(str(i) for i in inputs)}")
    patches_dir(job).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(patches_dir(job))
    record = RunRecord(status_path(job, "tile"))
    items = [(s.slide_id, str(s.path), (s, str(job.resolve()), cfg, overwrite)) for s in sources]
    statuses = map_slides(tile_one_slide, items, record.record, "tile", scheduler, workers, progress)
    return StageReport(statuses, record.path)
