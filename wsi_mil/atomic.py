"""Atomic outputs: write to a temporary sibling, then rename into place.

A crash (even SIGKILL) therefore never leaves a file or folder at the final path that looks
complete. Temporary siblings are named ``.{name}.tmp-{pid}-{random}`` and are swept by
:func:`remove_stale_temporaries` when a stage starts again. Outputs follow the process umask
(files 0666 & ~umask, folders 0777 & ~umask), also those a library creates private (safetensors
writes 0600): :func:`commit` sets the modes before the rename.
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


def _proc_umask() -> int | None:
    """The process umask from Linux ``/proc`` (read without changing it), else None."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return None


def _read_umask() -> int:
    found = _proc_umask()
    if found is not None:
        return found
    mask = os.umask(0o022)  # set and put back at once: done once, at import, before any thread writes
    os.umask(mask)
    return mask


#: the umask at import: used where ``/proc`` cannot tell the current one
_UMASK = _read_umask()


def current_umask() -> int:
    """The process umask now (``/proc`` on Linux; elsewhere the one at import)."""
    found = _proc_umask()
    return _UMASK if found is None else found


def follow_umask(path: Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes the umask gives new outputs."""
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if path.is_symlink():
        return
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            os.chmod(root, dir_mode)
            for name in files:
                f = os.path.join(root, name)
                if not os.path.islink(f):
                    os.chmod(f, file_mode)
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    elif path.exists():
        os.chmod(path, file_mode)


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
    """Move a finished temporary file or folder to its final path, replacing what was there.

    The temporary gets the umask's modes first (:func:`follow_umask`)."""
    follow_umask(tmp)
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
