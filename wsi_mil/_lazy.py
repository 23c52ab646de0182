"""Lazy package exports: ``from wsi_mil.mil import load_model_run`` without importing torch
when only ``wsi_mil.mil.config`` is wanted (PEP 562 module ``__getattr__``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, tuple[str, ...]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``; ``modules`` maps a submodule to the public
    names it defines, e.g. ``{"config": ("TilingConfig",), "stage": ("run_tile",)}``.

    A submodule is imported on the first access of one of its names, so importing the package (or
    one of its light submodules, such as ``config``) loads nothing heavy.
    """
    where = {name: module for module, names in modules.items() for name in names}
    public = sorted(where)

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__, public
