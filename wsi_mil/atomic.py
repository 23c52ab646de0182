"""Atomic outputs: write to a temporary sibling, then rename into place.

A crash (even SIGKILL) therefore never leaves a file or folder at the final path that looks
complete. Temporary siblings are named ``.{name}.tmp-{pid}-{random}`` and are swept by
:func:`remove_stale_temporaries` when a stage starts again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """A unique hidden path in the same folder as ``path`` (same filesystem, so rename is atomic)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(tmp: Path, final: Path) -> None:
    """Move a finished temporary file or folder to its final path, replacing what was there."""
    if final.exists():
        old = temporary_sibling(final)
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``final`` to; rename on success, delete on error.

    Works for files and folders (e.g. zarr stores) alike.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    commit(tmp, final)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a whole text file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write a JSON document atomically (indented, keys in insertion order)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporaries left in ``folder`` by a killed run; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and TMP_MARK in p.name]
    for p in stale:
        _remove(p)
    return stale
