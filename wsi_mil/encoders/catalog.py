"""The ready-made entries described for people: width, parameters, input, licence, local weights.

Widths and parameter counts come from building each model on the meta device (no memory, no
weights), so the listing shows the model that would run, not a hand-copied number. Whether the
weights are on this machine is looked up on disk only: the local Hugging Face cache for the
publishers' entries, timm's cache for the ImageNet ones, and the paths a weights manifest pins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsi_mil.encoders.build import build_backbone, count_parameters, with_pooling
from wsi_mil.encoders.entry import EncoderEntry
from wsi_mil.encoders.factory import truncate_model
from wsi_mil.encoders.folder import embed_dim_of
from wsi_mil.encoders.manifest import WeightsManifest
from wsi_mil.encoders.registry import list_entries
from wsi_mil.encoders.sources import publisher_folder, weights_found
from wsi_mil.encoders.weights import find_cached_timm_weights
from wsi_mil.errors import EncoderError


@dataclass(frozen=True)
class EntryInfo:
    """One row of ``wsi-mil encoders``: ``width`` (D of the (B, D) features), ``params`` (count),
    ``input_size`` (H, W px), ``licence``, ``weights`` (where they were found, or "")."""

    name: str
    width: int
    params: int
    input_size: tuple[int, int]
    licence: str
    weights: str
    source: str
    description: str


def _timm_cached(entry: EncoderEntry) -> Path | None:
    from timm.models import get_pretrained_cfg

    name = f"{entry.timm_arch}.{entry.timm_tag}" if entry.timm_tag else entry.timm_arch
    cfg = get_pretrained_cfg(name)
    return find_cached_timm_weights(cfg.to_dict()) if cfg is not None else None


def local_weights(entry: EncoderEntry, manifest: WeightsManifest | None = None) -> str:
    """Where ``entry``'s weights are on this machine (``manifest:``, ``hub:``, ``timm:`` + path), else ""."""
    if manifest is not None and entry.name in manifest.pins:
        pinned = manifest.pins[entry.name].path
        try:
            file = publisher_folder(pinned, entry).file if pinned.is_dir() else pinned
        except EncoderError:
            file = None
        if file is not None and file.is_file():
            return f"manifest: {file}"
    if entry.is_publisher_entry:
        found = weights_found(entry)
        return f"hub: {found}" if found is not None else ""
    cached = _timm_cached(entry) if entry.timm_tag else None
    return f"timm: {cached}" if cached is not None else ""


_SHAPES: dict[str, tuple[int, int]] = {}


def entry_shape(entry: EncoderEntry) -> tuple[int, int]:
    """(width, parameters) of ``entry``'s model, built once per recipe on the meta device."""
    key = repr((entry.name, entry.timm_arch, entry.truncate_after, entry.pooling, sorted(entry.timm_kwargs.items())))
    if key not in _SHAPES:
        model = with_pooling(build_backbone(entry, device="meta"), entry)
        truncate_model(model, entry)  # the ResNet cut after layer3 (CLAM): count what runs
        _SHAPES[key] = (embed_dim_of(model), count_parameters(model))
    return _SHAPES[key]


def describe_entries(manifest: WeightsManifest | None = None) -> list[EntryInfo]:
    """Every ready-made entry, in registry order, built on the meta device."""
    rows = []
    for entry in list_entries():
        width, params = entry_shape(entry)
        hw = entry.data_config.hw if entry.data_config is not None else (224, 224)
        rows.append(EntryInfo(entry.name, width, params, hw,
                              (entry.licence or "timm model card") + (", gated" if entry.gated else ""),
                              local_weights(entry, manifest),
                              entry.hf_repo or f"timm {entry.timm_arch}.{entry.timm_tag}", entry.description))
    return rows


def format_count(n: int) -> str:
    """1134774272 -> '1.13B', 303350784 -> '303M'."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e7 else f"{n / 1e6:.1f}M"
