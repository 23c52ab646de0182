"""The layout of a job folder: the one place that knows where each stage's files go.

```
JOB/
  patches/{slide_id}.zarr                 tile stage: one patch store per slide
  encoders/{name}/                        pretrain stage: a SimCLR-trained encoder folder
  pretrain/{name}/checkpoint.pt           pretrain stage: checkpoint for exact resume
  features/{encoder_id}/{slide_id}.h5     extract stage: one feature file per slide
  models/{run}/                           train stage: a model run
  predictions/{run}.csv, {run}.tiles/     predict stage: slide and tile predictions
  heatmaps/{run}/{slide_id}/, index.html  heatmap stage
  status/{stage}.csv, pipeline.json       per-slide run records; the study runner's record
```

Every other module asks these functions for a path; none spells a folder name itself.
"""

from __future__ import annotations

import re
from pathlib import Path

PATCHES = "patches"
ENCODERS = "encoders"
PRETRAIN = "pretrain"
FEATURES = "features"
MODELS = "models"
PREDICTIONS = "predictions"
HEATMAPS = "heatmaps"
STATUS = "status"


def safe_name(text: str, limit: int = 40) -> str:
    """A filesystem-safe token: letters, digits, ``.``, ``_``; other runs become ``_``."""
    out = re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("._")
    return out[:limit] or "x"


def patches_dir(job: str | Path) -> Path:
    """``JOB/patches``: one ``{slide_id}.zarr`` store per slide."""
    return Path(job) / PATCHES


def patch_store_path(job: str | Path, slide_id: str) -> Path:
    """``JOB/patches/{slide_id}.zarr``."""
    return patches_dir(job) / f"{slide_id}.zarr"


def features_root(job: str | Path) -> Path:
    """``JOB/features``: one folder per encoder id."""
    return Path(job) / FEATURES


def features_dir(job: str | Path, encoder_id: str) -> Path:
    """``JOB/features/{encoder_id}``: one ``{slide_id}.h5`` feature file per slide."""
    return Path(job) / FEATURES / encoder_id


def feature_file_path(job: str | Path, encoder_id: str, slide_id: str) -> Path:
    """``JOB/features/{encoder_id}/{slide_id}.h5``."""
    return features_dir(job, encoder_id) / f"{slide_id}.h5"


def encoder_dir(job: str | Path, name: str) -> Path:
    """``JOB/encoders/{name}``: an encoder folder written by ``wsi-mil pretrain``."""
    return Path(job) / ENCODERS / name


def pretrain_checkpoint_path(job: str | Path, out_dir: str | Path) -> Path:
    """``JOB/pretrain/{safe name of the encoder folder}/checkpoint.pt``."""
    return Path(job) / PRETRAIN / safe_name(Path(out_dir).name, limit=80) / "checkpoint.pt"


def model_run_dir(job: str | Path, run: str) -> Path:
    """``JOB/models/{run}``: a MIL model run."""
    return Path(job) / MODELS / run


def predictions_path(job: str | Path, run: str) -> Path:
    """``JOB/predictions/{run}.csv`` (tile scores beside it in ``{run}.tiles/``)."""
    return Path(job) / PREDICTIONS / f"{run}.csv"


def heatmaps_dir(job: str | Path, run: str) -> Path:
    """``JOB/heatmaps/{run}``: per-slide heatmap folders and ``index.html``."""
    return Path(job) / HEATMAPS / run


def status_path(job: str | Path, stage: str) -> Path:
    """``JOB/status/{stage}.csv``: the per-slide run record of one stage."""
    return Path(job) / STATUS / f"{stage}.csv"


def pipeline_record_path(job: str | Path) -> Path:
    """``JOB/status/pipeline.json``: what the study runner last ran, per stage."""
    return Path(job) / STATUS / "pipeline.json"
