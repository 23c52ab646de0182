"""Model runs ``models/{run}/``: save, load, and predict one bag (the API of ``predict`` and heatmaps).

A run folder holds ``model.safetensors`` (the final model: trained on all training slides, i.e.
every labelled slide not in ``split=test``, for the median best epoch of the CV folds; in a tuned
run, by default, the mean of the outer-fold models, see :class:`~wsi_mil.mil.heads.ensemble.FoldEnsemble`),
``config.json`` (schema, head and its options, task, class names, encoder id, embed dim, training
config), ``splits.csv``, ``metrics.json``, ``predictions.csv`` (out-of-fold) and
``history.json``. The folder is written atomically: it appears complete or not at all.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file, save_file

from wsi_mil import __version__
from wsi_mil.atomic import atomic_path
from wsi_mil.errors import StoreError, WsiMilError
from wsi_mil.mil.heads.base import MILHead
from wsi_mil.mil.heads.ensemble import FoldEnsemble
from wsi_mil.mil.registry import create_head
from wsi_mil.outputs import writing
from wsi_mil.stores.common import MODEL_RUN_SCHEMA, read_schema_json

WEIGHTS_FILE = "model.safetensors"
#: ``config.json`` ``final_model.kind`` of a final model that is the mean of the outer-fold models
FOLD_ENSEMBLE = "fold_ensemble"
CONFIG_FILE = "config.json"


@dataclass
class BagPrediction:
    """One slide: ``probs`` (C,), ``tile_scores`` (N, C) float32, ``selected`` (N, C) int8 (+1 top, -1 bottom).

    Survival and regression runs (C = 1): ``probs`` (1,) is the risk score or the predicted value and
    ``tile_scores`` (N, 1) the tiles' scores of that output (higher: more risk / a higher value)."""

    probs: npt.NDArray[np.float64]
    tile_scores: npt.NDArray[np.float32]
    selected: npt.NDArray[np.int8]


def rows_to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """CSV text of ``rows`` with the given column order."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class ModelRun:
    """A trained run loaded for inference (on ``device``; CPU by default)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], head: MILHead, device: torch.device) -> None:
        self.run_dir = run_dir
        self.config = config
        self.head = head.to(device).eval()
        self.device = device

    @property
    def encoder_id(self) -> str:
        return str(self.config["encoder_id"])

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def task(self) -> str:
        """classification, survival or regression (runs from before tasks: classification)."""
        return str(self.config.get("task", "classification"))

    @property
    def head_name(self) -> str:
        return str(self.config["head"])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @torch.no_grad()
    def predict_bag(self, features: npt.NDArray[np.floating[Any]], overwrite_input: bool = False) -> BagPrediction:
        """Predict one whole bag ``features`` (N, D): probabilities, tile scores and selection marks.

        A bag with no tile gives NaN probabilities and empty (0, C) arrays. Features are
        standardised in place on the copy made for the device; ``overwrite_input=True`` lets a
        float32 array on the CPU be standardised in place too (no copy of a 300,000-tile bag).
        """
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.embed_dim:
            raise StoreError(f"{self.run_dir}: expected features (N, {self.embed_dim}) from encoder "
                             f"'{self.encoder_id}', got shape {features.shape}")
        c = self.n_classes
        if features.shape[0] == 0:
            return BagPrediction(np.full(c, np.nan), np.zeros((0, c), np.float32), np.zeros((0, c), np.int8))
        src = torch.as_tensor(features)
        x = src.to(self.device, torch.float32)
        standardized = overwrite_input or x.data_ptr() != src.data_ptr()  # we own x: no second copy
        if standardized:
            self.head.standardize_(x)
        x = x.unsqueeze(0)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=self.device)
        logits, tiles = self.head(x, mask, standardized=standardized)
        selected = self.head.select(tiles, mask)
        out = logits.float() if c == 1 else torch.softmax(logits.float(), dim=-1)  # one output: risk / value
        return BagPrediction(
            out[0].cpu().numpy().astype(np.float64),
            tiles[0].float().cpu().numpy().astype(np.float32),
            selected[0].cpu().numpy().astype(np.int8),
        )


def save_model_run(
    run_dir: str | Path, head: MILHead, config: dict[str, Any], files: dict[str, str],
    binary: dict[str, bytes] | None = None,
) -> Path:
    """Write a run folder atomically: weights, ``config.json``, the given text ``files`` (name -> text)
    and ``binary`` files (name -> bytes, e.g. a PNG figure)."""
    run_dir = Path(run_dir)
    meta = {"schema": MODEL_RUN_SCHEMA, "wsi_mil_version": __version__, "weights_file": WEIGHTS_FILE, **config}
    with writing(run_dir), atomic_path(run_dir) as tmp:  # an OSError: one line naming the run folder
        tmp.mkdir(parents=True)
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"schema": MODEL_RUN_SCHEMA})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for name, data in (binary or {}).items():
            (tmp / name).write_bytes(data)
    return run_dir


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """Validate and return ``run_dir/config.json``."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise StoreError(f"{run_dir}: not a model run (no {CONFIG_FILE}); train one with 'wsi-mil train'")
    config = read_schema_json(path, MODEL_RUN_SCHEMA, ("head", "head_options", "class_names", "encoder_id", "embed_dim"),
                              fix="re-train the run")
    return config


def build_run_head(config: dict[str, Any]) -> MILHead:
    """The (untrained) head a run's ``config.json`` describes: one head, or the fold ensemble of
    a tuned run (``final_model.kind: fold_ensemble``, one options mapping per member)."""
    dim, n_classes = int(config["embed_dim"]), len(config["class_names"])
    final = config.get("final_model") or {}
    if final.get("kind") == FOLD_ENSEMBLE:
        return FoldEnsemble([create_head(config["head"], dim, n_classes, o) for o in final["member_head_options"]])
    return create_head(config["head"], dim, n_classes, config["head_options"])


def load_model_run(run_dir: str | Path, device: str | torch.device = "cpu") -> ModelRun:
    """Load a run folder for inference; raises :class:`StoreError` on a missing or damaged run."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    weights = run_dir / str(config.get("weights_file", WEIGHTS_FILE))
    if not weights.is_file():
        raise StoreError(f"{run_dir}: weights file {weights.name} is missing; re-train the run")
    try:
        head = build_run_head(config)
        head.load_state_dict(load_file(str(weights)), strict=True)
    except WsiMilError:
        raise
    except (RuntimeError, OSError, ValueError) as exc:
        raise StoreError(f"{weights}: cannot load the weights ({str(exc).splitlines()[0]}); re-train the run") from exc
    return ModelRun(run_dir, config, head, torch.device(device))
