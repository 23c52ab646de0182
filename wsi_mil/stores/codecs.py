"""Tile codecs for patch stores.

``wsi_mil.jpeg_tiles``: a zarr v3 array-to-bytes codec for chunks of RGB tiles
``(k, S, S, 3) uint8``. A chunk is encoded as one baseline JPEG of ``(k*S, S, 3)`` (tiles stacked
vertically), so decoding ``k`` tiles is one libjpeg-turbo call. With S a multiple of 16, no JPEG
block straddles two tiles. The default is quality 90 with 4:2:0 chroma, like the scanners' own
JPEG: the smallest and fastest to decode; the decoder's chroma upsampling then blends the colour
(not the luminance) of a tile's first and last pixel rows with its neighbour's. 4:4:4 keeps full
chroma and makes every tile decode exactly as if encoded alone, at ~1.5x the bytes and ~0.65x the
decode speed. Measured figures in ``BENCHMARKS.md``. Importing this module registers the codec with zarr;
so does zarr itself in any process where the package is installed, through the ``zarr.codecs``
entry point in ``pyproject.toml`` (plain ``zarr.open_group`` reads a patch store without
``import wsi_mil``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import google_crc32c
import imagecodecs
import numpy as np
import simplejpeg
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
    subsampling: str = "420"

    def __init__(self, *, quality: int = 90, subsampling: str = "420") -> None:
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
        image = decode_jpeg_chunk(chunk_bytes.to_bytes(), tuple(chunk_spec.shape))  # type: ignore[arg-type]
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(image)  # type: ignore[arg-type]

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        k, s, w, c = chunk_spec.shape
        tiles = np.asarray(chunk_array.as_ndarray_like(), dtype=np.uint8)
        data = encode_jpeg_chunk(tiles.reshape(k * s, w, c), self.quality, self.subsampling)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError(f"{JPEG_CODEC_NAME} has no fixed encoded size")


register_codec(JPEG_CODEC_NAME, JpegTilesCodec)


def tile_codecs(codec: str, quality: int = 90, subsampling: str = "420") -> list[Any]:
    """The inner codec chain for a tile chunk: ``"jpeg"`` (lossy) or ``"zstd"`` (lossless)."""
    from zarr.codecs import BytesCodec, ZstdCodec

    if codec == "jpeg":
        return [JpegTilesCodec(quality=quality, subsampling=subsampling)]
    if codec == "zstd":
        return [BytesCodec(), ZstdCodec(level=1)]
    raise ValueError(f"unknown tile codec {codec!r}; choose 'jpeg' or 'zstd'")


_encode_buffers = threading.local()


def encode_jpeg_chunk(image: np.ndarray, quality: int, subsampling: str) -> bytes:
    """JPEG bytes (libjpeg-turbo through imagecodecs) of one (H, W, 3) uint8 image: a chunk's tiles
    stacked vertically.

    Encoded into this thread's reused output buffer (the size of the raw pixels), then copied out:
    the same bytes as a plain ``jpeg8_encode``, without its output buffer growing by doubling
    (~6-10 % of an encode here). A larger result (noise at quality 100) makes imagecodecs return
    its own buffer instead, so nothing is cut.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    buf: bytearray | None = getattr(_encode_buffers, "buf", None)
    if buf is None or len(buf) < image.nbytes:
        buf = _encode_buffers.buf = bytearray(image.nbytes)
    return bytes(imagecodecs.jpeg8_encode(image, level=quality, subsampling=subsampling, out=buf))


def encode_tile_chunk(tiles: np.ndarray, codec: str, quality: int = 90, subsampling: str = "420") -> bytes:
    """Encode one full chunk ``(k, S, S, 3) uint8`` exactly as the zarr codec chain would."""
    k, s, w, c = tiles.shape
    if codec == "jpeg":
        return encode_jpeg_chunk(tiles.reshape(k * s, w, c), quality, subsampling)
    if codec == "zstd":
        return bytes(imagecodecs.zstd_encode(np.ascontiguousarray(tiles).tobytes(), level=1))
    raise ValueError(f"unknown tile codec {codec!r}; choose 'jpeg' or 'zstd'")


def shard_index(lengths: list[int], chunks_per_shard: int) -> bytes:
    """The tail of a zarr v3 ``sharding_indexed`` shard whose chunks (``lengths`` bytes each) lie one
    after the other from byte 0: little-endian uint64 (offset, nbytes) per chunk, all-ones for absent
    chunks, then its crc32c. Writing the chunks and then this tail gives :func:`shard_bytes`
    without joining them in memory.
    """
    index = np.full((chunks_per_shard, 2), np.iinfo(np.uint64).max, dtype="<u8")
    if lengths:
        n = np.asarray(lengths, dtype="<u8")
        index[:len(n), 1] = n
        index[:len(n), 0] = np.cumsum(n) - n
    raw = index.tobytes()
    return raw + np.array([google_crc32c.value(raw)], dtype="<u4").tobytes()


def shard_bytes(chunks: list[bytes], chunks_per_shard: int) -> bytes:
    """A zarr v3 ``sharding_indexed`` shard: encoded chunks, then the index (little-endian
    uint64 (offset, nbytes) per chunk, all-ones for absent chunks) and its crc32c, at the end.
    """
    return b"".join(chunks) + shard_index([len(c) for c in chunks], chunks_per_shard)


def decode_jpeg_chunk(data: bytes, shape: tuple[int, int, int, int],
                      out: np.ndarray | None = None) -> np.ndarray:
    """Decode one JPEG chunk (tiles stacked vertically) to ``shape`` (k, S, S, 3) uint8, into ``out``
    (C-contiguous) if given. libjpeg-turbo through its TurboJPEG call (simplejpeg: ~10 % faster
    than imagecodecs' here, the same pixels: both are libjpeg-turbo's accurate integer IDCT and
    smooth chroma upsampling). ValueError if the image is not k*S x S x 3.
    """
    k, s, w, c = shape
    if out is not None and not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    image = simplejpeg.decode_jpeg(data, "RGB", buffer=out)  # strict: a damaged chunk raises
    if image.shape != (k * s, w, c):
        raise ValueError(f"JPEG chunk is {image.shape}, expected {(k * s, w, c)}")
    return image.reshape(shape) if out is None else out


def decode_tile_chunk(data: bytes, shape: tuple[int, int, int, int], codec: str,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Decode one chunk written by :func:`encode_tile_chunk` to ``shape`` (k, S, S, 3) uint8.

    ``out``: an optional C-contiguous (k, S, S, 3) uint8 array to decode into (no extra copy).
    The codecs release the GIL, so threads decode in parallel.
    """
    if codec == "jpeg":
        return decode_jpeg_chunk(data, shape, out)
    if codec == "zstd":
        if out is not None:
            imagecodecs.zstd_decode(data, out=out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            return out
        return np.frombuffer(imagecodecs.zstd_decode(data), dtype=np.uint8).reshape(shape)
    raise ValueError(f"unknown tile codec {codec!r}")


def read_shard_index(f: Any, chunks_per_shard: int) -> np.ndarray:
    """The (chunks_per_shard, 2) uint64 (offset, nbytes) index at the end of an open shard file.

    Raises ValueError if its crc32c does not match (a damaged shard).
    """

    size = chunks_per_shard * 16 + 4
    f.seek(-size, 2)
    raw = f.read(size)
    if len(raw) != size:
        raise ValueError("shard too short for its index")
    index, crc = raw[:-4], raw[-4:]
    if np.array([google_crc32c.value(index)], dtype="<u4").tobytes() != crc:
        raise ValueError("shard index checksum mismatch")
    return np.frombuffer(index, dtype="<u8").reshape(chunks_per_shard, 2)
