"""The ``tiling`` config section (``wsi-mil tile``): tissue detection and the tile grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from wsi_mil.config import StrictModel


class TissueConfig(StrictModel):
    """Tissue detection on a low-resolution image of the slide."""

    mask_mpp: float = Field(8.0, gt=0, description="µm per pixel of the tissue mask")
    method: Literal["otsu-saturation", "otsu-od", "otsu-fluorescence"] = Field(
        "otsu-saturation", description="otsu-saturation or otsu-od for brightfield (H&E, IHC) slides; "
        "otsu-fluorescence for bright tissue on a dark background")
    min_saturation: float = Field(0.05, ge=0, le=1, description="floor on the Otsu threshold")
    max_saturation_threshold: float = Field(0.15, ge=0, le=1, description="cap on the Otsu threshold")
    background_brightness: float = Field(0.88, gt=0, le=1, description="gray above this is glass")
    black_brightness: float = Field(0.16, ge=0, lt=1, description="gray below this is ink/dirt")
    remove_pen: bool = True
    min_tissue_area_um2: float = Field(20_000.0, ge=0, description="smaller objects are dropped")
    max_hole_area_um2: float = Field(20_000.0, ge=0, description="smaller holes are filled")
    closing_radius_um: float = Field(16.0, ge=0)


class TilingConfig(StrictModel):
    """How slides are cut into tiles (``wsi-mil tile``)."""

    target_mpp: float = Field(0.5, gt=0, description="µm per pixel of the tiles")
    tile_size: int = Field(224, ge=16, le=4096, description="tile side in pixels at target_mpp")
    stride: int | None = Field(None, ge=1, description="pixels at target_mpp; default tile_size")
    min_tissue_fraction: float = Field(0.25, ge=0, le=1)
    mpp: float | None = Field(None, gt=0, description="level-0 µm/px of slides whose metadata has no usable mpp "
                              "(of every slide with mpp_force)")
    mpp_table: Path | None = Field(None, description="CSV slide_id,mpp: per-slide level-0 µm/px, used like 'mpp' "
                                   "and before it")
    mpp_force: bool = Field(False, description="use mpp / mpp_table even where the slide metadata has a usable mpp")
    codec: Literal["jpeg", "zstd"] = "jpeg"
    jpeg_quality: int = Field(90, ge=1, le=100)
    jpeg_subsampling: Literal["444", "422", "420"] = Field(
        "420", description="JPEG chroma subsampling: 420 (default: smallest, fastest to decode) or 444 "
        "(full chroma, each tile decodes independently of its chunk neighbours)")
    tiles_per_chunk: int = Field(64, ge=1, le=4096)
    chunks_per_shard: int = Field(16, ge=1, description="chunks per shard file (bounds writer memory)")
    tissue: TissueConfig = TissueConfig()

    @field_validator("jpeg_subsampling", mode="before")
    @classmethod
    def _subsampling_as_text(cls, value: Any) -> Any:
        """``--set jpeg_subsampling=420`` arrives as the YAML integer 420: read it as the text."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_serializer(mode="wrap")
    def _drop_unset_mpp_options(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """Leave ``mpp_table`` and ``mpp_force`` out while unset, so stores cut before they existed still match."""
        out: dict[str, Any] = handler(self)
        if self.mpp_table is None:
            out.pop("mpp_table", None)
        if not self.mpp_force:
            out.pop("mpp_force", None)
        return out

    @model_validator(mode="after")
    def _stride_default(self) -> TilingConfig:
        if self.stride is None:
            object.__setattr__(self, "stride", self.tile_size)
        return self
