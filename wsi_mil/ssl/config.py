"""Configuration of SimCLR pretraining (``wsi-mil pretrain``): the ``pretrain`` section.

Build it with :func:`wsi_mil.config.build_config` (defaults < YAML ``pretrain:`` section < CLI
options < ``--set`` overrides). Unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from wsi_mil.config import StrictModel


class AugmentConfig(StrictModel):
    """The two-view augmentation pipeline (all run in batch on the training device).

    Order: random resized crop + flips + 90-degree rotations (one resampling), HED stain jitter,
    colour jitter, grayscale, Gaussian blur. An op with probability 0 (or ``False``) is off.
    """

    crop_scale: tuple[float, float] = Field((0.2, 1.0), description="area fraction of the tile kept by the crop")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="aspect ratio range of the crop")
    flip: bool = Field(True, description="random horizontal flip (with rot90: all 8 dihedral poses)")
    rot90: bool = Field(True, description="random rotation by 0, 90, 180 or 270 degrees")
    hed_p: float = Field(1.0, ge=0, le=1, description="probability of HED stain jitter")
    hed_alpha: float = Field(0.05, ge=0, lt=1, description="stain scale jitter: factor in [1-a, 1+a]")
    hed_beta: float = Field(0.01, ge=0, description="stain shift jitter in skimage rgb2hed units")
    color_p: float = Field(0.8, ge=0, le=1, description="probability of colour jitter")
    brightness: float = Field(0.4, ge=0, lt=1)
    contrast: float = Field(0.4, ge=0, lt=1)
    saturation: float = Field(0.4, ge=0, lt=1)
    hue: float = Field(0.1, ge=0, le=0.5, description="hue shift in turns")
    grayscale_p: float = Field(0.0, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1, description="probability of Gaussian blur")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="blur sigma range, output pixels")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("crop_scale must be (lo, hi) with 0 < lo <= hi <= 1")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError("crop_ratio must be (lo, hi) with 0 < lo <= hi")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi <= 20:
            raise ValueError("blur_sigma must be (lo, hi) with 0 < lo <= hi <= 20")
        return self


class PretrainConfig(StrictModel):
    """SimCLR training of a timm backbone on the job's own tiles."""

    arch: str = Field("resnet18", description="timm architecture, created with num_classes=0")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=2, description="tiles per step per process (2 views each)")
    temperature: float = Field(0.1, gt=0, le=10, description="NT-Xent temperature")
    optimizer: Literal["adamw", "lars"] = "adamw"
    lr: float | None = Field(None, gt=0, description="peak learning rate; default by optimizer")
    weight_decay: float | None = Field(None, ge=0, description="default 0.05 (adamw) / 1e-6 (lars)")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up length, in epochs")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr of the cosine decay / peak lr")
    proj_hidden_dim: int = Field(2048, ge=1)
    proj_dim: int = Field(128, ge=1)
    proj_layers: int = Field(2, ge=1, le=4)
    input_size: int | None = Field(None, ge=16, description="view side in pixels; default: the timm data config")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    channels_last: bool = True
    compile: bool = Field(False, description="torch.compile backbone + head (minutes of compiling; for long GPU runs)")
    sync_batchnorm: bool = Field(True, description="under DDP on GPUs, batch-norm statistics over all processes")
    seed: int = 0
    shuffle_chunks: int = Field(16, ge=1, description="storage chunks mixed into one shuffle group")
    read_threads: int = Field(4, ge=1, description="threads decoding tiles ahead of the GPU")
    max_tiles: int | None = Field(None, ge=1, description="cap on tiles per epoch (per process)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps in total")
    log_every: int = Field(10, ge=1, description="steps between progress lines")
    augment: AugmentConfig = AugmentConfig()

    def peak_lr(self) -> float:
        """The peak learning rate: ``lr`` or the optimizer's default (scaled for LARS)."""
        if self.lr is not None:
            return self.lr
        if self.optimizer == "lars":  # SimCLR: 0.3 x batch / 256 (per process batch here)
            return 0.3 * self.batch_size / 256
        return 1e-3

    def decay(self) -> float:
        """The weight decay: ``weight_decay`` or the optimizer's default."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 1e-6 if self.optimizer == "lars" else 0.05
