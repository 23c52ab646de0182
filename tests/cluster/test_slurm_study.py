"""``pipelines/slurm_study.py`` on a real one-node Slurm cluster (marker ``cluster``).

A 4-slide synthetic study runs through the recipe: tile, extract (``device: cpu``, so on the CPU
workers, no GPU job and no ``--gres``) and heatmap tasks in two one-core Slurm jobs whose Dask
workers bind to loopback; train and predict in the driver. Every output is checked. The same
study then runs again while one of the two jobs is cancelled (``scancel``) as its worker holds an
extraction task: Dask runs the task again on the other job's worker, the study completes and
its outputs equal the undisturbed run's. Also: an unknown partition and workers that never start
fail with messages that name them.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import yaml

from wsi_mil.jobdir import (
    feature_file_path,
    features_root,
    heatmaps_dir,
    model_run_dir,
    patch_store_path,
    pipeline_record_path,
    predictions_path,
    status_path,
)
from wsi_mil.runrecord import read_run_record
from wsi_mil.stores.features import read_feature_file
from wsi_mil.stores.patches import open_patch_store

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "pipelines" / "slurm_study.py"
SLIDES = [f"slide_{i:03d}" for i in range(4)]
STUDY_TIMEOUT = 900


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic slides of 2048 x 2048 px at 0.5 mpp, 2 positive (about 12 tiles each below)."""
    from wsi_mil.synth import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort") / "cohort", 4, positive_fraction=0.5, size=(2048, 2048),
                       mpp=0.5, lesion_fraction=(0.06, 0.1), seed=1)


def write_study(folder: Path, cohort: Path) -> Path:
    """A tiny CPU study over ``cohort`` with its job folder in ``folder``; the YAML's path."""
    doc = {
        "name": "t", "slides": str(cohort), "labels": str(cohort / "labels.csv"), "job": str(folder / "job"),
        "device": "cpu",
        "encoder": {"arch": "test_resnet", "weights": "random:0"},
        "tiling": {"target_mpp": 2.0, "tile_size": 96, "min_tissue_fraction": 0.5},
        "extract": {"batch_size": 64, "num_workers": 0},
        "train": {"head": "chowder", "head_options": {"r": 2, "n_members": 2}, "folds": 2, "max_epochs": 3,
                  "min_epochs": 1, "patience": 2, "batch_size": 4, "tiles_per_bag": None, "bootstrap": 20,
                  "tune": "off"},
        "heatmap": {"thumbnail_px": 256, "overlay_width": 400, "montage_tiles": 2, "montage_cell": 32},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def recipe_argv(study: Path, *extra: str) -> list[str]:
    """The recipe with two one-core CPU jobs, no GPU job, everything on loopback."""
    return [sys.executable, str(RECIPE), str(study), "--cpu-jobs", "2", "--cpu-cores", "1", "--cpu-memory", "2GB",
            "--walltime", "00:30:00", "--interface", "lo", "--worker-timeout", "180",
            "--log-directory", str(study.parent / "logs"), *extra]


class Recipe:
    """The recipe running as a subprocess; its output collected line by line by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def scheduler_address(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.startswith("dask scheduler: "):
                    return line.split(": ", 1)[1].strip()
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"the recipe printed no scheduler address:\n{self.output[-3000:]}")

    def wait(self, timeout: float = STUDY_TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # the recipe cancels its jobs on SIGTERM
            self.proc.wait(60)
            pytest.fail(f"the study did not finish within {timeout} s:\n{self.output[-3000:]}")
        self.reader.join(10)
        return rc


def job_outputs(job: Path) -> dict[str, Any]:
    """Everything a study wrote that must not depend on where or when it ran: tile arrays and
    coordinates, feature arrays, and the content of every other output file with the job folder's
    path replaced (run records, timings and the HTML page aside)."""
    out: dict[str, Any] = {}
    for sid in SLIDES:
        store = open_patch_store(patch_store_path(job, sid))
        out[f"tiles/{sid}"] = hashlib.sha256(store.read_tiles(0, store.n_tiles).tobytes()).hexdigest()
        out[f"coords/{sid}"] = store.coords.tolist()
    for h5 in sorted(features_root(job).glob("*/*.h5")):
        ff = read_feature_file(h5)
        out[f"features/{h5.parent.name}/{ff.slide_id}"] = (hashlib.sha256(ff.features.tobytes()).hexdigest(),
                                                          ff.coords.tolist())
    volatile = {"status", "pipeline.json", "study.yaml", "index.html", "status.csv", "metrics.json", "history.json"}
    for p in sorted(job.rglob("*")):
        rel = p.relative_to(job)
        if (not p.is_file() or rel.parts[0] in ("patches", "features") or volatile & {rel.parts[0], p.name}
                or p.name.endswith(".status.csv")):
            continue
        if p.name.endswith(".ome.tif"):  # pixels of every level (the OME-XML holds a random UUID)
            with tifffile.TiffFile(p) as tif:
                out[str(rel)] = [hashlib.sha256(level.asarray().tobytes()).hexdigest() for level in tif.series[0].levels]
            continue
        data = p.read_bytes().replace(str(job).encode(), b"{JOB}")
        if p.suffix == ".json":
            doc = json.loads(data)
            doc.pop("created", None)  # when a model run was made
            # a heatmap's fingerprint of its feature file, whose attributes name the job folder
            # (the feature arrays themselves are compared above)
            (doc.get("inputs") or {}).pop("features", None)
            data = json.dumps(doc, sort_keys=True).encode()
        out[str(rel)] = hashlib.sha256(data).hexdigest()
    metrics = json.loads((model_run_dir(job, "t") / "metrics.json").read_text())
    out["metrics/out_of_fold"] = metrics["out_of_fold"]["metrics"]
    return out


def check_every_output(job: Path, encoder_id: str) -> None:
    """Each stage's outputs exist, are complete and agree with each other."""
    for stage in ("tile", f"extract-{encoder_id}"):
        record = read_run_record(status_path(job, stage))
        assert {r.slide_id: r.status for r in record} == dict.fromkeys(SLIDES, "done"), stage
    for sid in SLIDES:
        store = open_patch_store(patch_store_path(job, sid))
        assert store.n_tiles > 0 and store.attrs["complete"]
        ff = read_feature_file(feature_file_path(job, encoder_id, sid), encoder_id=encoder_id)
        assert ff.features.shape == (store.n_tiles, 96) and np.isfinite(ff.features).all()
        assert np.array_equal(ff.coords, store.coords)
        assert ff.attrs["device"] == "cpu"
        tiles = (predictions_path(job, "t").with_suffix(".tiles") / f"{sid}.csv").read_text().splitlines()
        assert len(tiles) == store.n_tiles + 1
        hdir = heatmaps_dir(job, "t") / sid
        for name in ("overlay.png", "tiles.geojson", "overlay.ome.tif", "top_tiles.png", "scores.csv"):
            assert (hdir / name).stat().st_size > 0, hdir / name
        assert len((hdir / "scores.csv").read_text().splitlines()) == store.n_tiles + 1
    rows = predictions_path(job, "t").read_text().splitlines()
    assert rows[0].startswith("slide_id,") and sorted(r.split(",")[0] for r in rows[1:]) == SLIDES
    for name in ("config.json", "metrics.json", "model.safetensors", "predictions.csv", "splits.csv"):
        assert (model_run_dir(job, "t") / name).is_file(), name
    assert (heatmaps_dir(job, "t") / "index.html").is_file()
    stages = json.loads(pipeline_record_path(job).read_text())["last_run"]["stages"]
    assert {s["name"]: s["status"] for s in stages} == dict.fromkeys(
        ("tile", "extract", "train", "predict", "heatmap"), "done")


def encoder_of(job: Path) -> str:
    (folder,) = (p for p in features_root(job).iterdir() if p.is_dir())
    return folder.name


@pytest.fixture(scope="module")
def undisturbed(slurm_cluster, cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The study run once through the recipe, nothing disturbed: (job folder, recipe output)."""
    folder = tmp_path_factory.mktemp("undisturbed")
    recipe = Recipe(recipe_argv(write_study(folder, cohort)), slurm_cluster.env, folder)
    rc = recipe.wait()
    assert rc == 0, recipe.output[-4000:]
    assert slurm_cluster.wait_empty(), slurm_cluster.jobs()  # the recipe cancelled its jobs when the study ended
    return folder / "job", recipe.output


def test_one_node_cluster_is_up(slurm_cluster) -> None:
    assert slurm_cluster.slurm("sinfo", "-h", "-o", "%P %a %t").split() == ["debug*", "up", "idle"]
    res = subprocess.run(["srun", "-n", "1", "hostname"], env=slurm_cluster.env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == slurm_cluster.hostname, res.stderr


def test_study_runs_through_slurm_and_writes_every_output(undisturbed: tuple[Path, str]) -> None:
    job, output = undisturbed
    # the recipe starts once the first worker is up (the second job may still be starting): 1 or 2 CPU,
    # and no GPU job for device: cpu. That both jobs served this scheduler is checked from their logs below.
    assert re.search(r"workers connected: [12] CPU, 0 GPU\n", output), output[-2000:]
    assert "--scheduler tcp://127.0.0.1:" in output and "--extract-scheduler" not in output
    check_every_output(job, encoder_of(job))
    logs = sorted((job.parent / "logs").glob("wsi-mil-cpu-*.err"))
    assert len(logs) == 2  # one log per Slurm job; each job's worker served this scheduler
    for log in logs:
        text = log.read_text()
        assert "Registered to:" in text and "tcp://127.0.0.1:" in text, text[-2000:]


def test_cancelled_job_mid_study_is_rescheduled_and_outputs_match(
        slurm_cluster, cohort: Path, undisturbed: tuple[Path, str], tmp_path: Path) -> None:
    from distributed import Client

    recipe = Recipe(recipe_argv(write_study(tmp_path, cohort)), slurm_cluster.env, tmp_path)
    cancelled: dict[str, Any] = {}
    try:
        with Client(recipe.scheduler_address(), timeout="30s") as client:
            deadline = time.monotonic() + 300
            while len(client.scheduler_info(n_workers=-1)["workers"]) < 2:
                assert time.monotonic() < deadline and recipe.proc.poll() is None, recipe.output[-3000:]
                time.sleep(0.5)
            assert all(a.startswith("tcp://127.0.0.1:") for a in client.scheduler_info(n_workers=-1)["workers"])
            jobs = client.run(lambda: __import__("os").environ["SLURM_JOB_ID"])  # worker address -> Slurm job id
            assert len(set(jobs.values())) == 2
            while not cancelled:  # the first worker seen holding an extraction task loses its job
                assert time.monotonic() < deadline and recipe.proc.poll() is None, recipe.output[-3000:]
                for addr, keys in client.processing().items():
                    held = [k for k in keys if "extract" in str(k)]
                    if held:
                        slurm_cluster.slurm("scancel", jobs[addr])
                        cancelled = {"job": jobs[addr], "worker": addr, "held": held}
                        break
                time.sleep(0.1)
            while cancelled["worker"] in client.scheduler_info(n_workers=-1)["workers"]:
                assert time.monotonic() < deadline, "the cancelled job's worker never left"
                time.sleep(0.2)
        rc = recipe.wait()
    finally:
        if recipe.proc.poll() is None:
            recipe.proc.terminate()
            recipe.proc.wait(60)
    assert rc == 0, recipe.output[-4000:]
    assert cancelled["job"] not in slurm_cluster.jobs()
    job = tmp_path / "job"
    check_every_output(job, encoder_of(job))
    assert job_outputs(job) == job_outputs(undisturbed[0])


def test_unknown_partition_is_named(slurm_cluster, cohort: Path, tmp_path: Path) -> None:
    res = subprocess.run(recipe_argv(write_study(tmp_path, cohort), "--queue", "nosuch"), env=slurm_cluster.env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "--queue nosuch: no such Slurm partition (sinfo lists debug)" in res.stderr
    assert slurm_cluster.jobs() == []  # checked before anything was submitted


def test_workers_that_never_start_time_out_naming_the_queue_state(slurm_cluster, cohort: Path, tmp_path: Path) -> None:
    argv = recipe_argv(write_study(tmp_path, cohort), "--sbatch-option=--begin=now+1hour")
    argv[argv.index("--worker-timeout") + 1] = "8"
    t0 = time.monotonic()
    res = subprocess.run(argv, env=slurm_cluster.env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no Dask worker of the cpu jobs connected within 8 s" in res.stderr
    assert "wsi-mil-cpu PENDING (BeginTime)" in res.stderr and str(tmp_path / "logs") in res.stderr
    assert time.monotonic() - t0 < 90
    assert slurm_cluster.wait_empty(), slurm_cluster.jobs()  # the pending jobs were cancelled on the way out
    assert not (tmp_path / "job" / "patches").exists()


def test_every_job_lost_stops_the_study_naming_the_queue(slurm_cluster, cohort: Path, tmp_path: Path) -> None:
    """With no worker left for --worker-timeout seconds the recipe stops the study (it would wait forever)."""
    from distributed import Client

    argv = recipe_argv(write_study(tmp_path, cohort))
    argv[argv.index("--worker-timeout") + 1] = "30"
    recipe = Recipe(argv, slurm_cluster.env, tmp_path)
    try:
        with Client(recipe.scheduler_address(), timeout="30s") as client:
            deadline = time.monotonic() + 120
            # both workers connected AND the recipe past its start-up wait (it has launched the study,
            # '+ wsi-mil run ...'): cancelling earlier would test the "workers never start" path instead
            while len(client.scheduler_info(n_workers=-1)["workers"]) < 2 or not any(
                    line.startswith("+ ") for line in recipe.lines):
                assert time.monotonic() < deadline and recipe.proc.poll() is None, recipe.output[-3000:]
                time.sleep(0.5)
            jobs = sorted(set(client.run(lambda: __import__("os").environ["SLURM_JOB_ID"]).values()))
        slurm_cluster.slurm("scancel", *jobs)
        rc = recipe.wait(240)
    finally:
        if recipe.proc.poll() is None:
            recipe.proc.terminate()
            recipe.proc.wait(60)
    assert rc == 2, recipe.output[-3000:]
    assert "no Dask worker left for 30 s (Slurm queue: job " in recipe.output
    assert all(f"job {j} ended (no longer in squeue; read its log)" in recipe.output for j in jobs)
    assert "the study was stopped: run the same command again to resume" in recipe.output
    assert slurm_cluster.wait_empty(), slurm_cluster.jobs()
