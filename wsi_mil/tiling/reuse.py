"""Whether a job's existing patch stores fit this run's tiling parameters, and if not, which differ.

A store is reused only when every tiling parameter matches; the per-slide mpp options are
compared through the mpp each slide would be tiled at (:func:`~wsi_mil.tiling.mpp.expected_store_mpp`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_mil.config import config_to_dict
from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.jobdir import patch_store_path, patches_dir
from wsi_mil.slide import SlideSource
from wsi_mil.stores.patches import validate_patch_store
from wsi_mil.tiling.config import TilingConfig
from wsi_mil.tiling.mpp import MPP_KEYS, MppRequest, expected_store_mpp


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def store_differences(attrs: dict[str, Any], cfg: TilingConfig, request: MppRequest) -> list[tuple[str, Any, Any]]:
    """(parameter, value in the store, value in this run) for each tiling parameter that differs.

    The per-slide mpp options are compared through the mpp the slide would be tiled at.
    """
    have = {k: v for k, v in _flat(attrs.get("config") or {}).items() if k not in MPP_KEYS}
    want = {k: v for k, v in _flat(config_to_dict(cfg)).items() if k not in MPP_KEYS}
    diffs = [(k, have.get(k), want.get(k)) for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    expected = expected_store_mpp(request, attrs)
    stored = attrs.get("mpp")
    if stored is not None and (expected is None or abs(float(stored) - expected) > 1e-6 * expected):
        diffs.append(("mpp", stored, expected if expected is not None else "none (no usable metadata, no --mpp)"))
    return diffs


def difference_text(diffs: list[tuple[str, Any, Any]]) -> str:
    """``k A in the store, B in this run; ...``."""
    return "; ".join(f"{k} {a} in the store, {b} in this run" for k, a, b in diffs)


#: what ``tile`` advises when a job's stores were cut with other parameters
TILE_ADVICE = "pass --overwrite to tile them again, set the parameters back, or use another job folder"


def check_existing_stores(job: str | Path, sources: Sequence[SlideSource], cfg: TilingConfig,
                          requests: dict[str, MppRequest], advice: str = TILE_ADVICE, prefix: str = "") -> None:
    """Refuse, before any work, a run whose tiling parameters differ from the job's complete stores.

    Raises :class:`ConfigError` naming each parameter with the stores' value and this run's, then
    ``advice`` (options of the command that runs the check); ``prefix`` names the parameters as that
    command's config does (``tiling.`` in a study).
    """
    seen: dict[str, tuple[Any, Any, list[str]]] = {}
    for s in sources:
        out = patch_store_path(job, s.slide_id)
        if not out.exists():
            continue
        try:
            _, attrs = validate_patch_store(out)
        except WsiMilError:
            continue  # damaged or unfinished: it is tiled again
        for k, a, b in store_differences(attrs, cfg, requests.get(s.slide_id, MppRequest())):
            key = f"mpp of slide {s.slide_id}" if k == "mpp" else prefix + k
            seen.setdefault(key, (a, b, []))[2].append(s.slide_id)
    if not seen:
        return
    n = len({sid for _, _, ids in seen.values() for sid in ids})
    shown = list(seen.items())[:6]
    parts = "; ".join(f"{k}: {a} in the job's stores, {b} in this run" for k, (a, b, _) in shown)
    more = f" (and {len(seen) - len(shown)} more)" if len(seen) > len(shown) else ""
    raise ConfigError(f"{patches_dir(job)}: {n} existing store(s) were cut with other tiling parameters: {parts}{more}; "
                      f"{advice}")


