"""Feature files: ``features/{encoder_id}/{slide_id}.h5`` (contract in DESIGN.md).

Datasets ``features`` (N, D) float16/float32 and ``coords`` (N, 2) int64 level-0 (x, y), row i =
tile i of the patch store. The names match CLAM and TRIDENT, so their loaders read our files.
Attributes: ``schema``, ``wsi_mil_version``, ``complete``, ``encoder_id``, ``embed_dim`` and the
rest given by the writer (JSON-encoded when not a scalar or string). Files imported from TRIDENT,
CLAM or STAMP (``wsi-mil import-features``, :mod:`wsi_mil.extract.importer`) carry
``imported_from``, ``source_format``, ``source_hash`` and ``source_attrs`` instead of a patch store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil import __version__
from wsi_mil.atomic import atomic_path
from wsi_mil.errors import StoreError
from wsi_mil.stores.common import FEATURES_SCHEMA, slide_id_of

REQUIRED_ATTRS = ("schema", "wsi_mil_version", "complete", "encoder_id", "embed_dim", "slide_id")


@dataclass
class FeatureFile:
    """A feature file read into memory. ``features`` (N, D), ``coords`` (N, 2) int64."""

    path: Path
    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any]

    @property
    def encoder_id(self) -> str:
        return str(self.attrs["encoder_id"])

    @property
    def embed_dim(self) -> int:
        return int(self.attrs["embed_dim"])

    @property
    def n_tiles(self) -> int:
        return int(self.features.shape[0])


def _encode_attr(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
        return value
    return "json:" + json.dumps(value, default=str)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_feature_file(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    attrs: dict[str, Any],
) -> Path:
    """Write a feature file atomically. ``attrs`` must hold ``encoder_id``; ``embed_dim`` is set.

    features: (N, D) float16 or float32; coords: (N, 2) integer level-0 pixels.
    """
    import h5py

    path = Path(path)
    features = np.asarray(features)
    coords = np.asarray(coords, dtype=np.int64)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise StoreError(
            f"{path}: features must be (N, D) and coords (N, 2); got {features.shape} and {coords.shape}"
        )
    if features.dtype not in (np.float16, np.float32):
        features = features.astype(np.float32)
    if "encoder_id" not in attrs:
        raise StoreError(f"{path}: feature file attributes need 'encoder_id'")
    meta = dict(attrs)
    meta.update(
        schema=FEATURES_SCHEMA,
        wsi_mil_version=__version__,
        embed_dim=int(features.shape[1]),
        n_tiles=int(features.shape[0]),
        slide_id=str(attrs.get("slide_id", slide_id_of(path))),
    )
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            chunks = (min(max(1, features.shape[0]), 4096), features.shape[1]) if features.size else None
            f.create_dataset("features", data=features, chunks=chunks)
            f.create_dataset("coords", data=coords)
            for k, v in meta.items():
                f.attrs[k] = _encode_attr(v)
            f.attrs["complete"] = True
    return path


def read_feature_attrs(path: str | Path) -> dict[str, Any]:
    """Validate a feature file and return its attributes without loading the arrays."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: feature file not found")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
            shapes = {k: f[k].shape for k in ("features", "coords") if k in f}
            datasets = sorted(f.keys())
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 feature file ({exc}); delete it and re-run extract") from exc
    _validate(path, attrs, shapes, datasets)
    return attrs


def foreign_layout(datasets: list[str], attrs: dict[str, Any]) -> str | None:
    """The peer tool whose feature-file layout this looks like (``TRIDENT/CLAM``, ``STAMP``), else None."""
    if "feats" in datasets and "coords" in datasets:
        return "STAMP"
    if "features" in datasets and "coords" in datasets and attrs.get("schema") != FEATURES_SCHEMA:
        return "TRIDENT/CLAM"
    return None


def _validate(path: Path, attrs: dict[str, Any], shapes: dict[str, tuple], datasets: list[str] | None = None) -> None:
    if attrs.get("schema") != FEATURES_SCHEMA:
        peer = foreign_layout(datasets or [], attrs)
        hint = (f"; it looks like a {peer} feature file: convert its folder once with 'wsi-mil import-features "
                f"{path.parent} -o JOB/features/ENCODER_ID' and point train/predict at that folder" if peer else
                "; feature files from TRIDENT, CLAM or STAMP are converted with 'wsi-mil import-features'")
        raise StoreError(
            f"{path}: not a wsi_mil feature file (schema {attrs.get('schema')!r}, expected {FEATURES_SCHEMA!r}){hint}"
        )
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise StoreError(f"{path}: feature file is missing attribute(s) {', '.join(missing)}")
    if not attrs.get("complete"):
        raise StoreError(f"{path}: feature file is incomplete; delete it and re-run extract")
    for k in ("features", "coords"):
        if k not in shapes:
            raise StoreError(f"{path}: feature file has no '{k}' dataset")
    n, d = shapes["features"]
    if shapes["coords"] != (n, 2) or d != int(attrs["embed_dim"]):
        raise StoreError(
            f"{path}: inconsistent shapes: features {shapes['features']}, coords {shapes['coords']}, "
            f"embed_dim {attrs['embed_dim']}"
        )


def check_encoder(path: str | Path, attrs: dict[str, Any], encoder_id: str | None, embed_dim: int | None) -> None:
    """Refuse a feature file made by another encoder or of another dimension."""
    if encoder_id is not None and attrs.get("encoder_id") != encoder_id:
        raise StoreError(
            f"{path}: features come from encoder '{attrs.get('encoder_id')}', but '{encoder_id}' is "
            "expected; extract features with the same encoder the model was trained on"
        )
    if embed_dim is not None and int(attrs.get("embed_dim", -1)) != int(embed_dim):
        raise StoreError(
            f"{path}: features have dimension {attrs.get('embed_dim')}, but {embed_dim} is expected"
        )


def read_feature_file(
    path: str | Path,
    encoder_id: str | None = None,
    embed_dim: int | None = None,
    dtype: Any = np.float32,
) -> FeatureFile:
    """Read and validate a feature file; optionally require an encoder id and dimension."""
    import h5py

    path = Path(path)
    attrs = read_feature_attrs(path)
    check_encoder(path, attrs, encoder_id, embed_dim)
    with h5py.File(path, "r") as f:
        ds = f["features"]
        # convert inside HDF5 while reading: no second full-size copy in memory
        features = ds[()] if dtype is None or ds.dtype == dtype else ds.astype(dtype)[()]
        coords = f["coords"][()].astype(np.int64)
    return FeatureFile(path, str(attrs["slide_id"]), features, coords, attrs)


def is_complete_feature_file(path: str | Path) -> bool:
    """True if ``path`` is a valid, complete feature file (for resume)."""
    try:
        read_feature_attrs(path)
    except StoreError:
        return False
    return True


def list_feature_files(folder: str | Path) -> list[Path]:
    """The ``*.h5`` files in a features folder, sorted by slide id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder}: features folder not found; run 'wsi-mil extract' first")
    return sorted(p for p in folder.glob("*.h5") if not p.name.startswith("."))
