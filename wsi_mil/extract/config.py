"""The ``extract`` section of a study config (``wsi-mil extract --config FILE``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wsi_mil.config import StrictModel


class ExtractConfig(StrictModel):
    """How features are extracted (``wsi-mil extract``).

    ``device``: ``auto`` (every visible GPU, else the CPU), ``cuda`` (every visible GPU),
    ``cuda:0,cuda:2`` (these GPUs), ``cpu``. Several devices: one process per device, slides
    spread across them. ``features_dtype``: float32 by default (exact copy of what the model
    produced under its precision); float16 halves the files. ``stain_norm``: ``macenko`` or
    ``reinhard`` fit each slide once from a sample of its tissue tiles and normalise every tile on
    the device onto a fixed target (:mod:`wsi_mil.stain`); features go to
    ``features/{encoder_id}-{method}/``.
    """

    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or a comma-separated list")
    batch_size: int = Field(256, ge=1, le=65536, description="tiles per forward pass (halved on CUDA OOM)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="autocast dtype: auto is bf16 on CUDA, fp32 on the CPU")
    compile: bool = Field(False, description="torch.compile the encoder (worth it for large cohorts)")
    channels_last: bool = True
    features_dtype: Literal["float32", "float16"] = "float32"
    num_workers: int | None = Field(None, ge=0, description="loader threads/processes per device; default: cores-1 split over GPUs")
    stain_norm: Literal["none", "macenko", "reinhard"] = Field(
        "none", description="stain normalisation before the encoder: per-slide fit, batched on the device; "
        "it changes the encoder id (suffix -macenko, -reinhard)")
    loader: Literal["auto", "threads", "processes"] = Field(
        "auto", description="decoding threads (auto on CUDA: fastest) or DataLoader processes (auto on the CPU: "
        "a codec crash fails one slide, not the run)")
