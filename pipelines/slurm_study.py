#!/usr/bin/env python
"""Run a study on a Slurm cluster through dask-jobqueue: one Dask scheduler, CPU and GPU jobs.

This process starts one Dask scheduler and submits Slurm jobs of workers to it:
- CPU jobs (``--cpu-jobs`` jobs of ``--cpu-cores`` cores, one worker process per core): tiling,
  heatmaps, and feature extraction when the study says ``device: cpu``;
- GPU jobs (``--gpu-jobs`` jobs, ``--gres gpu:1`` each, one worker per job advertising the Dask
  resource ``GPU=1``): feature extraction, whose tasks ask for that resource.
Then ``wsi-mil run CONFIG --scheduler ADDRESS`` runs the study; pretrain, train and predict run in
this process, so start it inside a GPU allocation for SimCLR studies (``slurm_study.sbatch``).
A CPU-only site runs ``--gpu-jobs 0`` with ``--set device=cpu`` (the default when the study
already says ``device: cpu``): extraction then runs on the CPU workers, no GPU is asked for.

    python pipelines/slurm_study.py configs/resnet50_chowder.yaml --cpu-jobs 4 --gpu-jobs 2 \\
        --queue cpu --gpu-queue gpu --set slides=/data/slides --set job=/scratch/study1

``--dry-run`` prints the job scripts and the command and submits nothing (no Slurm needed).
A job cancelled or preempted mid-study loses its workers; Dask runs their tasks again on the
others (with none left for ``--worker-timeout`` seconds, the study is stopped). Interrupted
(Ctrl-C, SIGTERM), the script cancels its jobs; run it again to resume.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from common import run_command, show, study_parser
from slurm_jobs import (
    JobGroup,
    SlurmError,
    check_partitions,
    check_slurm_commands,
    group_options,
    job_script,
    make_cluster,
    run_watched,
    submit,
    wait_for_workers,
)

from wsi_mil.errors import WsiMilError
from wsi_mil.study import load_study


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = study_parser(__doc__)
    p.add_argument("--cpu-jobs", type=int, default=4, help="Slurm jobs of CPU workers [4]")
    p.add_argument("--cpu-cores", type=int, default=16, help="cores per CPU job (= worker processes) [16]")
    p.add_argument("--cpu-memory", default="64GB", help="memory per CPU job [64GB]")
    p.add_argument("--gpu-jobs", type=int, default=None,
                   help="Slurm jobs with one GPU worker each [2; 0 when the study's extraction device is cpu]")
    p.add_argument("--gpu-cores", type=int, default=16, help="cores per GPU job (extraction data loaders) [16]")
    p.add_argument("--gpu-memory", default="128GB", help="memory per GPU job [128GB]")
    p.add_argument("--gres", default="gpu:1", help="generic resource of a GPU job [gpu:1]")
    p.add_argument("--queue", default=None, help="partition of the CPU jobs [Slurm's default]")
    p.add_argument("--gpu-queue", default=None, help="partition of the GPU jobs [--queue]")
    p.add_argument("--account", default=None, help="Slurm account")
    p.add_argument("--walltime", default="04:00:00", help="job time limit [04:00:00]")
    p.add_argument("--sbatch-option", dest="sbatch_options", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH directive of every job, e.g. --sbatch-option=--qos=long (repeatable)")
    p.add_argument("--python", default=sys.executable, help="Python of the workers (same environment) [this one]")
    p.add_argument("--local-directory", default="${TMPDIR:-/tmp}",
                   help="worker scratch folder on the nodes [${TMPDIR:-/tmp}]")
    p.add_argument("--log-directory", default="dask-slurm-logs", help="worker logs (JOBNAME-JOBID.err) [dask-slurm-logs]")
    p.add_argument("--interface", default=None,
                   help="network interface of the scheduler and workers, e.g. ib0 (lo: all on this machine) [Dask's choice]")
    p.add_argument("--scheduler-host", default=None, help="address the scheduler listens on (overrides --interface for it)")
    p.add_argument("--worker-timeout", type=float, default=600.0,
                   help="seconds to wait for the first worker of each kind of job, and to wait with none left [600]")
    p.add_argument("--dry-run", action="store_true", help="print the job scripts and the command; submit nothing")
    return p.parse_args(argv)


def extraction_device(a: argparse.Namespace) -> str:
    """The study's extraction device (``extract.device``, else its ``device``), from the YAML and ``--set``."""
    return load_study(a.config, a.sets).extract_config().device.strip().lower()


def job_groups(a: argparse.Namespace, cluster: Any, device: str) -> list[JobGroup]:
    """The CPU and GPU job groups the options ask for (GPU jobs: ``--gres``, ``GPU=1``, non-daemonic)."""
    gpu_jobs = a.gpu_jobs if a.gpu_jobs is not None else (0 if device == "cpu" else 2)
    if gpu_jobs == 0 and device.startswith("cuda"):
        raise SlurmError(f"the study extracts on '{device}' but --gpu-jobs is 0: give --gpu-jobs N, or --set device=cpu "
                         "to extract on the CPU workers")
    gpu = group_options(cluster, cores=1, processes=1, job_cpu=a.gpu_cores, memory=a.gpu_memory,
                        queue=a.gpu_queue or a.queue, job_name="wsi-mil-gpu",
                        job_extra_directives=[f"--gres={a.gres}", *a.sbatch_options],
                        # one worker (one slide at a time) per GPU, advertising it to the scheduler
                        worker_extra_args=["--resources", "GPU=1"],
                        # non-daemonic: the extraction data loader may start its processes
                        job_script_prologue=["export DASK_DISTRIBUTED__WORKER__DAEMON=False"])
    return [JobGroup("cpu", a.cpu_jobs, group_options(cluster)), JobGroup("gpu", gpu_jobs, gpu)]


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # Slurm's time limit and scancel send SIGTERM: cancel our jobs on the way out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        device = extraction_device(a)
        if not a.dry_run:
            check_slurm_commands()
            check_partitions({"--queue": a.queue, "--gpu-queue": a.gpu_queue})
    except WsiMilError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs_existed = os.path.isdir(a.log_directory)  # dask-jobqueue creates it, even for --dry-run
    cpu = dict(cores=a.cpu_cores, processes=a.cpu_cores, memory=a.cpu_memory, queue=a.queue, job_name="wsi-mil-cpu",
               job_extra_directives=list(a.sbatch_options))
    # a dry run's scheduler only fills in the scripts: on loopback unless told where to listen
    host = a.scheduler_host or ("127.0.0.1" if a.dry_run and not a.interface else None)
    cluster = make_cluster(cpu, interface=a.interface, scheduler_host=host, account=a.account,
                           walltime=a.walltime, python=a.python, local_directory=a.local_directory,
                           log_directory=a.log_directory)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        groups = job_groups(a, cluster, device)
        cmd = run_command(a.config, a.sets, cluster.scheduler_address, None)
        if a.dry_run:
            print(f"# scheduler: {cluster.scheduler_address} (a dry run's; a real run listens on --interface or "
                  "--scheduler-host, else where Dask chooses)")
            for g in groups:
                print(f"# {g.kind.upper()} workers: job script ({g.jobs} job(s))\n" + job_script(cluster, g.options))
            print(f"# extraction device: {device}; tasks ask for "
                  + ("GPU=1 (GPU jobs)" if groups[1].jobs and device != "cpu" else "no resource (CPU workers)"))
            print(show(cmd))
            return 0
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        print(f"dask scheduler: {cluster.scheduler_address}", flush=True)
        submit(cluster, groups)
        from distributed import Client

        with Client(cluster) as client:
            print("waiting for the first worker of each kind of job (Slurm queue) ...", flush=True)
            counts = wait_for_workers(client, groups, a.worker_timeout, a.log_directory)
            print(f"workers connected: {counts['cpu']} CPU, {counts['gpu']} GPU", flush=True)
            return run_watched(cmd, client, groups, a.worker_timeout, a.log_directory)
    except WsiMilError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: cancelling the Slurm jobs", file=sys.stderr)
        return 130
    finally:
        cluster.close()
        signal.signal(signal.SIGTERM, previous)
        if a.dry_run and not logs_existed and os.path.isdir(a.log_directory) and not os.listdir(a.log_directory):
            os.rmdir(a.log_directory)


if __name__ == "__main__":
    sys.exit(main())
