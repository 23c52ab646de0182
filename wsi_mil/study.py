"""The study config: one YAML file that describes a whole study for ``wsi-mil run``.

A study names its inputs (a slide folder, a labels CSV), its job folder, and one section per
stage, each the stage's own config model, so every key means what it means for the stage's own
command (``wsi-mil tile --config STUDY.yaml`` reads the ``tiling`` section of the same file)::

    name: chowder-resnet50          # run name: JOB/models/{name}, JOB/heatmaps/{name}
    slides: /data/slides            # a folder (searched recursively), a slide file, or a list
    labels: /data/labels.csv        # slide_id,label[,case_id][,split]
    job: /data/job                  # every output goes here
    device: auto                    # auto, cpu or cuda: default of every stage
    encoder:
      arch: resnet50_in1k           # timm architecture or ready-made entry
      weights: /weights/resnet50.safetensors   # a file, an encoder folder, timm, random[:SEED] or simclr
    tiling: {...}                   # wsi_mil.tiling.config.TilingConfig
    pretrain: {...}                 # wsi_mil.ssl.config.PretrainConfig (used when weights: simclr)
    extract: {...}                  # wsi_mil.extract.config.ExtractConfig
    train: {...}                    # wsi_mil.mil.config.TrainConfig
    heatmap: {...}                  # wsi_mil.heatmaps.stage.HeatmapConfig

Precedence: defaults < the YAML file < ``--set key.sub=value`` overrides. Unknown keys and
wrong types are :class:`~wsi_mil.errors.ConfigError` naming the dotted key. Relative paths are
relative to the directory ``wsi-mil run`` is started from, as for every other command.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from wsi_mil.config import StrictModel, build_config, config_to_dict
from wsi_mil.errors import ConfigError
from wsi_mil.extract.config import ExtractConfig
from wsi_mil.heatmaps.config import HeatmapConfig
from wsi_mil.jobdir import encoder_dir, heatmaps_dir, model_run_dir, predictions_path, safe_name
from wsi_mil.mil.config import TrainConfig
from wsi_mil.ssl.config import PretrainConfig
from wsi_mil.tiling.config import TilingConfig

#: ``encoder.weights`` value that means "train the encoder with SimCLR first"
SIMCLR = "simclr"
#: the study's stage sections, named as each stage's own ``--config`` section
SECTIONS = ("tiling", "pretrain", "extract", "train", "heatmap")


class EncoderSection(StrictModel):
    """Which encoder embeds the tiles.

    ``weights``: a weights file (``.safetensors``/``.pth``/``.bin``), an encoder folder written
    by ``wsi-mil pretrain``, ``timm`` (timm weights already in the local cache; never
    downloaded), ``random`` / ``random:SEED`` (tests and baselines only), or ``simclr``: train
    the encoder first with SimCLR on the study's own tiles (section ``pretrain``; its ``arch``
    is the architecture). ``arch``: a timm architecture or a ready-made entry
    (``wsi-mil extract --list-encoders``); optional for an encoder folder and for ``simclr``.
    """

    arch: str | None = Field(None, description="timm architecture or ready-made entry")
    weights: str = Field(..., min_length=1, description="file, encoder folder, timm, random[:SEED] or simclr")

    @property
    def is_simclr(self) -> bool:
        return self.weights.strip().lower() == SIMCLR

    @property
    def is_file_like(self) -> bool:
        """True when ``weights`` names a path (file or encoder folder), not a keyword."""
        w = self.weights.strip()
        return not (w.lower() in (SIMCLR, "timm") or re.fullmatch(r"random(:\d+)?", w))


class StudyConfig(StrictModel):
    """A whole study: inputs, job folder, encoder and every stage's section."""

    name: str = Field("study", min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="run name: JOB/models/{name}, JOB/heatmaps/{name}")
    slides: list[Path] = Field(..., min_length=1, description="slide folder(s) and/or files")
    labels: Path = Field(..., description="labels CSV: slide_id,label[,case_id][,split]")
    job: Path = Field(..., description="job folder: patches/, features/, models/, heatmaps/, status/")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="device of pretrain and predict, and of extract/train unless their section sets one")
    encoder: EncoderSection
    tiling: TilingConfig = TilingConfig()
    pretrain: PretrainConfig = PretrainConfig()
    extract: ExtractConfig = ExtractConfig()
    train: TrainConfig = TrainConfig()
    heatmap: HeatmapConfig = HeatmapConfig()

    @field_validator("slides", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, Path)) else v

    @model_validator(mode="after")
    def _encoder_vs_pretrain(self) -> StudyConfig:
        if self.encoder.is_simclr and self.encoder.arch and self.encoder.arch != self.pretrain.arch:
            raise ValueError(
                f"'encoder.arch' is {self.encoder.arch!r} but 'pretrain.arch' is {self.pretrain.arch!r}; with "
                "encoder.weights: simclr the architecture is pretrain.arch: drop encoder.arch or make them equal")
        if not self.encoder.is_simclr and not self.encoder.is_file_like and not self.encoder.arch:
            raise ValueError(f"'encoder.arch' is needed with encoder.weights: {self.encoder.weights}; give a timm "
                             "architecture or a ready-made entry (wsi-mil extract --list-encoders)")
        return self

    # -- the effective per-stage settings -------------------------------------------------
    def extract_config(self) -> ExtractConfig:
        """``extract`` with the study's ``device`` unless the section sets its own."""
        if "device" in self.extract.model_fields_set or self.device == "auto":
            return self.extract
        return self.extract.model_copy(update={"device": self.device})

    def train_config(self) -> TrainConfig:
        """``train`` with the study's ``device`` unless the section sets its own."""
        if "device" in self.train.model_fields_set or self.device == "auto":
            return self.train
        return self.train.model_copy(update={"device": self.device})

    def run_dir(self, job: Path | None = None) -> Path:
        """``JOB/models/{name}``: the MIL run folder."""
        return model_run_dir(job or self.job, self.name)

    def heatmap_dir(self, job: Path | None = None) -> Path:
        """``JOB/heatmaps/{name}``: per-slide heatmaps and ``index.html``."""
        return heatmaps_dir(job or self.job, self.name)

    def predictions_csv(self, job: Path | None = None) -> Path:
        """``JOB/predictions/{name}.csv`` (tile scores in ``{name}.tiles/``)."""
        return predictions_path(job or self.job, self.name)

    def simclr_dir(self, job: Path | None = None) -> Path:
        """``JOB/encoders/simclr-{arch}``: the encoder folder SimCLR writes."""
        return encoder_dir(job or self.job, f"simclr-{safe_name(self.pretrain.arch)}")


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read and validate a study YAML; ``overrides`` are ``KEY=VALUE`` strings (dotted keys).

    Raises :class:`~wsi_mil.errors.ConfigError` naming the file and every bad key.
    """

    try:
        return build_config(StudyConfig, path, overrides)
    except ConfigError as exc:
        msg = str(exc)
        if msg.startswith(str(path)):
            raise
        # errors raised inside a section's own validation (e.g. train.head_options) name the file too
        raise ConfigError(f"{path}: train.{msg}" if msg.startswith("head_options") else f"{path}: {msg}") from exc


def study_to_dict(cfg: StudyConfig) -> dict[str, Any]:
    """The JSON/YAML-ready dict of a study (paths as strings), as recorded in ``JOB/study.yaml``."""
    return config_to_dict(cfg)


def study_to_yaml(cfg: StudyConfig) -> str:
    """The effective study as YAML text; ``load_study`` of it gives the same config."""

    return yaml.safe_dump(study_to_dict(cfg), sort_keys=False, default_flow_style=None, width=100)
