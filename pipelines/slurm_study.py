#!/usr/bin/env python
"""Run a study on a Slurm cluster through dask-jobqueue: CPU jobs tile, GPU jobs extract.

Two Dask clusters are started from this process, each a set of Slurm jobs:
- CPU workers (``--cpu-jobs`` jobs of ``--cpu-cores`` cores, one worker process per core) for the
  slide-parallel CPU stages: tile and heatmap;
- GPU workers (``--gpu-jobs`` jobs with one GPU each, one worker per job) for extraction.
Then ``wsi-mil run CONFIG --scheduler CPU --extract-scheduler GPU`` runs the study; pretrain and
train run in this process, so start this script inside a GPU allocation (see
``slurm_study.sbatch``) or set ``--set device=cpu`` for the MIL head on a login node.

    python pipelines/slurm_study.py configs/resnet50_chowder.yaml --cpu-jobs 4 --gpu-jobs 2 \\
        --queue cpu --gpu-queue gpu --set slides=/data/slides --set job=/scratch/study1

``--dry-run`` prints both job scripts and the command, submits nothing.
"""

from __future__ import annotations

import argparse
import sys

from common import run, run_command, show, study_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = study_parser(__doc__)
    p.add_argument("--cpu-jobs", type=int, default=4, help="Slurm jobs of CPU workers [4]")
    p.add_argument("--cpu-cores", type=int, default=16, help="cores per CPU job (= worker processes) [16]")
    p.add_argument("--cpu-memory", default="64GB", help="memory per CPU job [64GB]")
    p.add_argument("--gpu-jobs", type=int, default=2, help="Slurm jobs with one GPU worker each [2]")
    p.add_argument("--gpu-cores", type=int, default=16, help="cores per GPU job (extraction data loaders) [16]")
    p.add_argument("--gpu-memory", default="128GB", help="memory per GPU job [128GB]")
    p.add_argument("--gres", default="gpu:1", help="generic resource of a GPU job [gpu:1]")
    p.add_argument("--queue", default=None, help="partition of the CPU jobs")
    p.add_argument("--gpu-queue", default=None, help="partition of the GPU jobs [--queue]")
    p.add_argument("--account", default=None, help="Slurm account")
    p.add_argument("--walltime", default="04:00:00", help="job time limit [04:00:00]")
    p.add_argument("--python", default=sys.executable, help="Python of the workers (same environment) [this one]")
    p.add_argument("--local-directory", default="$TMPDIR", help="worker scratch folder on the nodes [$TMPDIR]")
    p.add_argument("--dry-run", action="store_true", help="print the job scripts and the command; submit nothing")
    return p.parse_args(argv)


def make_clusters(a: argparse.Namespace):
    """(CPU cluster, GPU cluster): dask_jobqueue.SLURMCluster objects, nothing submitted yet."""
    from dask_jobqueue import SLURMCluster

    common = dict(account=a.account, walltime=a.walltime, python=a.python, local_directory=a.local_directory,
                  scheduler_options={"dashboard_address": ":0"}, log_directory="dask-slurm-logs")
    cpu = SLURMCluster(cores=a.cpu_cores, processes=a.cpu_cores, memory=a.cpu_memory, queue=a.queue,
                       job_name="wsi-mil-cpu", **common)
    # one worker thread per GPU (one slide at a time); job_cpu cores for its data loader processes
    gpu = SLURMCluster(cores=1, processes=1, job_cpu=a.gpu_cores, memory=a.gpu_memory, queue=a.gpu_queue or a.queue,
                       job_name="wsi-mil-gpu", job_extra_directives=[f"--gres={a.gres}"],
                       # one worker per GPU; daemon off so that extraction may start its loader processes
                       worker_extra_args=["--resources", "GPU=1"],
                       job_script_prologue=["export DASK_DISTRIBUTED__WORKER__DAEMON=False"], **common)
    return cpu, gpu


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cpu, gpu = make_clusters(a)
    try:
        cmd = run_command(a.config, a.sets, cpu.scheduler_address, gpu.scheduler_address)
        if a.dry_run:
            print("# CPU workers: job script\n" + cpu.job_script())
            print("# GPU workers: job script\n" + gpu.job_script())
            print(f"# {a.cpu_jobs} CPU job(s) and {a.gpu_jobs} GPU job(s) would be submitted, then:")
            print(show(cmd))
            return 0
        cpu.scale(jobs=a.cpu_jobs)
        gpu.scale(jobs=a.gpu_jobs)
        from distributed import Client

        with Client(cpu) as c1, Client(gpu) as c2:
            print("waiting for the first worker of each cluster (Slurm queue) ...", flush=True)
            c1.wait_for_workers(1)
            c2.wait_for_workers(1)
        return run(cmd)
    finally:
        gpu.close()
        cpu.close()


if __name__ == "__main__":
    sys.exit(main())
