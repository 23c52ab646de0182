"""MIL heads: WELDON, CHOWDER, LSE and the baselines, all following :class:`MILHead`'s contract.

Importing this package is light (no torch): it registers every head's name and options
(:mod:`~wsi_mil.mil.heads.options`). The ``nn.Module`` classes load on first access, and
:func:`wsi_mil.mil.registry.create_head` builds a head by name.
"""

from wsi_mil._lazy import lazy_exports
from wsi_mil.mil.heads._registry import (
    Choice,
    FloatRange,
    HeadEntry,
    HeadOptions,
    IntRange,
    SearchSpace,
    head_entry,
    heads_help,
    is_head,
    list_heads,
    parse_head_options,
    register_head,
    register_options,
)
from wsi_mil.mil.heads.options import (
    AttentionOptions,
    ChowderOptions,
    LogisticOptions,
    LSEOptions,
    MaxPoolOptions,
    PoolOptions,
    WeldonOptions,
)

__getattr__, _dir_torch, _torch_names = lazy_exports(__name__, {
    "base": ("MILHead",),
    "baselines": ("AttentionMIL", "MaxPool", "MeanPool"),
    "chowder": ("Chowder",),
    "ensemble": ("FoldEnsemble",),
    "logistic": ("MeanLogistic",),
    "lse": ("LSEPool",),
    "weldon": ("Weldon",),
})

__all__ = [
    "AttentionMIL", "AttentionOptions", "Choice", "Chowder", "ChowderOptions", "FloatRange", "FoldEnsemble", "HeadEntry",
    "HeadOptions", "IntRange", "LSEOptions", "LSEPool", "LogisticOptions", "MILHead", "MaxPool", "MaxPoolOptions",
    "MeanLogistic", "MeanPool", "PoolOptions", "SearchSpace", "Weldon", "WeldonOptions", "head_entry", "heads_help",
    "is_head", "list_heads", "parse_head_options", "register_head", "register_options",
]


def __dir__() -> list[str]:
    return __all__
