"""Cluster recipes in pipelines/: job scripts and commands they would run, their clear failures, and the
Dask worker resources that send extraction to GPU workers on one scheduler (no Slurm needed;
the real Slurm cluster tests are in tests/cluster, marker ``cluster``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.errors import WsiMilError
from wsi_mil.extract import ExtractConfig, run_extract
from wsi_mil.jobdir import patch_store_path
from wsi_mil.parallel import GPU_RESOURCE, device_resources, worker_resources
from wsi_mil.stores.patches import write_patch_store

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _run(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_slurm_dry_run_prints_cpu_and_gpu_jobs_on_one_scheduler(tmp_path: Path) -> None:
    res = _run("pipelines/slurm_study.py", "configs/resnet50_chowder.yaml", "--dry-run", "--queue", "cpu",
               "--gpu-queue", "gpu", "--cpu-cores", "8", "--set", "job=/scratch/s1", "--interface", "lo",
               "--log-directory", str(tmp_path / "logs"), "--sbatch-option=--qos=long")
    assert res.returncode == 0, res.stderr
    cpu, _, gpu = res.stdout.partition("# GPU workers")
    assert "#SBATCH -p cpu" in cpu and "--cpus-per-task=8" in cpu and "--nworkers 8" in cpu and "--gres" not in cpu
    assert "#SBATCH -p gpu" in gpu and "--gres=gpu:1" in gpu and "--nthreads 1" in gpu
    assert "--resources GPU=1" in gpu and "--resources" not in cpu
    assert "DASK_DISTRIBUTED__WORKER__DAEMON=False" in gpu
    assert cpu.count("#SBATCH --qos=long") == 1 and gpu.count("#SBATCH --qos=long") == 1
    assert "(2 job(s))" in gpu and "(4 job(s))" in cpu
    # workers and the scheduler on loopback: the scheduler's address and --interface in both scripts
    assert "tcp://127.0.0.1:" in cpu and "--interface lo" in cpu and "--interface lo" in gpu
    assert "tasks ask for GPU=1 (GPU jobs)" in res.stdout
    last = res.stdout.strip().splitlines()[-1]
    assert last.endswith(" run configs/resnet50_chowder.yaml --set job=/scratch/s1 --scheduler " + last.split()[-1])
    assert last.split()[-1].startswith("tcp://127.0.0.1:") and "--extract-scheduler" not in res.stdout


def test_slurm_dry_run_of_a_cpu_study_submits_no_gpu_job(tmp_path: Path) -> None:
    """device: cpu extracts on the CPU workers: no GPU job, no --gres, no resource asked for."""
    res = _run("pipelines/slurm_study.py", "configs/resnet50_chowder.yaml", "--dry-run", "--set", "device=cpu",
               "--log-directory", str(tmp_path / "logs"))
    assert res.returncode == 0, res.stderr
    assert "# GPU workers: job script (0 job(s))" in res.stdout
    assert "# extraction device: cpu; tasks ask for no resource (CPU workers)" in res.stdout


def test_slurm_cuda_study_without_gpu_jobs_is_refused(tmp_path: Path) -> None:
    res = _run("pipelines/slurm_study.py", "configs/resnet50_chowder.yaml", "--dry-run", "--set", "device=cuda",
               "--gpu-jobs", "0", "--log-directory", str(tmp_path / "logs"))
    assert res.returncode == 2
    assert "extracts on 'cuda' but --gpu-jobs is 0" in res.stderr and "--set device=cpu" in res.stderr


def test_slurm_missing_from_path_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # no sbatch, squeue, sinfo, scancel
    res = subprocess.run([PY, "pipelines/slurm_study.py", "configs/resnet50_chowder.yaml", "--log-directory",
                          str(tmp_path / "logs")], cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: sbatch, squeue, sinfo, scancel not found on PATH: run this on a Slurm login "
                                  "node (or 'module load slurm'); --dry-run prints the job scripts without Slurm")


def tiny_store(job: Path, slide_id: str, n: int) -> None:
    """A patch store of ``n`` flat-colour 32 px tiles."""
    tiles = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 20, 32, 1).repeat(32, 2).repeat(3, 3)
    coords = np.stack([np.arange(n) * 64, np.zeros(n)], 1).astype(np.int64)
    attrs = dict(slide_id=slide_id, target_mpp=0.5, mpp=0.25, tile_size_level0=64.0, tile_size=32,
                 slide_hash=f"sha256:{slide_id}", slide_path=f"/slides/{slide_id}.svs", mpp_source="metadata")
    write_patch_store(patch_store_path(job, slide_id), tiles, coords, np.ones(n, np.float32), np.ones((4, 4), np.uint8),
                      16.0, attrs, codec="zstd")


@pytest.fixture()
def cpu_and_gpu_workers() -> Iterator[tuple[str, str, str]]:
    """One scheduler, a plain worker and a worker advertising GPU=1 (threads in this process):
    (scheduler address, plain worker address, GPU worker address)."""
    from distributed import Client, Scheduler, SpecCluster, Worker

    workers = {"cpu": {"cls": Worker, "options": {"nthreads": 1}},
               "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {GPU_RESOURCE: 1}}}}
    with SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                     silence_logs=40) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        by_name = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        yield cluster.scheduler_address, by_name["cpu"], by_name["gpu"]


def test_device_resources_follow_the_study_device(cpu_and_gpu_workers: tuple[str, str, str]) -> None:
    from distributed import Client, LocalCluster

    addr, _, gpu = cpu_and_gpu_workers
    with Client(addr) as client:
        assert worker_resources(client)[gpu] == {GPU_RESOURCE: 1}
        assert device_resources(client, "cpu") is None
        assert device_resources(client, "auto") == device_resources(client, "cuda:1") == {GPU_RESOURCE: 1}
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as plain, Client(plain) as client:
        assert device_resources(client, "auto") is None and device_resources(client, "cpu") is None
        with pytest.raises(WsiMilError, match="no worker of the Dask scheduler .* has the resource GPU"):
            device_resources(client, "cuda")


def test_extraction_tasks_ask_for_the_gpu_worker(cpu_and_gpu_workers: tuple[str, str, str], job: Path) -> None:
    """On one scheduler with CPU and GPU workers, every extraction task runs on the GPU worker."""
    from distributed import Client, get_task_stream

    addr, _, gpu = cpu_and_gpu_workers
    for i in range(4):
        tiny_store(job, f"s{i}", 3 + i)
    with Client(addr) as client, get_task_stream(client) as stream:
        report = run_extract(job, "test_resnet", "random:0", ExtractConfig(device="auto", batch_size=4),
                             scheduler=addr)
    assert [s.status for s in report.statuses] == ["done"] * 4
    extract_tasks = [t for t in stream.data if "extract" in str(t["key"])]
    assert len(extract_tasks) == 4 and {t["worker"] for t in extract_tasks} == {gpu}


def test_slurm_sbatch_script_is_valid_bash() -> None:
    script = ROOT / "pipelines" / "slurm_study.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "#SBATCH --gres=gpu:1" in text and "pipelines/slurm_study.py" in text


def test_dask_cuda_dry_run() -> None:
    res = _run("pipelines/dask_cuda_node.py", "configs/resnet50_chowder.yaml", "--dry-run", "--gpus", "0,1")
    assert res.returncode == 0, res.stderr
    assert "LocalCUDACluster(CUDA_VISIBLE_DEVICES=0,1), one worker per GPU with resources GPU=1" in res.stdout
    assert res.stdout.rstrip().endswith("--scheduler tcp://SCHEDULER") and "--extract-scheduler" not in res.stdout


@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is not None, reason="dask-cuda is installed here")
def test_dask_cuda_missing_is_a_clear_error() -> None:
    res = _run("pipelines/dask_cuda_node.py", "configs/resnet50_chowder.yaml")
    assert res.returncode == 2 and "pip install dask-cuda" in res.stderr


@pytest.mark.gpu
def test_dask_cuda_node_runs_a_study(synth_cohort: Path, tmp_path: Path) -> None:
    """On a GPU node with dask-cuda: the demo study on the session cohort through both clusters."""
    pytest.importorskip("dask_cuda")
    job = tmp_path / "job"
    res = _run("pipelines/dask_cuda_node.py", "configs/demo.yaml",
               "--set", f"slides={synth_cohort}", "--set", f"labels={synth_cohort / 'labels.csv'}",
               "--set", f"job={job}", "--set", "pretrain.epochs=1", "--set", "train.folds=2", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "cross-validated slide AUC" in res.stdout
    assert (job / "heatmaps" / "demo" / "index.html").is_file()
