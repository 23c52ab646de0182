"""``create_stain_normalizer(name)``: the one factory of stain normalisation methods."""

from __future__ import annotations

from collections.abc import Callable

from wsi_mil.errors import ConfigError
from wsi_mil.stain.base import StainNormalizer
from wsi_mil.stain.macenko import Macenko
from wsi_mil.stain.reinhard import Reinhard

#: every method, with ``none`` (no normalisation) first
STAIN_METHODS = ("none", "macenko", "reinhard")

_FACTORIES: dict[str, Callable[[], StainNormalizer]] = {"macenko": Macenko, "reinhard": Reinhard}


def create_stain_normalizer(name: str) -> StainNormalizer | None:
    """The normaliser ``name`` with its fixed reference target; ``none``: None (no normalisation)."""
    key = str(name).strip().lower()
    if key == "none":
        return None
    factory = _FACTORIES.get(key)
    if factory is None:
        raise ConfigError(f"--stain-norm '{name}': choose one of {', '.join(STAIN_METHODS)}")
    return factory()
