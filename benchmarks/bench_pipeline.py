#!/usr/bin/env python
"""A whole study end to end on a synthetic cohort: time, CPU time and peak memory of every stage.

    python benchmarks/bench_pipeline.py --slides 20 --size 3072
    python benchmarks/bench_pipeline.py --slides 20 --size 8192 --device cuda --encoder resnet50   # GPU node

Runs, in one process and on the same cohort:
1. ``run_study`` (what ``wsi-mil run`` does) into a fresh job, with per-stage wall time, CPU
   time (this process and every child: Dask workers, loader processes) and peak resident memory
   (sum over the process tree, sampled every 50 ms);
2. the same study again: every stage should skip (the cost of resuming a finished study);
3. baseline: the same stages as six separate ``wsi-mil`` commands chained by hand (tile,
   pretrain, extract, train, predict, heatmap) into another fresh job, as a user without
   ``wsi-mil run`` would, timed as a whole.
It prints a Markdown table and the ratios run/baseline and rerun/run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


class TreeMonitor:
    """Samples the resident memory of this process and all its descendants; CPU time of the tree."""

    def __init__(self, interval: float = 0.05) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.rows: list[dict] = []
        self._dead_cpu = 0.0  # CPU of children that ended, from their last sample

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return [self.proc]

    def _sample(self) -> tuple[int, dict[int, float]]:
        rss, cpu = 0, {}
        for p in self._tree():
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        return rss, cpu

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        peak = [0]
        last_cpu: dict[int, float] = {}
        stop = threading.Event()
        rss0, cpu0 = self._sample()
        start_cpu = dict(cpu0)
        last_cpu.update(cpu0)

        def loop() -> None:
            while not stop.wait(self.interval):
                rss, cpu = self._sample()
                peak[0] = max(peak[0], rss)
                last_cpu.update(cpu)

        th = threading.Thread(target=loop, daemon=True)
        t0 = time.perf_counter()
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join()
            rss, cpu = self._sample()
            last_cpu.update(cpu)
            peak[0] = max(peak[0], rss, rss0)
            used = sum(v - start_cpu.get(pid, 0.0) for pid, v in last_cpu.items())
            self.rows.append({"stage": name, "wall": time.perf_counter() - t0, "cpu": used,
                              "peak_mb": peak[0] / 2**20})


def make_study(args: argparse.Namespace, cohort: Path, job: Path):
    from wsi_mil.demo import DemoOptions, demo_study
    from wsi_mil.study import StudyConfig

    opts = DemoOptions(slides=args.slides, size=args.size, arch=args.arch, pretrain_epochs=args.pretrain_epochs,
                       folds=args.folds)
    doc = demo_study(args.out, opts).model_dump(mode="json")
    doc.update(slides=[str(cohort)], labels=str(cohort / "labels.csv"), job=str(job), name="bench", device=args.device)
    if args.encoder != "simclr":
        doc["encoder"] = {"arch": args.encoder, "weights": "random:0"}
        doc["tiling"].update(target_mpp=0.5, tile_size=224, stride=None)
        doc["extract"]["num_workers"] = None
    return StudyConfig.model_validate(doc)


def chained_commands(cfg, study_yaml: Path) -> list[list[str]]:
    """The six stage commands a user would chain, reading their sections from the study file."""
    exe = str(Path(sys.executable).parent / "wsi-mil")
    job = str(cfg.job)
    cmds = [[exe, "tile", *map(str, cfg.slides), "-o", job, "--config", str(study_yaml), "--no-progress"]]
    if cfg.encoder.is_simclr:
        enc = str(cfg.job / "encoders" / "simclr")
        cmds.append([exe, "pretrain", job, "-o", enc, "--config", str(study_yaml), "--device", cfg.device,
                     "--no-progress"])
        enc_args = ["--weights", enc]
    else:
        enc_args = ["--encoder", cfg.encoder.arch, "--weights", cfg.encoder.weights]
    cmds.append([exe, "extract", job, *enc_args, "--config", str(study_yaml)])
    return cmds


def run_chained(cfg, study_yaml: Path) -> float:
    """Wall seconds of the stage commands run one after the other (train/predict/heatmap after extract)."""
    exe = str(Path(sys.executable).parent / "wsi-mil")
    t0 = time.perf_counter()
    for cmd in chained_commands(cfg, study_yaml):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    feats = next((cfg.job / "features").iterdir())
    run = cfg.job / "models" / "bench"
    rest = [
        [exe, "train", str(feats), "--labels", str(cfg.labels), "-o", str(run), "--config", str(study_yaml), "--quiet"],
        [exe, "predict", str(run), str(feats), "-o", str(cfg.job / "predictions" / "bench.csv"), "--quiet",
         "--device", cfg.device],
        [exe, "heatmap", str(run), str(cfg.job), "-o", str(cfg.job / "heatmaps" / "bench"), "--labels",
         str(cfg.labels), "--config", str(study_yaml), "--no-progress"],
    ]
    (cfg.job / "predictions").mkdir(parents=True, exist_ok=True)
    for cmd in rest:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", type=int, default=20, help="synthetic slides [20]")
    p.add_argument("--size", type=int, default=3072, help="slide side in px at 0.5 um/px [3072]")
    p.add_argument("--out", type=Path, default=Path("/tmp/wsi_mil_bench_pipeline"), help="work folder")
    p.add_argument("--encoder", default="simclr",
                   help="simclr (demo settings: SimCLR on 64 px tiles) or a timm arch with random weights "
                        "at 224 px (e.g. resnet50 on a GPU node) [simclr]")
    from wsi_mil.demo import DemoOptions

    d = DemoOptions()
    p.add_argument("--arch", default=d.arch, help=f"SimCLR architecture [{d.arch}, as the demo]")
    p.add_argument("--pretrain-epochs", type=int, default=d.pretrain_epochs, help=f"SimCLR epochs [{d.pretrain_epochs}]")
    p.add_argument("--folds", type=int, default=d.folds, help=f"cross-validation folds [{d.folds}]")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=int, default=None, help="local workers for tile/heatmap [one per core]")
    p.add_argument("--no-baseline", action="store_true", help="skip the chained-commands baseline")
    args = p.parse_args(argv)

    from wsi_mil.pipeline import run_study
    from wsi_mil.study import study_to_yaml
    from wsi_mil.synth import make_cohort

    args.out.mkdir(parents=True, exist_ok=True)
    cohort = args.out / f"cohort_{args.slides}x{args.size}"
    t0 = time.perf_counter()
    make_cohort(cohort, args.slides, size=(args.size, args.size), lesion_fraction=DemoOptions().lesion_fraction, seed=0)
    t_cohort = time.perf_counter() - t0
    job = args.out / "job_run"
    shutil.rmtree(job, ignore_errors=True)
    cfg = make_study(args, cohort, job)
    mon = TreeMonitor()
    t0 = time.perf_counter()
    report = run_study(cfg, workers=args.workers, progress=False, monitor=mon.stage)
    t_run = time.perf_counter() - t0
    rows = list(mon.rows)
    mon.rows.clear()
    t0 = time.perf_counter()
    again = run_study(cfg, workers=args.workers, progress=False, monitor=mon.stage)
    t_rerun = time.perf_counter() - t0
    skipped = all(r.status == "skipped" for r in again.stages)

    t_chain = None
    if not args.no_baseline:
        job2 = args.out / "job_chained"
        shutil.rmtree(job2, ignore_errors=True)
        cfg2 = cfg.model_copy(update={"job": job2})
        job2.mkdir(parents=True)
        study_yaml = job2 / "study_input.yaml"
        study_yaml.write_text(study_to_yaml(cfg2), encoding="utf-8")
        t_chain = run_chained(cfg2, study_yaml)

    print(f"# bench_pipeline: {args.slides} slides of {args.size} px, encoder {args.encoder}, device {args.device}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; machine: {platform.node()} {platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}")
    print(f"command: python benchmarks/bench_pipeline.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"cohort synthesis: {t_cohort:.1f} s (not part of the study; 0 when reused from an earlier run)")
    print()
    print("| stage | status | wall s | CPU s (process tree) | peak RSS MB (process tree) | detail |")
    print("|---|---|---|---|---|---|")
    for r, s in zip(rows, report.stages):
        print(f"| {r['stage']} | {s.status} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_mb']:.0f} | {s.detail} |")
    print(f"| **total** | | {t_run:.1f} | {sum(r['cpu'] for r in rows):.1f} | {max(r['peak_mb'] for r in rows):.0f} | "
          f"AUC {report.auc if report.auc is None else round(report.auc, 3)} |")
    print()
    print(f"re-run of the finished study: {t_rerun:.1f} s, every stage skipped: {skipped}; "
          f"ratio rerun/run = {t_rerun / t_run:.3f}")
    if t_chain is not None:
        print(f"baseline, the six stage commands chained: {t_chain:.1f} s; ratio run/chained = {t_run / t_chain:.2f}")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"peak RSS of this process over the whole benchmark: {ru.ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
