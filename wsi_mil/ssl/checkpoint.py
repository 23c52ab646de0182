"""SimCLR training checkpoints: everything needed to resume a run exactly.

A checkpoint (``torch.save``, written atomically) holds the model (backbone + head), optimizer
and scheduler states, the RNG states (torch CPU and CUDA; the augmentations and the data order
draw from generators seeded by (seed, epoch, step), so they need none), the position (next epoch
and step, global step), the per-epoch losses, the training config and a fingerprint of the data.
It is loaded with ``weights_only=True``: no code is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wsi_mil.atomic import atomic_path
from wsi_mil.errors import WsiMilError

CHECKPOINT_FORMAT = "wsi_mil.simclr_checkpoint/1"
#: config keys that may differ between a checkpoint and the run resuming it (no effect on results)
RESUME_FREE_KEYS = ("log_every", "read_threads", "compile")


class CheckpointError(WsiMilError):
    """A training checkpoint is unreadable, corrupt, or from a different run."""


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU, and every CUDA device when CUDA is initialised)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) atomically to ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; :class:`CheckpointError` (one line) if it is not a valid one."""
    path = Path(path)
    hint = "delete it (or run without --resume) to start over"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: checkpoint not found") from exc
    except Exception as exc:  # torch raises many types for damaged files
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {msg}); {hint}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: not a SimCLR checkpoint (format {got!r}, expected {CHECKPOINT_FORMAT!r}); {hint}")
    missing = [k for k in ("config", "model", "optimizer", "scheduler", "rng", "epoch", "step",
                           "global_step", "data", "world_size") if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; {hint}")
    return data


def check_compatible(path: str | Path, ckpt: dict[str, Any], config: dict[str, Any], data: dict[str, Any],
                     world_size: int) -> None:
    """Refuse to resume a checkpoint made with another config, other data or another world size."""
    old = {k: v for k, v in dict(ckpt["config"]).items() if k not in RESUME_FREE_KEYS}
    new = {k: v for k, v in config.items() if k not in RESUME_FREE_KEYS}
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    hint = "run the same command as before, or drop --resume to start over (the checkpoint is replaced)"
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
        raise CheckpointError(f"{path}: cannot resume: the config differs from the checkpoint's ({shown}); {hint}")
    if ckpt["data"] != data:
        raise CheckpointError(f"{path}: cannot resume: the job's patch stores changed since the checkpoint; {hint}")
    if int(ckpt["world_size"]) != world_size:
        raise CheckpointError(f"{path}: cannot resume: it was made with {ckpt['world_size']} processes, "
                              f"this run has {world_size}; {hint}")
