"""Peers' feature files in: TRIDENT, CLAM and STAMP ``.h5`` -> our feature-file contract.

Layouts read (one ``.h5`` per slide, named after the slide):

- **TRIDENT**: datasets ``features`` (N, D) and ``coords`` (N, 2) int level-0 (x, y) pixels;
  ``coords`` attributes ``patch_size``, ``patch_size_level0``, ``level0_magnification``,
  ``target_magnification``, ``overlap``, ``level0_width``/``height``; ``features`` attributes
  ``name``, ``encoder``.
- **CLAM**: ``features`` (N, D) and ``coords`` (N, 2) level-0 pixels, little or no metadata.
- **STAMP**: ``feats`` (N, D) and ``coords`` (N, 2) float **micrometres** (``unit`` "um");
  attributes ``extractor``, ``tile_size_um``, ``tile_size_px``, ``stamp_version``. Converting
  micrometres to level-0 pixels needs the slide's mpp: ``mpp`` (one value) or ``mpp_of`` (per slide).

The output (``write_feature_file``) keeps the rows in order, coordinates as int64 level-0 pixels,
and records where it came from: ``imported_from`` (the source path), ``source_format``,
``source_hash`` (content fingerprint), ``source_attrs`` (the source's own attributes), and the
encoder the source names (``source_encoder``). The encoder id is the output folder's name, as
``features/{encoder_id}/`` requires. An unknown layout raises :class:`StoreError` naming the
datasets found.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.atomic import remove_stale_temporaries
from wsi_mil.errors import StoreError, WsiMilError
from wsi_mil.jobdir import status_path
from wsi_mil.runrecord import DONE, FAILED, SKIPPED, RunRecord, SlideStatus
from wsi_mil.stores.common import file_fingerprint, slide_id_of
from wsi_mil.stores.features import read_feature_attrs, write_feature_file

FORMATS = ("auto", "trident", "clam", "stamp")


@dataclass
class PeerFeatures:
    """One peer file read: ``features`` (N, D), ``coords`` (N, 2) int64 level-0 pixels, ``attrs``
    (our attributes for it, provenance included)."""

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any]


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a JSON-friendly value."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _attrs(obj: Any) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in obj.attrs.items()}


def detect_format(datasets: Sequence[str], coords_attrs: dict[str, Any], file_attrs: dict[str, Any],
                  features_attrs: dict[str, Any]) -> str | None:
    """``trident``, ``clam`` or ``stamp`` from a file's datasets and attributes; None if unknown."""
    names = set(datasets)
    if {"feats", "coords"} <= names:
        return "stamp"
    if {"features", "coords"} <= names:
        trident_keys = {"patch_size_level0", "level0_magnification", "target_magnification"}
        if trident_keys & set(coords_attrs) or "encoder" in features_attrs:
            return "trident"
        return "clam"
    return None


def read_peer_file(path: str | Path, fmt: str = "auto", mpp: float | None = None) -> PeerFeatures:
    """Read one TRIDENT / CLAM / STAMP file into our layout (see the module docstring).

    ``mpp``: µm per level-0 pixel of the slide (needed for STAMP's micrometre coordinates).
    """
    import h5py

    path = Path(path)
    if fmt not in FORMATS:
        raise WsiMilError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    try:
        with h5py.File(path, "r") as f:
            datasets = sorted(f.keys())
            file_attrs = _attrs(f)
            coords_attrs = _attrs(f["coords"]) if "coords" in f else {}
            feat_name = "feats" if "feats" in f else "features"
            features_attrs = _attrs(f[feat_name]) if feat_name in f else {}
            found = detect_format(datasets, coords_attrs, file_attrs, features_attrs)
            if found is None or (fmt != "auto" and not _compatible(fmt, found)):
                raise StoreError(
                    f"{path}: not a {'TRIDENT, CLAM or STAMP' if fmt == 'auto' else fmt.upper()} feature file: "
                    f"datasets {', '.join(datasets) or 'none'} (expected features + coords, or feats + coords "
                    "for STAMP); pass --format to choose, or convert the file to that layout first")
            fmt = found if fmt == "auto" else fmt
            features = np.asarray(f[feat_name][()])
            coords = np.asarray(f["coords"][()])
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())})") from exc
    if features.ndim != 2 or coords.ndim != 2 or coords.shape[1] < 2 or len(coords) != len(features):
        raise StoreError(f"{path}: {feat_name} {features.shape} and coords {coords.shape} do not pair "
                         "(expected (N, D) and (N, 2))")
    source: dict[str, Any] = {"file": file_attrs, "coords": coords_attrs, feat_name: features_attrs}
    attrs: dict[str, Any] = {"source_format": fmt, "source_attrs": source}
    if fmt == "stamp":
        unit = str(file_attrs.get("unit", "um"))
        if unit not in ("um", "µm", "micron", "microns"):
            raise StoreError(f"{path}: STAMP coords unit '{unit}' is not micrometres; cannot convert")
        if mpp is None:
            raise StoreError(f"{path}: STAMP coordinates are in micrometres; give the slide's level-0 µm per pixel "
                             "with --mpp MPP (or --mpp-table CSV of slide_id,mpp) to convert them to pixels")
        coords_px = np.rint(coords[:, :2].astype(np.float64) / float(mpp)).astype(np.int64)
        attrs.update(mpp=float(mpp), mpp_source="import", source_encoder=file_attrs.get("extractor", ""),
                     source_coords_unit="um")
        if "tile_size_um" in file_attrs:
            attrs.update(tile_size_um=float(file_attrs["tile_size_um"]),
                         tile_size_level0=float(file_attrs["tile_size_um"]) / float(mpp))
        if "tile_size_px" in file_attrs:
            attrs["tile_size"] = int(file_attrs["tile_size_px"])
    else:
        if not np.all(np.isfinite(coords)) or not np.allclose(coords, np.rint(coords)):
            raise StoreError(f"{path}: coords are not whole level-0 pixels as {fmt.upper()} writes them")
        coords_px = np.rint(coords[:, :2]).astype(np.int64)
        attrs["source_encoder"] = features_attrs.get("encoder") or ""
        if "patch_size_level0" in coords_attrs:
            attrs["tile_size_level0"] = float(coords_attrs["patch_size_level0"])
        if "patch_size" in coords_attrs:
            attrs["tile_size"] = int(coords_attrs["patch_size"])
        for key in ("level0_width", "level0_height"):
            if key in coords_attrs:
                attrs[key] = int(coords_attrs[key])
    return PeerFeatures(features if features.dtype in (np.float16, np.float32) else features.astype(np.float32),
                        coords_px, attrs)


def _compatible(asked: str, found: str) -> bool:
    """TRIDENT and CLAM share one layout (TRIDENT adds attributes)."""
    return asked == found or {asked, found} == {"trident", "clam"}


@dataclass
class ImportReport:
    """What :func:`import_features` did: one status per source file, in slide order."""

    statuses: list[SlideStatus]
    out_dir: Path
    encoder_id: str
    record_path: Path | None = None

    @property
    def failed(self) -> list[SlideStatus]:
        return [s for s in self.statuses if s.status == FAILED]


def import_features(src: str | Path, out_dir: str | Path, fmt: str = "auto", encoder_id: str | None = None,
                    mpp: float | None = None, mpp_of: dict[str, float] | None = None, overwrite: bool = False,
                    on_done: Callable[[SlideStatus], None] | None = None) -> ImportReport:
    """Convert every ``.h5`` in ``src`` (a folder, or one file) into ``out_dir/{slide_id}.h5``.

    ``out_dir`` is ``JOB/features/ENCODER_ID``; ``encoder_id`` defaults to its name and must equal
    it when given. A file whose valid output exists (same source fingerprint) is skipped unless
    ``overwrite``. One bad file fails alone, with its reason.
    """
    src, out_dir = Path(src), Path(out_dir)
    encoder_id = encoder_id or out_dir.name
    if encoder_id != out_dir.name:
        raise WsiMilError(f"-o {out_dir}: the folder must be named after the encoder id ('{encoder_id}'), as "
                          f"features/{{encoder_id}}/ is read: use -o {out_dir.parent / encoder_id}")
    if src.is_file():
        files = [src]
    elif src.is_dir():
        files = sorted(p for p in src.glob("*.h5") if not p.name.startswith("."))
    else:
        raise WsiMilError(f"{src}: not found; give a folder of TRIDENT/CLAM/STAMP .h5 files or one file")
    if not files:
        raise WsiMilError(f"{src}: holds no .h5 files")
    if src.resolve() == out_dir.resolve():
        raise WsiMilError(f"-o {out_dir}: is the source folder; write the converted files elsewhere")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    # in a job folder (JOB/features/ID), the run record goes beside the others: JOB/status/import-ID.csv
    record = RunRecord(status_path(out_dir.parent.parent, f"import-{encoder_id}")) if out_dir.parent.name == "features" else None
    statuses = []
    for path in files:
        st = _import_one(path, out_dir, fmt, encoder_id, mpp if mpp is not None else (mpp_of or {}).get(slide_id_of(path)),
                         overwrite)
        statuses.append(st)
        if record is not None:
            record.record(st)
        if on_done is not None:
            on_done(st)
    return ImportReport(statuses, out_dir, encoder_id, record.path if record is not None else None)


def _import_one(path: Path, out_dir: Path, fmt: str, encoder_id: str, mpp: float | None, overwrite: bool) -> SlideStatus:
    t0 = time.perf_counter()
    slide_id = slide_id_of(path)
    out = out_dir / f"{slide_id}.h5"
    try:
        fingerprint = file_fingerprint(path)
        if not overwrite and out.exists():
            try:
                old = read_feature_attrs(out)
            except StoreError:
                old = {}
            if old.get("source_hash") == fingerprint and old.get("encoder_id") == encoder_id:
                return SlideStatus(slide_id, str(path), SKIPPED, n_tiles=int(old.get("n_tiles", 0)),
                                   seconds=time.perf_counter() - t0)
        peer = read_peer_file(path, fmt, mpp)
        attrs = {**peer.attrs, "encoder_id": encoder_id, "slide_id": slide_id, "imported_from": str(path.resolve()),
                 "source_hash": fingerprint, "weights_source": f"imported from {peer.attrs['source_format']}",
                 "patch_store": None}
        write_feature_file(out, peer.features, peer.coords, attrs)
        return SlideStatus(slide_id, str(path), DONE, n_tiles=len(peer.features), seconds=time.perf_counter() - t0)
    except (WsiMilError, OSError, ValueError) as exc:
        return SlideStatus(slide_id, str(path), FAILED, reason=" ".join(str(exc).split())[:500],
                           seconds=time.perf_counter() - t0)
