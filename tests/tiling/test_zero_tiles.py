"""A slide that gives no tiles is done, with a warning that says the likely reason and what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_mil.cli import main
from wsi_mil.stores.patches import open_patch_store
from wsi_mil.tiling.config import TilingConfig, TissueConfig
from wsi_mil.tiling.diagnose import explain_no_tiles
from wsi_mil.tiling.stage import run_tile
from wsi_mil.tiling.tissue import detect_tissue

MPP = 2.0  # = conftest.CMU_TISSUE_MPP, the scale of ``cmu_tissue``


@pytest.fixture(scope="module")
def tissue(cmu_tissue: np.ndarray) -> np.ndarray:
    """Real H&E at exactly 2 µm/px (the shared ``cmu_tissue``)."""
    return cmu_tissue


def _fluorescence(tissue: np.ndarray) -> np.ndarray:
    """A DAPI-like rendering of real tissue: dim blue signal where the stain is, near-black glass."""
    signal = 255.0 - tissue.astype(np.float32).mean(axis=2)  # ~15 on glass, ~100 on tissue
    return np.stack([signal * 0.1, signal * 0.15, signal * 0.8], axis=2).clip(0, 255).astype(np.uint8)


def _write(path: Path, rgb: np.ndarray) -> Path:
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(128, 128), compression="zlib",
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return path


def test_fluorescence_slide_warns_and_names_the_method(tissue: np.ndarray, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    slide = _write(tmp_path / "fluo.tif", _fluorescence(tissue))
    args = [str(slide), "--target-mpp", str(MPP), "--tile-size", "56", "--workers", "0", "--no-progress"]
    assert main(["tile", *args, "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "warning fluo: 0 tiles: the background is dark" in out and "fluorescence" in out
    assert "--set tissue.method=otsu-fluorescence" in out
    store = open_patch_store(tmp_path / "a" / "patches" / "fluo.zarr")
    assert store.n_tiles == 0 and "fluorescence" in store.attrs["warnings"][0]
    # the advice works
    assert main(["tile", *args, "-o", str(tmp_path / "b"), "--set", "tissue.method=otsu-fluorescence"]) == 0
    assert open_patch_store(tmp_path / "b" / "patches" / "fluo.zarr").n_tiles > 10
    assert "warning" not in capsys.readouterr().out


def test_fluorescence_mask_follows_the_tissue(tissue: np.ndarray) -> None:
    brightfield = detect_tissue(tissue, MPP)
    fluo = detect_tissue(_fluorescence(tissue), MPP, TissueConfig(method="otsu-fluorescence"))
    assert brightfield.sum() > 1000 and (brightfield & fluo).sum() / brightfield.sum() > 0.95
    stained = tissue.mean(axis=2) < 0.85 * 255  # what the fluorescence mask adds is stained too (ink, dark folds)
    assert stained[fluo].mean() > 0.8 and fluo.mean() < 0.4


def test_reasons_for_other_empty_slides(tissue: np.ndarray, shared_slides: Path, job: Path) -> None:
    cfg = TilingConfig(target_mpp=MPP, tile_size=56)
    size = (tissue.shape[1] * MPP, tissue.shape[0] * MPP)
    none = np.zeros(tissue.shape[:2], dtype=bool)
    blank = np.full_like(tissue, 245)
    assert "no tissue found" in explain_no_tiles(blank, none, MPP, size, cfg, "x") and "blank" in \
        explain_no_tiles(blank, none, MPP, size, cfg, "x")
    gray = np.repeat(tissue.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert "tissue.method=otsu-od" in explain_no_tiles(gray, none, MPP, size, cfg, "x")
    some = none.copy()
    some[10:14, 10:14] = True
    assert "lower --min-tissue" in explain_no_tiles(tissue, some, MPP, size, cfg, "x")
    report = run_tile([shared_slides / "small.svs"], job, TilingConfig(), workers=0, progress=False)
    (st,) = report.statuses
    assert st.status == "done" and st.n_tiles == 0
    assert st.reason.startswith("warning: 0 tiles: the slide (8 x 8 µm at 0.499 µm/px from the metadata) is "
                                "smaller than one tile (112 µm)")
