"""Where a pyramid level's JPEG tiles lie in a file: the contract between the layout finders (TIFF in
:mod:`wsi_mil.tiling.direct`, DICOM in :mod:`wsi_mil.tiling.dicom_frames`) and the direct decoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class JpegTileLayout:
    """Where a level's JPEG tiles lie in the file and how to decode them."""

    path: Path
    width: int  # level pixels
    height: int
    tile_w: int
    tile_h: int
    offsets: NDArray[np.int64]  # (tiles_down * tiles_across,) row-major
    bytecounts: NDArray[np.int64]
    tables: bytes | None  # the level's JPEGTables (abbreviated table stream) or None
    colorspace: str  # "RGB": RGB components (an Adobe marker is spliced in); "YCbCr": as the JPEG says

    @property
    def tiles_across(self) -> int:
        return -(-self.width // self.tile_w)

    @property
    def tiles_down(self) -> int:
        return -(-self.height // self.tile_h)
