"""Helpers shared by the benchmark scripts: timing, peak memory, machine description, output."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / "bench_output"


def machine(device: object | None = None) -> str:
    """One line: CPU model, cores, memory, Python; torch and the GPU when ``device`` is CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = len(os.sched_getaffinity(0))
    line = f"{cpu}, {cores} cores, {mem:.0f} GiB, Python {platform.python_version()}"
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        line += f", {torch.cuda.get_device_name(torch.device(str(device)))}, torch {torch.__version__}"
    return line


def known(value: T | None, what: str) -> T:
    """``value``, or exit with a one-line error when a metric is undefined (one class only, no comparable pairs)."""
    if value is None:
        raise SystemExit(f"benchmark: {what} is undefined on this data (one class only, or no comparable pairs)")
    return value


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def run_isolated(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run Python ``code`` in a fresh interpreter; it must print one JSON line last.

    Returns that JSON plus ``peak_rss_mb`` of the child (its own high-water mark).
    """
    wrapper = (
        "import json, resource\n" + code +
        "\nRESULT['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(RESULT))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"isolated run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a small aligned table."""
    print(f"\n== {title} ==")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
