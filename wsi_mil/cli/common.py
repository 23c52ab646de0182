"""Helpers shared by the subcommand modules: summaries of batch stages, option types."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import typer
from rich.console import Console

from wsi_mil.runrecord import FAILED, SlideStatus

#: soft_wrap: a long line (a path) is never split at 80 columns when stdout is a file or a pipe
console = Console(stderr=False, highlight=False, soft_wrap=True)


def print_batch_summary(stage: str, statuses: Sequence[SlideStatus], record_path: object) -> int:
    """Print counts and every failure's reason; return the exit status (1 if any slide failed)."""
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.status] = counts.get(s.status, 0) + 1
    tiles = sum(s.n_tiles for s in statuses if s.status != FAILED)
    parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    console.print(f"[bold]{stage}[/bold]: {len(statuses)} slides ({parts}); {tiles} tiles; record: {record_path}")
    failed = [s for s in statuses if s.status == FAILED]
    for s in failed:
        console.print(f"  failed {s.slide_id}: {s.reason}", markup=False, soft_wrap=True)
    return 1 if failed else 0


def finite_positive(value: float | None) -> float | None:
    """Typer callback: a number option must be finite and > 0 (``nan``, ``inf``, ``0``, ``-1`` are errors)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a finite number > 0")
    return value


def device_name(value: str | None) -> str | None:
    """Typer callback: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if value is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise typer.BadParameter(f"{value!r}: choose auto, cpu, cuda or cuda:N")
    return value


def exit_with(code: int) -> None:
    """Leave the command with ``code`` (0: all good, 1: some slides failed)."""
    if code:
        raise typer.Exit(code)
