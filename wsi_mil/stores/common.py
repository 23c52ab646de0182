"""Shared pieces of the file contracts: schema names, content hashes (the job folder's layout is
:mod:`wsi_mil.jobdir`'s)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from wsi_mil.errors import StoreError, WsiMilError

PATCHES_SCHEMA = "wsi_mil.patches/1"
FEATURES_SCHEMA = "wsi_mil.features/1"
ENCODER_SCHEMA = "wsi_mil.encoder/1"
MODEL_RUN_SCHEMA = "wsi_mil.model_run/1"


def slide_id_of(path: str | Path) -> str:
    """The slide id of a store or feature file: its name without the suffix."""
    name = Path(path).name
    for suffix in (".zarr", ".h5"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def file_fingerprint(path: str | Path, full: bool = False) -> str:
    """A content hash of a file: sha256 of its size, first and last MiB (or all of it).

    Whole-slide files are GBs; the sampled hash identifies a file in milliseconds. ``full``
    hashes every byte. A folder (a DICOM slide) hashes its files in name order.
    """
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        size = p.stat().st_size
        h.update(p.name.encode() + b"\0" + str(size).encode() + b"\0")
        with open(p, "rb") as f:
            if full or size <= 2 << 20:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
    return ("sha256:" if full else "sha256-sampled:") + h.hexdigest()


def path_size(path: str | Path) -> int:
    """Bytes of a file, or of all files in a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def read_schema_json(
    path: str | Path,
    schema: str,
    required: tuple[str, ...] = (),
    error: type[WsiMilError] = StoreError,
    fix: str = "",
) -> dict[str, Any]:
    """Read a JSON document that must carry ``schema`` and the ``required`` keys.

    Raises ``error`` with one line naming the file and what is wrong, followed by ``fix`` (how to
    repair it) when given. The caller checks that the file exists, with its own advice.
    """
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc}){tail}") from exc
    if not isinstance(meta, dict) or meta.get("schema") != schema:
        got = meta.get("schema") if isinstance(meta, dict) else None
        raise error(f"{path}: schema {got!r}, expected {schema!r}{tail}")
    missing = [k for k in required if k not in meta]
    if missing:
        raise error(f"{path}: missing key(s) {', '.join(missing)}{tail}")
    return meta
