"""Real H&E tiles for the stain tests, read with OpenSlide from ../shared/data/slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_mil.slide import open_slide
from wsi_mil.stain.base import optical_density

#: the two real H&E slides: a 20x Aperio JPEG slide and a TCGA JPEG 2000 slide (different stains)
SLIDES = ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs")


def read_tissue_tiles(path: Path, size: int, n: int, stride: int) -> np.ndarray:
    """Up to ``n`` level-0 tiles (n, size, size, 3) uint8 on a ``stride`` grid, most-stained first
    among those that are at least half tissue (OD >= 0.15 in some channel)."""
    tiles, scores = [], []
    with open_slide(path, mpp_fallback=0.5) as s:
        w, h = s.dimensions
        for y in range(0, h - size, stride):
            for x in range(0, w - size, stride):
                t = s.read_region((x, y), 0, (size, size))
                tissue = np.any(optical_density(t, 240) >= 0.15, axis=-1).mean()
                if tissue >= 0.5:
                    tiles.append(t)
                    scores.append(tissue)
    order = np.argsort(-np.asarray(scores), kind="stable")[:n]
    return np.stack([tiles[i] for i in sorted(order)])


@pytest.fixture(scope="session", params=SLIDES)
def real_tiles(request: pytest.FixtureRequest, shared_slides: Path) -> np.ndarray:
    """12 tissue tiles of 224 px from one real slide (each slide once per session)."""
    return read_tissue_tiles(shared_slides / request.param, 224, 12, 320)


@pytest.fixture(scope="session")
def cmu_tiles(shared_slides: Path) -> np.ndarray:
    """48 tissue tiles of 64 px from CMU-1-Small-Region.svs (for patch stores)."""
    return read_tissue_tiles(shared_slides / "CMU-1-Small-Region.svs", 64, 48, 160)


@pytest.fixture(scope="session")
def both_slides(shared_slides: Path) -> tuple[np.ndarray, np.ndarray]:
    """12 tissue tiles of 224 px from each of :data:`SLIDES`."""
    a, b = (read_tissue_tiles(shared_slides / s, 224, 12, 320) for s in SLIDES)
    return a, b
