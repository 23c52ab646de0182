#!/usr/bin/env python
"""Run a study on one node with several GPUs: one Dask scheduler, GPU workers and CPU workers.

Starts a ``dask_cuda.LocalCUDACluster`` (one worker per visible GPU, each pinned to its device
and advertising the Dask resource ``GPU=1``) and adds CPU worker processes (one per remaining
core, no GPU visible) to the same scheduler, then runs ``wsi-mil run CONFIG --scheduler ADDRESS``:
extraction tasks ask for ``GPU=1``, tiling and heatmap tasks run on any worker. SimCLR
pretraining and the MIL head run in the ``wsi-mil run`` process on the first GPU.

    python pipelines/dask_cuda_node.py configs/resnet50_chowder.yaml --set slides=/data/slides --set job=/data/job

Needs ``pip install dask-cuda`` on the GPU node. ``--dry-run`` prints the plan and starts nothing.
(Without dask-cuda, ``wsi-mil run`` alone already runs extraction as one process per GPU.)
"""

from __future__ import annotations

import argparse
import os
import sys

from common import add_worker_specs, run, run_command, show, study_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = study_parser(__doc__)
    p.add_argument("--gpus", default=os.environ.get("CUDA_VISIBLE_DEVICES"),
                   help="GPU ids to use, e.g. 0,1,2,3 [CUDA_VISIBLE_DEVICES, else all]")
    p.add_argument("--cpu-workers", type=int, default=None,
                   help="CPU worker processes for tiling and heatmaps [cores minus one per GPU]")
    p.add_argument("--dry-run", action="store_true", help="print the plan; start nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    if a.dry_run:
        gpus = a.gpus or "all visible GPUs"
        print(f"# one scheduler: dask_cuda.LocalCUDACluster(CUDA_VISIBLE_DEVICES={gpus}), one worker per GPU "
              "with resources GPU=1")
        print(f"# + {a.cpu_workers or 'cores - GPUs'} CPU worker processes (1 thread each, CUDA_VISIBLE_DEVICES='')")
        print(show(run_command(a.config, a.sets, "tcp://SCHEDULER", None)))
        return 0
    # loader processes inside GPU workers need non-daemonic worker processes
    os.environ["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        print("error: dask-cuda is not installed: pip install dask-cuda (or run 'wsi-mil run' alone: it "
              "already extracts with one process per GPU)", file=sys.stderr)
        return 2
    import dask
    from distributed import Nanny

    dask.config.set({"distributed.worker.daemon": False})
    with LocalCUDACluster(CUDA_VISIBLE_DEVICES=a.gpus, threads_per_worker=1, dashboard_address=None,
                          resources={"GPU": 1}) as cluster:
        n_gpu = len(cluster.workers)
        n_cpu = a.cpu_workers or max(1, cores - n_gpu)
        add_worker_specs(cluster, {f"cpu-{i}": {"cls": Nanny, "options": {
            "nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": ""}}} for i in range(n_cpu)})
        print(f"{n_gpu} GPU worker(s) and {n_cpu} CPU worker(s) at {cluster.scheduler_address}")
        return run(run_command(a.config, a.sets, cluster.scheduler_address, None))

if __name__ == "__main__":
    sys.exit(main())
