"""A real one-node Slurm cluster for the ``cluster`` tests (``pytest -m cluster``; run by ``.ci/run``).

The session fixture installs Debian's ``slurm-wlm`` and ``munge`` when missing, starts ``munged``,
``slurmctld`` and ``slurmd`` from ``pipelines/local_slurm.py`` (files under a temporary folder,
free ports on 127.0.0.1) and stops the daemons it started by their process ids. It skips only
when not root; any other failure to start is a test failure.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
if str(PIPELINES) not in sys.path:
    sys.path.append(str(PIPELINES))

from local_slurm import LocalSlurm  # noqa: E402 - pipelines/ is a folder of scripts, not a package

#: CPUs the test node declares: two one-core jobs run at once (one can be cancelled mid-study)
NODE_CPUS = 2


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    """A started one-node cluster (partition ``debug``); ``.env`` points Slurm commands at it."""
    if os.geteuid() != 0:
        pytest.skip("the cluster tests start munged, slurmctld and slurmd as root: run them as root")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=NODE_CPUS, memory_mb=8192)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
