"""Patch stores: ``patches/{slide_id}.zarr``, one zarr v3 group per slide (contract in DESIGN.md).

Arrays: ``tiles`` (N, S, S, 3) uint8, chunked by ``k`` tiles and sharded so a store is a handful
of files; ``coords`` (N, 2) int64 level-0 (x, y) of each tile's top-left corner; ``tissue_fraction``
(N,) float32; ``tissue_mask`` (h, w) uint8 at ``attrs['tissue_mask_downsample']``.
Row index = tile id everywhere downstream.

A store is written into a temporary folder and renamed when complete. Its attributes carry a
manifest (relative path and size of every data file); :func:`open_patch_store` checks schema,
completeness and the manifest, so a truncated or half-copied store is refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zarr

from wsi_mil import __version__
from wsi_mil.atomic import atomic_path
from wsi_mil.errors import StoreError
from wsi_mil.jobdir import patches_dir
from wsi_mil.stores.codecs import (
    JPEG_MAX_SIDE,
    decode_tile_chunk,
    encode_tile_chunk,
    read_shard_index,
    shard_index,
    tile_codecs,
)
from wsi_mil.stores.common import PATCHES_SCHEMA

REQUIRED_ATTRS = (
    "schema", "wsi_mil_version", "complete", "slide_id", "n_tiles", "tile_size", "target_mpp",
    "mpp", "tile_size_level0", "manifest",
)
ARRAYS = ("tiles", "coords", "tissue_fraction", "tissue_mask")


def _manifest(root: Path) -> dict[str, int]:
    """Relative path -> size of every data file below ``root`` (metadata files excluded)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "zarr.json":
            out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out


class PatchStoreWriter:
    """Stream tiles into a new patch store; call :meth:`append` with batches, then :meth:`close`.

    Memory holds one chunk of raw tiles at most. Chunks are encoded here and appended to their
    shard file as they come (no shard is joined in memory), which gets its index at the end: zarr
    v3's sharding layout, which zarr reads back (zarr's own write path costs ~3x the JPEG encoding
    itself).
    Used as a context manager: on error the temporary folder is removed and nothing is renamed.
    """

    def __init__(
        self,
        path: str | Path,
        n_tiles: int,
        tile_size: int,
        attrs: dict[str, Any],
        codec: str = "jpeg",
        jpeg_quality: int = 90,
        tiles_per_chunk: int = 64,
        chunks_per_shard: int = 16,
        jpeg_subsampling: str = "420",
    ) -> None:
        self.path = Path(path)
        self.n_tiles = int(n_tiles)
        self.tile_size = int(tile_size)
        self.attrs = dict(attrs)
        k = max(1, min(int(tiles_per_chunk), JPEG_MAX_SIDE // self.tile_size))
        self.chunk = k
        self.shard = k * max(1, int(chunks_per_shard))
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._group = zarr.open_group(self._tmp, mode="w", zarr_format=3)
        codecs = tile_codecs(codec, jpeg_quality, jpeg_subsampling)
        s = self.tile_size
        self._tiles = self._group.create_array(
            "tiles", shape=(self.n_tiles, s, s, 3), dtype="uint8", chunks=(k, s, s, 3),
            shards=(self.shard, s, s, 3), serializer=codecs[0], compressors=codecs[1:] or None,
            fill_value=255,
        )
        self.codec, self.jpeg_quality, self.jpeg_subsampling = codec, jpeg_quality, jpeg_subsampling
        self.chunks_per_shard = self.shard // k
        self.attrs.update(codec=codec, jpeg_quality=jpeg_quality if codec == "jpeg" else None,
                          jpeg_subsampling=jpeg_subsampling if codec == "jpeg" else None,
                          tiles_per_chunk=k, tiles_per_shard=self.shard)
        self._buf = np.full((k, s, s, 3), 255, dtype=np.uint8)  # one chunk, padded with white
        self._fill = 0  # tiles in the chunk buffer
        self._lengths: list[int] = []  # bytes of each chunk written to the open shard file
        self._shard_file: BinaryIO | None = None
        self._written = 0  # tiles encoded so far
        self._shards = 0  # shard files written
        self._closed = False

    def __enter__(self) -> PatchStoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort(exc_type, exc, tb)

    def append(self, tiles: np.ndarray) -> None:
        """Add tiles ``(k, S, S, 3) uint8`` in tile-id order."""
        tiles = np.asarray(tiles)
        s = self.tile_size
        if tiles.ndim != 4 or tiles.shape[1:] != (s, s, 3) or tiles.dtype != np.uint8:
            raise StoreError(f"{self.path}: tiles must be uint8 (k, {s}, {s}, 3), got {tiles.dtype} {tiles.shape}")
        if self._written + self._fill + len(tiles) > self.n_tiles:
            raise StoreError(f"{self.path}: more tiles than the {self.n_tiles} announced")
        i = 0
        while i < len(tiles):
            n = min(len(tiles) - i, len(self._buf) - self._fill)
            self._buf[self._fill:self._fill + n] = tiles[i:i + n]
            self._fill += n
            i += n
            if self._fill == len(self._buf):
                self._flush()

    def append_encoded(self, data: bytes, n: int) -> None:
        """Add one chunk already encoded by :func:`~wsi_mil.stores.codecs.encode_tile_chunk` from
        ``n`` tiles padded with white to a full chunk (``n`` < chunk only for the last one), e.g.
        by threads. Not to be mixed with a partly filled :meth:`append` buffer."""
        if self._fill:
            raise StoreError(f"{self.path}: append_encoded after a partial append of {self._fill} tiles")
        if not 0 < n <= self.chunk or (n < self.chunk and self._written + n != self.n_tiles):
            raise StoreError(f"{self.path}: an encoded chunk of {n} tiles (chunks hold {self.chunk}; "
                             "only the last may be short)")
        if self._written + n > self.n_tiles:
            raise StoreError(f"{self.path}: more tiles than the {self.n_tiles} announced")
        self._write_chunk(data)
        self._written += n
        self._flush()

    def _flush(self) -> None:
        """Encode the chunk buffer (padded with white); finish the shard when it is full or last."""
        if self._fill:
            self._buf[self._fill:] = 255
            self._write_chunk(encode_tile_chunk(self._buf, self.codec, self.jpeg_quality, self.jpeg_subsampling))
            self._written += self._fill
            self._fill = 0
        if self._shard_file is not None and (len(self._lengths) == self.chunks_per_shard
                                             or self._written == self.n_tiles):
            self._shard_file.write(shard_index(self._lengths, self.chunks_per_shard))
            self._shard_file.close()
            self._shard_file = None
            self._shards += 1
            self._lengths = []

    def _write_chunk(self, data: bytes) -> None:
        """Append one encoded chunk to the current shard file (opened on its first chunk)."""
        if self._shard_file is None:
            shard = self._tmp / "tiles" / "c" / str(self._shards) / "0" / "0" / "0"
            shard.parent.mkdir(parents=True, exist_ok=True)
            self._shard_file = open(shard, "wb")  # noqa: SIM115 (closed by _flush or abort)
        self._shard_file.write(data)
        self._lengths.append(len(data))

    def close(
        self,
        coords: np.ndarray,
        tissue_fraction: np.ndarray,
        tissue_mask: np.ndarray,
        mask_downsample: float,
    ) -> Path:
        """Write the per-tile arrays and attributes, then rename the store into place."""
        self._flush()
        if self._written != self.n_tiles:
            raise StoreError(f"{self.path}: {self._written} tiles written, {self.n_tiles} announced")
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        fraction = np.asarray(tissue_fraction, dtype=np.float32).reshape(-1)
        if len(coords) != self.n_tiles or len(fraction) != self.n_tiles:
            raise StoreError(f"{self.path}: coords/tissue_fraction length differs from {self.n_tiles} tiles")
        g = self._group
        g.create_array("coords", data=coords, chunks=(max(1, min(len(coords), 1 << 16)), 2))
        g.create_array("tissue_fraction", data=fraction, chunks=(max(1, min(len(fraction), 1 << 16)),))
        mask = np.ascontiguousarray(np.asarray(tissue_mask, dtype=np.uint8))
        g.create_array("tissue_mask", data=mask, chunks=tuple(max(1, d) for d in mask.shape))
        attrs = dict(self.attrs)
        attrs.update(
            schema=PATCHES_SCHEMA, wsi_mil_version=__version__, n_tiles=self.n_tiles,
            tile_size=self.tile_size, tissue_mask_downsample=float(mask_downsample),
            manifest=_manifest(self._tmp), complete=True,
        )
        g.update_attributes(attrs)  # one write of the group's metadata (attrs.update writes it once per key)
        self._closed = True
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self, *exc_info: Any) -> None:
        """Remove the temporary store."""
        if self._shard_file is not None:
            self._shard_file.close()
            self._shard_file = None
        if not self._closed:
            self._closed = True
            try:
                self._ctx.__exit__(*(exc_info or (RuntimeError, RuntimeError("aborted"), None)))
            except BaseException:  # the context re-raises the exception it was given
                pass


def write_patch_store(
    path: str | Path,
    tiles: np.ndarray | Iterable[np.ndarray],
    coords: np.ndarray,
    tissue_fraction: np.ndarray,
    tissue_mask: np.ndarray,
    mask_downsample: float,
    attrs: dict[str, Any],
    **options: Any,
) -> Path:
    """Write a whole patch store atomically (tiles: (N, S, S, 3) array or batches of them).

    ``attrs`` must hold at least ``slide_id``, ``target_mpp``, ``mpp`` and ``tile_size_level0``;
    the writer adds schema, version, counts, codec and the manifest. ``options`` are those of
    :class:`PatchStoreWriter` (``codec``, ``jpeg_quality``, ``tiles_per_chunk``, ...).
    """
    coords = np.asarray(coords).reshape(-1, 2)
    n = len(coords)
    if isinstance(tiles, np.ndarray):
        batches: Iterable[np.ndarray] = [tiles] if len(tiles) else []
        size = tiles.shape[1] if tiles.ndim == 4 else int(attrs.get("tile_size", 0))
    else:
        batches = tiles
        size = int(attrs["tile_size"])
    writer = PatchStoreWriter(path, n, size, attrs, **options)
    with writer:
        for batch in batches:
            writer.append(batch)
        return writer.close(coords, tissue_fraction, tissue_mask, mask_downsample)


class PatchStore:
    """A validated, complete patch store opened for reading (see module docstring for arrays)."""

    def __init__(self, path: Path, group: zarr.Group, attrs: dict[str, Any], chunk_size: int) -> None:
        self.path = path
        self.attrs = attrs
        self._group = group
        self._tiles_array: zarr.Array | None = None
        self.slide_id: str = str(attrs["slide_id"])
        self.n_tiles: int = int(attrs["n_tiles"])
        self.tile_size: int = int(attrs["tile_size"])
        self.chunk_size: int = int(chunk_size)
        self.coords: np.ndarray = np.asarray(group["coords"][:], dtype=np.int64).reshape(-1, 2)  # type: ignore[index]
        self.tissue_fraction: np.ndarray = np.asarray(group["tissue_fraction"][:], dtype=np.float32)  # type: ignore[index]
        self.codec = str(attrs.get("codec", ""))
        shard = int(attrs.get("tiles_per_shard", 0))
        self._chunks_per_shard = shard // self.chunk_size if shard else 0
        # our own writer's layout: chunks are read straight from the shard files (zarr is the
        # general reader and the fallback); shard indexes are cached per store handle
        self._direct = self.codec in ("jpeg", "zstd") and self._chunks_per_shard > 0
        self._indexes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n_tiles

    @property
    def _tiles(self) -> zarr.Array:
        """The tiles through zarr (the general reader, for layouts not read directly)."""
        if self._tiles_array is None:
            tiles = self._group["tiles"]
            if not isinstance(tiles, zarr.Array):
                raise StoreError(f"{self.path}: 'tiles' is a group, not an array; re-run 'wsi-mil tile'")
            self._tiles_array = tiles
        return self._tiles_array

    @property
    def tile_size_level0(self) -> float:
        """Side of one tile in level-0 pixels (float: physical scale is exact)."""
        return float(self.attrs["tile_size_level0"])

    def chunk_ranges(self) -> list[tuple[int, int]]:
        """``[start, stop)`` tile ranges aligned to storage chunks (the cheapest read units)."""
        k = self.chunk_size
        return [(i, min(i + k, self.n_tiles)) for i in range(0, self.n_tiles, k)]

    def read_tiles(self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Tiles ``[start, stop)`` as (n, S, S, 3) uint8 RGB, optionally into ``out`` (n, S, S, 3).

        Chunks are decoded straight from the shard files (no zarr machinery, thread-safe, the
        codecs release the GIL); whole chunks inside the range decode directly into ``out``.
        """
        stop = self.n_tiles if stop is None else min(int(stop), self.n_tiles)
        start = max(0, int(start))
        s = self.tile_size
        n = max(0, stop - start)
        if out is None:
            out = np.empty((n, s, s, 3), dtype=np.uint8)
        elif out.shape != (n, s, s, 3) or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 {(n, s, s, 3)}, got {out.dtype} {out.shape}")
        if n == 0:
            return out
        try:
            if not self._direct:
                out[...] = np.asarray(self._tiles[start:stop])
                return out
            k = self.chunk_size
            for j in range(start // k, (stop - 1) // k + 1):
                a, b = max(start, j * k), min(stop, (j + 1) * k)
                whole = a == j * k and b == (j + 1) * k and out.flags.c_contiguous
                if whole:
                    self._read_chunk(j, out[a - start: b - start])
                else:
                    out[a - start: b - start] = self._read_chunk(j)[a - j * k: b - j * k]
            return out
        except ValueError as exc:
            raise StoreError(f"{self.path}: cannot decode tiles {start}-{stop}: {exc}; the store is "
                             "damaged: delete it and re-run 'wsi-mil tile --overwrite'") from exc
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read tiles {start}-{stop}: {exc}; the store is "
                             "damaged: delete it and re-run 'wsi-mil tile --overwrite'") from exc

    def chunk_bytes(self, j: int) -> bytes:
        """The encoded bytes of chunk ``j`` as stored (one JPEG of its tiles stacked vertically, or zstd),
        read from its shard file without zarr's machinery."""
        cps = self._chunks_per_shard
        if not self._direct:
            raise StoreError(f"{self.path}: its chunks are not stored one per shard slot ({self.codec}); read tiles instead")
        shard, local = divmod(j, cps)
        path = self.path / "tiles" / "c" / str(shard) / "0" / "0" / "0"
        with open(path, "rb") as f:
            index = self._indexes.get(shard)
            if index is None:
                index = self._indexes[shard] = read_shard_index(f, cps)
            offset, nbytes = (int(v) for v in index[local])
            f.seek(offset)
            return f.read(nbytes)

    def _read_chunk(self, j: int, out: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``j`` (k, S, S, 3), decoded from its shard file without zarr's machinery."""
        s = self.tile_size
        return decode_tile_chunk(self.chunk_bytes(j), (self.chunk_size, s, s, 3), self.codec, out)

    def read_tile_indices(self, indices: np.ndarray) -> np.ndarray:
        """Tiles at arbitrary ids (sorted internally, returned in the order given)."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return np.empty((0, self.tile_size, self.tile_size, 3), dtype=np.uint8)
        return np.asarray(self._tiles.get_orthogonal_selection((indices, slice(None), slice(None), slice(None))))

    def tissue_mask(self) -> tuple[np.ndarray, float]:
        """The tissue mask (h, w) uint8 {0, 1} and its downsample relative to level 0."""
        mask = np.asarray(self._group["tissue_mask"][:])  # type: ignore[index]
        return mask, float(self.attrs["tissue_mask_downsample"])


def _read_attrs(path: Path) -> tuple[zarr.Group, dict[str, Any]]:
    if not path.exists():
        raise StoreError(f"{path}: patch store not found; run 'wsi-mil tile' first")
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: not a zarr v3 patch store (no zarr.json); delete it and re-run 'wsi-mil tile'")
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
        attrs = dict(group.attrs)
    except Exception as exc:
        raise StoreError(f"{path}: unreadable patch store ({exc}); delete it and re-run 'wsi-mil tile'") from exc
    return group, attrs


def array_metadata(path: Path, name: str) -> dict[str, Any]:
    """The zarr v3 metadata of array ``name`` of the store at ``path`` (read as JSON, no zarr)."""
    try:
        meta = json.loads((path / name / "zarr.json").read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("shape"), list):
            raise ValueError("no array shape")
        return meta
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: patch store has no array '{name}'; re-run 'wsi-mil tile'") from exc
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable metadata of array '{name}' ({exc}); re-run 'wsi-mil tile --overwrite'") from exc


def _chunk_len(path: Path, meta: dict[str, Any]) -> int:
    """Rows per storage chunk of ``tiles``: the inner chunk of a sharded array, else the grid's."""
    try:
        for codec in meta.get("codecs", []):
            if codec.get("name") == "sharding_indexed":
                return int(codec["configuration"]["chunk_shape"][0])
        return int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(f"{path}: unreadable chunk layout of array 'tiles' ({exc!r}); "
                         "re-run 'wsi-mil tile --overwrite'") from exc


def validate_patch_store(path: str | Path) -> tuple[zarr.Group, dict[str, Any]]:
    """Check schema, completeness, arrays and manifest; return the open group and attributes."""
    group, attrs, _ = _validate(Path(path))
    return group, attrs


def _validate(path: Path) -> tuple[zarr.Group, dict[str, Any], dict[str, dict[str, Any]]]:
    """:func:`validate_patch_store`, also returning each array's metadata."""
    group, attrs = _read_attrs(path)
    if attrs.get("schema") != PATCHES_SCHEMA:
        raise StoreError(f"{path}: not a wsi_mil patch store (schema {attrs.get('schema')!r}, expected {PATCHES_SCHEMA!r})")
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise StoreError(f"{path}: patch store is missing attribute(s) {', '.join(missing)}; re-run 'wsi-mil tile'")
    if attrs.get("complete") is not True:
        raise StoreError(f"{path}: patch store is incomplete; re-run 'wsi-mil tile' to redo it")
    for name, size in attrs["manifest"].items():
        f = path / name
        if not f.is_file():
            raise StoreError(f"{path}: truncated patch store: '{name}' is missing; re-run 'wsi-mil tile --overwrite'")
        if f.stat().st_size != size:
            raise StoreError(f"{path}: truncated patch store: '{name}' has {f.stat().st_size} bytes, "
                             f"expected {size}; re-run 'wsi-mil tile --overwrite'")
    n, s = int(attrs["n_tiles"]), int(attrs["tile_size"])
    metas = {k: array_metadata(path, k) for k in ARRAYS}
    shapes = {k: tuple(m["shape"]) for k, m in metas.items()}
    if shapes["tiles"] != (n, s, s, 3) or shapes["coords"] != (n, 2) or shapes["tissue_fraction"] != (n,):
        raise StoreError(f"{path}: patch store arrays disagree with n_tiles={n}, tile_size={s}: {shapes}")
    return group, attrs, metas


def open_patch_store(path: str | Path) -> PatchStore:
    """Open and validate a complete patch store; :class:`StoreError` names what is wrong."""
    path = Path(path)
    group, attrs, metas = _validate(path)
    return PatchStore(path, group, attrs, _chunk_len(path, metas["tiles"]))


def is_complete_patch_store(path: str | Path) -> bool:
    """True if ``path`` is a valid, complete patch store (used to skip work on resume)."""
    try:
        validate_patch_store(path)
    except StoreError:
        return False
    return True


def list_patch_stores(job: str | Path) -> list[Path]:
    """The ``*.zarr`` stores in ``JOB/patches`` (complete or not), sorted by slide id."""
    d = patches_dir(job)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.zarr") if not p.name.startswith("."))
