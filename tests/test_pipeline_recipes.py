"""Cluster recipes in pipelines/: job scripts and commands they would run (no cluster needed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _run(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_slurm_dry_run_prints_cpu_and_gpu_jobs_and_the_study_command() -> None:
    res = _run("pipelines/slurm_study.py", "configs/resnet50_chowder.yaml", "--dry-run", "--queue", "cpu",
               "--gpu-queue", "gpu", "--cpu-cores", "8", "--set", "job=/scratch/s1")
    assert res.returncode == 0, res.stderr
    cpu, _, gpu = res.stdout.partition("# GPU workers")
    assert "#SBATCH -p cpu" in cpu and "--cpus-per-task=8" in cpu and "--nworkers 8" in cpu
    assert "#SBATCH -p gpu" in gpu and "--gres=gpu:1" in gpu and "--nthreads 1" in gpu
    assert "DASK_DISTRIBUTED__WORKER__DAEMON=False" in gpu
    last = res.stdout.strip().splitlines()[-1]
    assert " run configs/resnet50_chowder.yaml --set job=/scratch/s1 --scheduler tcp://" in last
    assert "--extract-scheduler tcp://" in last


def test_slurm_sbatch_script_is_valid_bash() -> None:
    script = ROOT / "pipelines" / "slurm_study.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "#SBATCH --gres=gpu:1" in text and "pipelines/slurm_study.py" in text


def test_dask_cuda_dry_run() -> None:
    res = _run("pipelines/dask_cuda_node.py", "configs/resnet50_chowder.yaml", "--dry-run", "--gpus", "0,1")
    assert res.returncode == 0, res.stderr
    assert "LocalCUDACluster(CUDA_VISIBLE_DEVICES=0,1)" in res.stdout
    assert "--scheduler tcp://CPU-SCHEDULER --extract-scheduler tcp://GPU-SCHEDULER" in res.stdout


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
