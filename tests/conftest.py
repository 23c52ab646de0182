"""Shared fixtures: the real slides in ../shared/data/slides and temporary job folders.

The shared slides are required: a test that needs them fails (never skips) when they are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_SLIDES = Path(os.environ.get("WSI_MIL_SHARED_SLIDES", ROOT.parent / "shared" / "data" / "slides"))
BUNDLED_SAMPLE = ROOT / "wsi_mil" / "data" / "CMU-1-Small-Region.svs"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_slides() -> Path:
    """The folder of real test slides; fails loudly if absent."""
    if not (SHARED_SLIDES / "CMU-1-Small-Region.svs").is_file():
        pytest.fail(f"real test slides not found at {SHARED_SLIDES}: clone ../shared beside the project")
    return SHARED_SLIDES


@pytest.fixture(scope="session")
def cmu_slide(shared_slides: Path) -> Path:
    """CMU-1-Small-Region.svs: 2220 x 2967 px, 0.499 mpp, real H&E."""
    return shared_slides / "CMU-1-Small-Region.svs"


@pytest.fixture()
def job(tmp_path: Path) -> Path:
    """An empty job folder."""
    d = tmp_path / "job"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic cohort, generated once per session (``wsi_mil.synth.make_cohort``).

    8 slides of 3072 x 3072 px at 0.5 mpp (4 levels: downsamples 1, 2, 4, 8), 4 positive, seed 0;
    lesions cover 4-8% of the tissue, so each positive slide has several 224 px lesion tiles.
    Holds ``slide_XXX.tiff``, ``labels.csv`` (slide_id,label,case_id), ``cohort.json`` and
    ``ground_truth/`` (see ``wsi_mil.synth.load_lesion_mask``). Treat it as read-only.
    """
    from wsi_mil.synth import make_cohort

    return make_cohort(tmp_path_factory.mktemp("synth") / "cohort", 8, positive_fraction=0.5,
                       size=(3072, 3072), mpp=0.5, lesion_fraction=(0.04, 0.08), seed=0)
