"""Shared by the cluster recipes: build the `wsi-mil run` command and run it.

The recipes only start Dask clusters; the study itself is always the same `wsi-mil run`
command, pointed at one scheduler with ``--scheduler``: tile and heatmap tasks run on any of its
workers, extraction tasks on its GPU workers (Dask resource ``GPU=1``) unless the study extracts
on the CPU. (``--extract-scheduler``, a second scheduler for extraction, is still accepted.)
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def wsi_mil_executable() -> str:
    """The ``wsi-mil`` next to this Python (a venv), else the one on PATH."""
    here = Path(sys.executable).parent / "wsi-mil"
    return str(here) if here.is_file() else (shutil.which("wsi-mil") or "wsi-mil")


def run_command(config: str, sets: list[str], scheduler: str | None, extract_scheduler: str | None,
                extra: list[str] | None = None) -> list[str]:
    """``wsi-mil run CONFIG [--set ...] --scheduler A --extract-scheduler B [extra]`` as an argv list."""
    cmd = [wsi_mil_executable(), "run", config]
    for s in sets:
        cmd += ["--set", s]
    if scheduler:
        cmd += ["--scheduler", scheduler]
    if extract_scheduler:
        cmd += ["--extract-scheduler", extract_scheduler]
    return cmd + list(extra or [])


def add_worker_specs(cluster: Any, specs: dict[str, dict[str, Any]]) -> None:
    """Add workers of other kinds to a running ``SpecCluster`` (its scheduler): ``specs`` maps a
    name to ``{"cls": ..., "options": {...}}`` (``"group"`` too for a job of several workers), as in
    ``SpecCluster.worker_spec``; they start now (their errors are raised here). Do not call the
    cluster's ``scale()`` afterwards: it would replace them with its own kind."""
    cluster.worker_spec.update(specs)
    cluster.sync(cluster._correct_state)


def show(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def run(cmd: list[str]) -> int:
    """Run the study; its exit status (0 ok, 1 some slides failed, 2 bad input)."""
    print(f"+ {show(cmd)}", flush=True)
    return subprocess.call(cmd)


def study_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every recipe takes: the study YAML and ``--set`` overrides for ``wsi-mil run``."""
    p = argparse.ArgumentParser(description=description.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="study YAML for wsi-mil run")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override passed on to wsi-mil run (repeatable)")
    return p
