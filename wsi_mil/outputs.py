"""Outputs: which existing paths a stage may replace, writability checks, and OS errors in one line.

``--overwrite`` (every stage that has it) replaces only an output of the same kind that this tool
wrote, recognised by the marker each kind carries (the schema-bearing file: ``config.json`` of a
model run, ``encoder.json`` of an encoder folder, ``zarr.json`` of a patch store, ``slide.json``
of a heatmap folder, the ``Software`` tag of a synthetic slide; a feature file is any file at its
path in the tool's own ``JOB/features/{encoder_id}/``). It never replaces a job folder, a
foreign folder, or a plain file where a folder output goes.
The new output is built beside the old one (:func:`wsi_mil.atomic.atomic_path`) and swapped in
only when complete, so a failed or killed re-run keeps the old result.

Before a stage computes anything it calls :func:`check_writable` on its outputs; an ``OSError``
while writing becomes :class:`OutputError`: one line naming the path and the cause
(:func:`os_error_line`). A full disk (:func:`is_disk_full`) stops a batch after recording the
slide being written (:class:`DiskFullError`, raised by :class:`~wsi_mil.runrecord.RunRecord`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_mil.errors import WsiMilError

#: entries that only a job folder (``wsi_mil.jobdir``) holds; any one of them marks a job folder
JOB_MARKERS = ("patches", "features", "status", "study.yaml")
#: the texts an OS error of a full disk (or an exhausted quota) carries, lower case
_FULL_TEXTS = ("no space left on device", "disk quota exceeded")


class OutputError(WsiMilError):
    """An output cannot be written (permissions, a file in the way, a full disk) or must not be replaced."""


class DiskFullError(OutputError):
    """The disk filled up while writing: the batch records the slide being written and stops."""


@dataclass(frozen=True)
class OutputKind:
    """A kind of output: its name in messages, whether it is a folder, and how to recognise one."""

    name: str
    folder: bool
    recognise: Callable[[Path], bool]


def _json_schema(path: Path, key: str | None = None) -> str:
    """The ``schema`` string of a JSON file (inside mapping ``key`` when given); ``""`` if unreadable."""
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return ""
    if key is not None:
        doc = doc.get(key) if isinstance(doc, dict) else None
    value = doc.get("schema") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""


def _folder_marked(marker: str, schema_prefix: str, key: str | None = None) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        return path.is_dir() and _json_schema(path / marker, key).startswith(schema_prefix)

    return recognise


MODEL_RUN = OutputKind("model run folder", True, _folder_marked("config.json", "wsi_mil.model_run/"))
ENCODER_FOLDER = OutputKind("encoder folder", True, _folder_marked("encoder.json", "wsi_mil.encoder/"))
PATCH_STORE = OutputKind("patch store", True, _folder_marked("zarr.json", "wsi_mil.patches/", key="attributes"))
#: a file at ``JOB/features/{encoder_id}/{slide_id}.h5``, the tool's own folder: a damaged one
#: (even one that lost its HDF5 signature) is redone; a folder there never is
FEATURE_FILE = OutputKind("feature file", False, lambda p: p.is_file())
HEATMAP_SLIDE = OutputKind("heatmap folder", True, _folder_marked("slide.json", "wsi_mil.heatmap/"))


def _synthetic_tiff(path: Path) -> bool:
    """True for a TIFF whose Software tag is ``wsi_mil.synth`` (the synthetic slide writer's)."""
    if not path.is_file():
        return False
    import tifffile  # light, but only needed here

    try:
        with tifffile.TiffFile(path) as tf:
            tags = getattr(tf.pages[0], "tags", None)
            tag = tags.get("Software") if tags is not None else None
            return tag is not None and str(tag.value) == "wsi_mil.synth"
    except Exception:  # any unreadable or foreign file: not ours
        return False


SYNTH_SLIDE = OutputKind("synthetic slide", False, _synthetic_tiff)


def is_job_folder(path: str | Path) -> bool:
    """True if ``path`` is a folder laid out as a job folder (``patches/``, ``status/``, ...)."""
    path = Path(path)
    return path.is_dir() and any((path / m).exists() for m in JOB_MARKERS)


def _is_empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


def _a(name: str) -> str:
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def replace_refusal(path: str | Path, kind: OutputKind) -> str:
    """Why ``path`` must not be replaced by a new ``kind`` output (``""``: missing, empty or of that kind)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return ""
    if kind.folder and _is_empty_dir(path):
        return ""
    if kind.recognise(path):
        return ""
    if is_job_folder(path):
        return f"{path}: is a job folder, not {_a(kind.name)}; it is never replaced: choose another output path"
    if kind.folder and not path.is_dir():
        return f"{path}: is a file, not {_a(kind.name)}; it is never replaced: choose another output path or move the file"
    if not kind.folder and path.is_dir():
        return f"{path}: is a folder, not {_a(kind.name)}; it is never replaced: move it away or choose another output path"
    return (f"{path}: exists and is not {_a(kind.name)} written by wsi-mil; it is never replaced: "
            "choose another output path or move it away")


def check_replaceable(path: str | Path, kind: OutputKind) -> None:
    """Raise :class:`OutputError` unless ``path`` is missing, an empty folder, or a ``kind`` output."""
    why = replace_refusal(path, kind)
    if why:
        raise OutputError(why)


# -- writability -----------------------------------------------------------------------------
def _fix(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space (or write elsewhere) and run the same command again"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check its permissions (an output folder must be writable) or choose another path"
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return "a file or folder is in the way: move it or choose another output path"
    if code == errno.ENAMETOOLONG:
        return "choose a shorter output path"
    return "check the path and the disk, then run the same command again"


def os_error_line(exc: OSError, path: str | Path | None = None, doing: str = "writing") -> str:
    """One line for an OS error: the path (``path``, else the error's file name), the cause, what
    was being done and what to do, e.g. ``out/x: No space left on device [ENOSPC] while writing; free ...``."""
    where = path if path is not None else (exc.filename if exc.filename is not None else "output")
    cause = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    name = errno.errorcode.get(exc.errno or -1)
    if name and name not in cause:
        cause = f"{cause} [{name}]"
    if path is not None and exc.filename is not None and str(exc.filename) != str(path):
        cause = f"{cause} at {exc.filename}"
    return f"{where}: {cause} while {doing}; {_fix(exc.errno)}"


def is_disk_full(exc_or_reason: BaseException | str) -> bool:
    """True for an OS error (or a failure reason) that says the disk or the quota is full."""
    if isinstance(exc_or_reason, OSError) and exc_or_reason.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc_or_reason).lower()
    return any(t in text for t in _FULL_TEXTS)


def output_error(exc: OSError, path: str | Path | None = None) -> OutputError:
    """The :class:`OutputError` (:class:`DiskFullError` for a full disk) of an OS error while writing."""
    cls = DiskFullError if is_disk_full(exc) else OutputError
    return cls(os_error_line(exc, path))


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Around code that writes ``path``: an ``OSError`` becomes one :class:`OutputError` line."""
    try:
        yield
    except OSError as exc:
        raise output_error(exc, path) from exc


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | Path, folder: bool = False) -> None:
    """Raise :class:`OutputError` unless ``path`` can be created or replaced by this process.

    Checks, without creating anything that stays: no file in the way on the path's folders, the
    nearest existing folder is writable (``os.access``, then a probe file created and removed,
    which also catches read-only mounts). ``folder``: ``path`` itself is a folder to write into
    (then an existing file at ``path`` is an error too).
    """
    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise OutputError(f"{path}: is a file, not a folder; choose another output path or move the file")
        target = path if path.is_dir() and folder else path.parent
    else:
        target = path.parent
    base = _nearest_existing(target.absolute())
    if not base.is_dir():
        raise OutputError(f"{path}: cannot write: {base} is a file, not a folder; choose another output path or "
                          "move the file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write: {base} is not writable (permission denied); make it writable or "
                          "choose another output path")
    probe = base / f".wsi_mil-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise output_error(exc, path) from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
