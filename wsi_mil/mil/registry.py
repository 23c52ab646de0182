"""Build a registered MIL head by name, timm-style: ``create_head(name, in_dim, n_classes, options)``.

Importing this module imports every built-in head module, whose ``@register_head`` decorators
add their classes to the torch-free registry of :mod:`wsi_mil.mil.heads` (names, descriptions and
options models, see :mod:`wsi_mil.mil.heads._registry`). Configs and ``--help`` read that
registry without loading torch; this module is the torch side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wsi_mil.errors import ConfigError
from wsi_mil.mil.heads import baselines, chowder, logistic, lse, weldon  # noqa: F401  (each registers its head classes)
from wsi_mil.mil.heads._registry import HeadOptions, head_entry, list_heads, parse_head_options
from wsi_mil.mil.heads.base import MILHead

__all__ = ["create_head", "head_class", "list_with_representation"]


def head_class(name: str) -> type[MILHead]:
    """The ``nn.Module`` class of head ``name`` (ConfigError for an unknown name)."""
    entry = head_entry(name)
    if entry.cls is None:
        raise ConfigError(f"MIL head '{name}' has options but no class; decorate one with @register_head('{name}')")
    return entry.cls


def list_with_representation() -> list[str]:
    """Names of the registered heads that have a slide representation (domain-adversarial training)."""
    return [n for n in list_heads() if (c := head_entry(n).cls) is not None and c.representation is not None]


def create_head(
    name: str, in_dim: int, n_classes: int, options: HeadOptions | Mapping[str, Any] | None = None, **kw: Any,
) -> MILHead:
    """Build head ``name`` for ``in_dim``-d tile features and ``n_classes`` classes.

    ``options``: the head's typed options (e.g. ``TrainConfig.head_options``, used as they are) or
    a mapping of them (``config.json``), validated once; keyword arguments are a shortcut for the
    mapping (``k_top=5`` for WELDON, ``r=5, n_members=10`` for CHOWDER). Unknown names or keys
    raise :class:`~wsi_mil.errors.ConfigError`.
    """
    if kw:
        if options is not None:
            raise TypeError("create_head: pass the options either as `options` or as keyword arguments, not both")
        options = kw
    cls = head_class(name)
    return cls(in_dim, n_classes, parse_head_options(name, options))
