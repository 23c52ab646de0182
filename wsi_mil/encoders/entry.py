"""``EncoderEntry``: one named encoder recipe over a timm architecture (no torch, no timm)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wsi_mil.encoders.dataconfig import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class EncoderEntry:
    """A named encoder recipe over a timm architecture.

    ``truncate_after``: for ResNets, the last stage kept (``"layer3"`` drops ``layer4``; the
    global average pool then gives the width of ``layer3``, 1024 for ResNet-50).
    ``timm_tag``: the timm pretrained tag loaded for ``--weights timm``.
    ``data_config``: how tiles are prepared (:class:`~wsi_mil.encoders.dataconfig.DataConfig`);
    None: timm's data config of the architecture.

    Publisher entries (pathology foundation models, :mod:`wsi_mil.encoders.foundation`) add:
    ``timm_kwargs``: the exact ``timm.create_model`` keyword arguments (JSON-like values; the
    names ``"swiglu_packed"`` for ``mlp_layer`` and ``norm_eps`` for a LayerNorm epsilon are
    resolved by the factory). ``pooling``: ``"model"`` (the timm model's own pooling, e.g. the
    class token) or ``"cls+mean"`` (class token concatenated with the mean of the patch tokens,
    register tokens excluded: 2 x width) or ``"conch_attn"`` (CONCH v1.5's attentional pooler, which
    has weights: :mod:`wsi_mil.encoders.conch`). ``hf_repo``: the publisher's Hugging Face repository
    ``ORG/NAME``, of ``hf_repo_type`` (``model`` or ``dataset``); ``download_files``: the files
    to fetch from it (empty: the whole repository). ``weights_format``: the key layout of the
    publisher's file (``timm``, ``hf_vit``, ``hf_dinov2``, ``timm0_swin``: timm 0.5's Swin,
    ``conch_v15``: CONCH v1.5's ``trunk.*`` + pooler tensors).
    ``weights_files``: file names (paths in the repository) looked for in a publisher folder,
    in order. ``published_params`` (e.g. ``"632M"``) and ``published_dim``: the publisher's
    figures, checked by the tests. ``licence``: a short note; ``gated``: the repository asks
    users to accept terms before downloading. ``reference``: where the recipe was checked.
    """

    name: str
    timm_arch: str
    description: str
    timm_tag: str | None = None
    truncate_after: str | None = None
    data_config: DataConfig | None = None
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    pooling: str = "model"
    hf_repo: str | None = None
    hf_repo_type: str = "model"
    download_files: tuple[str, ...] = ()
    weights_format: str = "timm"
    weights_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    published_params: str | None = None
    published_dim: int | None = None
    licence: str = ""
    gated: bool = False
    reference: str = ""

    @property
    def is_publisher_entry(self) -> bool:
        """True for entries whose weights come from a publisher's Hugging Face repository."""
        return self.hf_repo is not None


def square_config(size: int, mean: tuple[float, ...], std: tuple[float, ...], interpolation: str) -> DataConfig:
    """A square (3, size, size) data config."""
    return DataConfig((3, size, size), mean, std, interpolation)


def parse_count(text: str) -> tuple[float, float]:
    """A publisher's rounded figure (``"632M"``, ``"1.1B"``, ``"86M"``) -> (value, half a unit of
    its last digit): the interval a count rounded that way lies in."""
    units = {"K": 1e3, "M": 1e6, "B": 1e9}
    number, unit = text[:-1], text[-1:].upper()
    if unit not in units or not number.replace(".", "", 1).isdigit():
        raise ValueError(f"parameter figure {text!r}: expected a number and K, M or B, e.g. '632M'")
    decimals = len(number.partition(".")[2])
    return float(number) * units[unit], 0.5 * 10.0 ** -decimals * units[unit]
