"""Helpers shared by the subcommand modules: summaries of batch stages, option types."""

from __future__ import annotations

from collections.abc import Sequence

import typer
from rich.console import Console

from wsi_mil.runrecord import FAILED, SlideStatus

console = Console(stderr=False, highlight=False)


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


def exit_with(code: int) -> None:
    """Leave the command with ``code`` (0: all good, 1: some slides failed)."""
    if code:
        raise typer.Exit(code)
