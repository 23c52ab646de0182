"""Tile codecs for patch stores.

``wsi_mil.jpeg_tiles``: a zarr v3 array-to-bytes codec for chunks of RGB tiles
``(k, S, S, 3) uint8``. A chunk is encoded as one baseline JPEG of ``(k*S, S, 3)`` (tiles stacked
vertically), so decoding ``k`` tiles is one libjpeg-turbo call. The default keeps full chroma
(4:4:4): with S a multiple of 8, JPEG blocks never straddle two tiles, so a tile decodes exactly
as if it had been encoded alone (4:2:0 is smaller and faster, but the decoder's chroma
upsampling then blends one pixel row across tile borders). Figures in ``BENCHMARKS.md``. Importing this module registers the codec with zarr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec

JPEG_CODEC_NAME = "wsi_mil.jpeg_tiles"
JPEG_MAX_SIDE = 65500  # JPEG's limit on image height is 65,535 px


@dataclass(frozen=True)
class JpegTilesCodec(ArrayBytesCodec):
    """Encode a chunk of tiles ``(k, S, S, 3) uint8`` as one JPEG image ``(k*S, S, 3)``."""

    is_fixed_size = False
    quality: int = 90
    subsampling: str = "444"

    def __init__(self, *, quality: int = 90, subsampling: str = "444") -> None:
        if subsampling not in ("444", "422", "420"):
            raise ValueError(f"JPEG chroma subsampling must be 444, 422 or 420, not {subsampling!r}")
        object.__setattr__(self, "quality", int(quality))
        object.__setattr__(self, "subsampling", str(subsampling))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JpegTilesCodec:
        return cls(**(data.get("configuration") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": JPEG_CODEC_NAME,
                "configuration": {"quality": self.quality, "subsampling": self.subsampling}}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        chunk = getattr(chunk_grid, "chunk_shape", None)
        if chunk is not None and (len(chunk) != 4 or chunk[3] != 3 or chunk[0] * chunk[1] > JPEG_MAX_SIDE):
            raise ValueError(f"{JPEG_CODEC_NAME} needs chunks (k, S, S, 3) with k*S <= {JPEG_MAX_SIDE}")

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        k, s, w, c = chunk_spec.shape
        image = imagecodecs.jpeg8_decode(chunk_bytes.to_bytes())
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(image.reshape(k, s, w, c))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        k, s, w, c = chunk_spec.shape
        tiles = np.ascontiguousarray(chunk_array.as_ndarray_like(), dtype=np.uint8)
        data = imagecodecs.jpeg8_encode(tiles.reshape(k * s, w, c), level=self.quality,
                                        subsampling=self.subsampling)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError(f"{JPEG_CODEC_NAME} has no fixed encoded size")


register_codec(JPEG_CODEC_NAME, JpegTilesCodec)


def tile_codecs(codec: str, quality: int = 90, subsampling: str = "444") -> list[Any]:
    """The inner codec chain for a tile chunk: ``"jpeg"`` (lossy) or ``"zstd"`` (lossless)."""
    from zarr.codecs import BytesCodec, ZstdCodec

    if codec == "jpeg":
        return [JpegTilesCodec(quality=quality, subsampling=subsampling)]
    if codec == "zstd":
        return [BytesCodec(), ZstdCodec(level=1)]
    raise ValueError(f"unknown tile codec {codec!r}; choose 'jpeg' or 'zstd'")
