"""One registry of MIL heads and one factory, timm-style: ``create_head(name, in_dim, n_classes, **kw)``.

Each head registers its class and a :class:`~wsi_mil.config.StrictModel` of its options, so
unknown or mistyped options are :class:`~wsi_mil.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from wsi_mil.config import StrictModel, config_to_dict, format_validation_error
from wsi_mil.errors import ConfigError
from wsi_mil.mil import heads as H


@dataclass(frozen=True)
class HeadSpec:
    """A registered head: its class, its options model and a one-line description."""

    name: str
    cls: type[H.MILHead]
    options: type[StrictModel]
    description: str


_REGISTRY: dict[str, HeadSpec] = {}


def register_head(name: str, cls: type[H.MILHead], options: type[StrictModel], description: str) -> None:
    """Add a head to the registry (names are lower-case and unique)."""
    if name in _REGISTRY:
        raise ValueError(f"MIL head '{name}' is already registered")
    _REGISTRY[name] = HeadSpec(name, cls, options, description)


register_head("weldon", H.Weldon, H.WeldonOptions, "WELDON: linear tile scores, mean of top-k + bottom-k")
register_head("chowder", H.Chowder, H.ChowderOptions, "CHOWDER: ensemble of 1-d embedding + min-max + MLP")
register_head("mean", H.MeanPool, H.PoolOptions, "baseline: mean of tile logits")
register_head("max", H.MaxPool, H.PoolOptions, "baseline: max of tile logits")
register_head("attention", H.AttentionMIL, H.AttentionOptions, "baseline: gated attention MIL (Ilse 2018)")


def list_heads() -> list[str]:
    """Names of the registered heads."""
    return list(_REGISTRY)


def head_spec(name: str) -> HeadSpec:
    """The spec of a registered head, or a ConfigError listing the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown MIL head '{name}'; choose one of {', '.join(_REGISTRY)}") from None


def validate_head_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``options`` for head ``name``; returns the full options (defaults filled in)."""
    spec = head_spec(name)
    try:
        return config_to_dict(spec.options.model_validate(options or {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"head_options of '{name}'")) from exc


def create_head(name: str, in_dim: int, n_classes: int, **kw: Any) -> H.MILHead:
    """Build head ``name`` for ``in_dim``-d tile features and ``n_classes`` classes.

    Keyword arguments are the head's options (e.g. ``k_top=5`` for WELDON, ``r=5, n_members=10``
    for CHOWDER); unknown keys raise :class:`~wsi_mil.errors.ConfigError`.
    """
    spec = head_spec(name)
    opts = spec.options.model_validate(validate_head_options(name, kw))
    return spec.cls(in_dim, n_classes, opts)
