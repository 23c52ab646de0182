"""Shared fixtures: the real slides in ../shared/data/slides and temporary job folders.

The shared slides are required: a test that needs them fails (never skips) when they are missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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


#: scale of :func:`cmu_tissue` in µm/px
CMU_TISSUE_MPP = 2.0


@pytest.fixture(scope="session")
def cmu_tissue(cmu_slide: Path) -> np.ndarray:
    """Real H&E of CMU-1-Small-Region.svs at exactly 2 µm/px, (h, w, 3) uint8 (about 740 x 555 px):
    the tissue that test-time TIFF variants (strips, OME, fluorescence look-alikes) are written from."""
    from wsi_mil.slide import open_slide

    with open_slide(cmu_slide) as s:
        rgb, _ = s.read_at_mpp(CMU_TISSUE_MPP)
    return np.ascontiguousarray(rgb)


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


@pytest.fixture()
def dask_scheduler() -> Iterator[str]:
    """A real Dask scheduler and two worker processes on localhost; yields the address."""
    import socket
    import subprocess
    import sys
    import time

    from distributed import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    addr = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")  # workers may start processes
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              **quiet)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", addr, "--nthreads", "1", "--nworkers", "1",
                                           "--no-dashboard"], **quiet))
        deadline = time.time() + 120
        while True:
            try:
                with Client(addr, timeout="5s") as c:
                    if len(c.scheduler_info()["workers"]) >= 2:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("Dask scheduler/workers did not start")
            time.sleep(0.5)
        yield addr
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """One torch thread while a test runs (2 threads on 2 busy shared cores ran ~8x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
