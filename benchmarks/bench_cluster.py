#!/usr/bin/env python
"""One study through Slurm (``pipelines/slurm_study.py``) beside the same study on a local Dask cluster.

    sudo python benchmarks/bench_cluster.py --slides 6 --size 2048

Needs root: it starts a throwaway one-node Slurm cluster (``pipelines/local_slurm.py``; installs
``slurm-wlm`` and ``munge`` when missing) and stops its daemons at the end. In one run, on one
synthetic cohort, with the same number of workers (``--workers``, one core each):
1. baseline: ``wsi-mil run STUDY --workers N`` (a local Dask cluster of N processes);
2. ``slurm_study.py STUDY --cpu-jobs N --cpu-cores 1`` (N one-core Slurm jobs, one worker each,
   ``device: cpu`` so extraction runs on them too, everything on loopback).
It prints both wall times and their ratio, each stage's seconds (from ``status/pipeline.json``),
the overhead of starting the jobs (``sbatch`` until the first and until every worker has
connected, and the recipe's time outside the study), the local cluster's start-up for
comparison, and peak memory (driver tree; Slurm workers sampled separately).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "pipelines"))

from local_slurm import LocalSlurm  # noqa: E402 - pipelines/ is a folder of scripts

from wsi_mil.jobdir import pipeline_record_path  # noqa: E402


class PeakRss:
    """Samples every 100 ms the summed resident memory of process trees: ``roots()`` gives their pids."""

    def __init__(self, roots: Any) -> None:
        self.roots = roots
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self.roots():
                try:
                    root = psutil.Process(pid)
                    for p in [root, *root.children(recursive=True)]:
                        total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def write_study(path: Path, cohort: Path, job: Path) -> Path:
    """The benchmark's study: random-init test_resnet on 96 px tiles at 2 um/px, CHOWDER, heatmaps, on the CPU."""
    doc = {
        "name": "bench", "slides": str(cohort), "labels": str(cohort / "labels.csv"), "job": str(job), "device": "cpu",
        "encoder": {"arch": "test_resnet", "weights": "random:0"},
        "tiling": {"target_mpp": 2.0, "tile_size": 96, "min_tissue_fraction": 0.5},
        "extract": {"batch_size": 64, "num_workers": 0},
        "train": {"head": "chowder", "head_options": {"r": 2, "n_members": 2}, "folds": 2, "max_epochs": 5,
                  "min_epochs": 1, "patience": 2, "batch_size": 4, "tiles_per_bag": None, "bootstrap": 20,
                  "tune": "off"},
        "heatmap": {"thumbnail_px": 256, "overlay_width": 400, "montage_tiles": 2, "montage_cell": 32},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def stage_seconds(job: Path) -> dict[str, float]:
    """Seconds of each stage of the last run, from the study's record."""
    doc = json.loads(pipeline_record_path(job).read_text())
    return {s["name"]: float(s["seconds"]) for s in doc["last_run"]["stages"]}


def run_local(study: Path, workers: int) -> dict[str, Any]:
    """Baseline: ``wsi-mil run`` with a local cluster of ``workers`` processes."""
    cmd = [str(Path(sys.executable).parent / "wsi-mil"), "run", str(study), "--workers", str(workers), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakRss(lambda: [proc.pid]) as rss:
        out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"local study failed:\n{out[-3000:]}")
    return {"wall": wall, "rss_driver": rss.mib}


def run_slurm(study: Path, slurm: LocalSlurm, workers: int, logs: Path) -> dict[str, Any]:
    """The study through the recipe on ``slurm``: wall time, job start-up and peak memory."""
    from distributed import Client

    cmd = [sys.executable, str(ROOT / "pipelines" / "slurm_study.py"), str(study), "--cpu-jobs", str(workers),
           "--cpu-cores", "1", "--cpu-memory", "2GB", "--walltime", "01:00:00", "--interface", "lo",
           "--log-directory", str(logs)]
    marks: dict[str, float] = {}
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=slurm.env)
    address: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter()
            lines.append(line)
            if line.startswith("dask scheduler: "):
                address.append(line.split(": ", 1)[1].strip())
                marks["submitted"] = now  # printed just before sbatch
            elif line.startswith("+ ") and " run " in line:
                marks["study_start"] = now

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def roots() -> list[int]:  # the driver: the recipe and its wsi-mil run
        return [proc.pid]

    def worker_roots() -> list[int]:  # the Slurm jobs' dask workers (children of slurmstepd, not ours)
        out = []
        for p in psutil.process_iter(["cmdline"]):
            cmdline = p.info.get("cmdline") or []
            if any("dask_worker" in c for c in cmdline) and address and any(address[0] in c for c in cmdline):
                out.append(p.pid)
        return out

    with PeakRss(roots) as rss, PeakRss(worker_roots) as wrss:
        while not address and proc.poll() is None:
            time.sleep(0.05)
        if address:
            with Client(address[0], timeout="60s") as client:
                while proc.poll() is None:
                    n = len(client.scheduler_info(n_workers=-1)["workers"])
                    if n >= 1 and "first_worker" not in marks:
                        marks["first_worker"] = time.perf_counter()
                    if n >= workers:
                        marks["all_workers"] = time.perf_counter()
                        break
                    time.sleep(0.05)
        proc.wait()
        reader.join(10)
    end = time.perf_counter()
    if proc.returncode != 0:
        raise SystemExit("slurm study failed:\n" + "".join(lines)[-3000:])
    return {"wall": end - t0, "marks": {k: v - t0 for k, v in marks.items()}, "rss_driver": rss.mib,
            "rss_workers": wrss.mib}


def local_cluster_start(workers: int) -> float:
    """Seconds to start a local Dask cluster of ``workers`` processes (what ``wsi-mil run`` pays)."""
    code = ("import time; t = time.perf_counter()\nfrom distributed import Client, LocalCluster\n"
            f"c = LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True, dashboard_address=':0')\n"
            f"Client(c).wait_for_workers({workers}); print(time.perf_counter() - t); c.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", type=int, default=6)
    p.add_argument("--size", type=int, default=2048, help="slide side in px at 0.5 um/px [2048]")
    p.add_argument("--workers", type=int, default=2, help="workers (local processes = one-core Slurm jobs) [2]")
    p.add_argument("--out", type=Path, default=ROOT / "bench_output" / "cluster")
    a = p.parse_args()
    from wsi_mil.synth import make_cohort

    load_before = os.getloadavg()
    out = a.out.resolve()
    for sub in ("local", "slurm", "slurm-files"):
        shutil.rmtree(out / sub, ignore_errors=True)
    cohort = make_cohort(out / f"cohort-{a.slides}-{a.size}", a.slides, positive_fraction=0.5, size=(a.size, a.size),
                         mpp=0.5, lesion_fraction=(0.06, 0.1), seed=1)
    local = run_local(write_study(out / "local" / "study.yaml", cohort, out / "local" / "job"), a.workers)
    local["stages"] = stage_seconds(out / "local" / "job")
    local_start = local_cluster_start(a.workers)
    slurm = LocalSlurm(out / "slurm-files", cpus=a.workers)
    t = time.perf_counter()
    slurm.start()
    daemons = time.perf_counter() - t
    try:
        res = run_slurm(write_study(out / "slurm" / "study.yaml", cohort, out / "slurm" / "job"), slurm, a.workers,
                        out / "slurm" / "logs")
    finally:
        slurm.stop()
    res["stages"] = stage_seconds(out / "slurm" / "job")
    m = res["marks"]
    print(f"\n## {a.slides} slides of {a.size} px, {a.workers} workers of one core each "
          f"({psutil.cpu_count()} cores here)\n")
    print("| | local Dask cluster (baseline) | Slurm (slurm_study.py) | Slurm / local |")
    print("|---|---|---|---|")
    print(f"| whole command, s | {local['wall']:.1f} | {res['wall']:.1f} | {res['wall'] / local['wall']:.2f} |")
    for stage in local["stages"]:
        lo, sl = local["stages"][stage], res["stages"].get(stage, float("nan"))
        print(f"| {stage}, s | {lo:.1f} | {sl:.1f} | {sl / lo:.2f} |")
    outside_local = local["wall"] - sum(local["stages"].values())
    outside_slurm = res["wall"] - sum(res["stages"].values())
    print(f"| outside the stages (start-up, workers, shut-down), s | {outside_local:.1f} | {outside_slurm:.1f} | "
          f"{outside_slurm / outside_local:.2f} |")
    print(f"| peak RSS, driver tree, MiB | {local['rss_driver']:.0f} (workers included) | {res['rss_driver']:.0f} | |")
    print(f"| peak RSS, Slurm workers, MiB | | {res['rss_workers']:.0f} | |")
    print(f"\nstarting the jobs: sbatch to first worker connected {m['first_worker'] - m['submitted']:.1f} s, "
          f"to all {a.workers} workers {m['all_workers'] - m['submitted']:.1f} s; recipe start to study start "
          f"{m['study_start']:.1f} s; local cluster start-up (baseline) {local_start:.1f} s; "
          f"one-node Slurm daemons up in {daemons:.1f} s (not counted)")
    load_after = os.getloadavg()
    print(f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after")


if __name__ == "__main__":
    main()
