"""Helpers shared by the tile-decoding tests: random read windows, and the tile stage run with a
chosen decoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.stores.patches import PatchStore, open_patch_store
from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.stage import run_tile


def _random_regions(w: int, h: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    out = [(w - 37, h - 41, 80, 90), (-20, -30, 64, 64), (0, 0, w, h)]  # edges, outside, whole level
    for _ in range(n):
        out.append((int(rng.integers(-40, w)), int(rng.integers(-40, h)), int(rng.integers(1, 400)),
                    int(rng.integers(1, 400))))
    return out


@pytest.fixture()
def random_regions() -> Callable[..., list[tuple[int, int, int, int]]]:
    """``(w, h, n, seed) -> windows (x, y, w, h)``: the level's edges, a window outside it, the whole
    level and ``n`` random windows (some partly outside)."""
    return _random_regions


@pytest.fixture()
def tile_with(monkeypatch: pytest.MonkeyPatch) -> Callable[..., PatchStore]:
    """``(slide, job, cfg, **env) -> store``: the tile stage on one slide with ``WSI_MIL_TILE_{KEY}``
    set from ``env`` (decoder, threads, reduced, device; the others unset)."""

    def run(path: Path, job: Path, cfg: TilingConfig, **env: str) -> PatchStore:
        for k in ("DECODER", "THREADS", "REDUCED", "DEVICE"):
            monkeypatch.delenv(f"WSI_MIL_TILE_{k}", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(f"WSI_MIL_TILE_{k.upper()}", v)
        rep = run_tile([path], job, cfg, workers=0, progress=False)
        assert rep.statuses[0].status == "done", rep.statuses[0].reason
        return open_patch_store(job / "patches" / f"{rep.statuses[0].slide_id}.zarr")

    return run
