"""Per-slide status of a batch stage: ``JOB/status/{stage}.csv`` (:func:`wsi_mil.jobdir.status_path`).

One row per slide with its status (``done``, ``failed``, ``skipped``), the one-line reason of a
failure, the number of tiles and the seconds it took. The file is rewritten atomically after
every slide, so it is always readable and never half-written, even after SIGKILL.

A full disk stops a batch: the slide being written fails with the cause, is recorded, and
:meth:`RunRecord.record` raises :class:`~wsi_mil.outputs.DiskFullError` (one line) so no further
slide is tried; finished slides are kept and the same command resumes after space is freed.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from wsi_mil.atomic import write_text_atomic
from wsi_mil.errors import WsiMilError
from wsi_mil.outputs import DiskFullError, is_disk_full, os_error_line, output_error

DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"
STATUSES = (DONE, FAILED, SKIPPED)


@dataclass
class SlideStatus:
    """The outcome of one slide in one stage."""

    slide_id: str
    source: str
    status: str
    reason: str = ""
    n_tiles: int = 0
    seconds: float = 0.0
    finished_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    @property
    def ok(self) -> bool:
        return self.status in (DONE, SKIPPED)


@dataclass
class StageReport:
    """What a per-slide stage did: every slide's status (slide-id order) and where they are recorded.

    Stages that write more (the extract stage's feature folder, the heatmap stage's cohort page)
    return a subclass that adds those paths.
    """

    statuses: list[SlideStatus]
    record_path: Path

    @property
    def failed(self) -> list[SlideStatus]:
        """The slides that failed, with their reasons."""
        return [s for s in self.statuses if s.status == FAILED]


def one_line(text: str) -> str:
    """``text`` with its white space (newlines included) folded to single spaces."""
    return " ".join(text.split())


def guard_slide(slide_id: str, source: str, doing: str, work: Callable[[], SlideStatus],
                where: str | None = None) -> SlideStatus:
    """Run one slide's ``work``; whatever it raises becomes a FAILED status, so the batch goes on.

    ``doing`` completes "out of memory while ..." (e.g. ``"tiling"``); ``where`` names the slide
    in messages of unexpected errors (default ``source``). A :class:`~wsi_mil.errors.WsiMilError`
    keeps its own message, which already names the file and the fault.
    """
    t0 = time.perf_counter()
    try:
        return work()
    except WsiMilError as exc:
        reason = str(exc)
    except MemoryError:
        reason = f"{source}: out of memory while {doing}"
    except OSError as exc:  # a write (or read) the system refused: name the path and the cause
        reason = one_line(os_error_line(exc, None if exc.filename else (where or source), doing))
    except Exception as exc:  # a library error we did not anticipate: record it, carry on
        reason = one_line(f"{where or source}: unexpected {type(exc).__name__}: {exc}")
    return SlideStatus(slide_id, source, FAILED, reason, 0, time.perf_counter() - t0)


class RunRecord:
    """The run record of one stage; keeps earlier rows for slides not seen in this run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, SlideStatus] = {}
        if self.path.exists():
            self.rows = {r.slide_id: r for r in read_run_record(self.path)}

    def record(self, row: SlideStatus) -> None:
        """Add or replace a slide's row and rewrite the file atomically.

        Raises :class:`~wsi_mil.outputs.DiskFullError` after recording a slide that failed on a
        full disk (or when the record itself cannot be written for lack of space): the batch stops.
        """
        self.rows[row.slide_id] = row
        try:
            self.save()
        except DiskFullError as exc:
            raise DiskFullError(f"{exc}; the batch stopped at slide {row.slide_id} (finished slides are kept)") from exc
        if row.status == FAILED and is_disk_full(row.reason):
            raise DiskFullError(f"{row.reason}; the batch stopped at this slide (recorded in {self.path}; finished "
                                "slides are kept): free disk space and run the same command again")

    def save(self) -> None:
        """Rewrite the record atomically; an OS error becomes one :class:`~wsi_mil.outputs.OutputError` line."""
        try:
            self._save()
        except OSError as exc:
            raise output_error(exc, self.path) from exc

    def _save(self) -> None:
        buf = io.StringIO()
        names = [f.name for f in fields(SlideStatus)]
        writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in sorted(self.rows.values(), key=lambda r: r.slide_id):
            d = asdict(row)
            d["seconds"] = f"{row.seconds:.3f}"
            writer.writerow(d)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, buf.getvalue())

    def failed(self) -> list[SlideStatus]:
        return [r for r in self.rows.values() if r.status == FAILED]


def read_run_record(path: str | Path) -> list[SlideStatus]:
    """Read a run record written by :class:`RunRecord`."""
    with open(path, newline="", encoding="utf-8") as f:
        out = []
        for d in csv.DictReader(f):
            out.append(
                SlideStatus(
                    slide_id=d["slide_id"],
                    source=d["source"],
                    status=d["status"],
                    reason=d["reason"],
                    n_tiles=int(d["n_tiles"] or 0),
                    seconds=float(d["seconds"] or 0.0),
                    finished_at=d["finished_at"],
                )
            )
        return out
