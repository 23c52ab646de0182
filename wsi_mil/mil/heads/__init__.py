"""MIL heads: WELDON, CHOWDER and the baselines, all following :class:`MILHead`'s contract."""

from wsi_mil.mil.heads.base import MILHead
from wsi_mil.mil.heads.baselines import AttentionMIL, AttentionOptions, MaxPool, MeanPool, PoolOptions
from wsi_mil.mil.heads.chowder import Chowder, ChowderOptions
from wsi_mil.mil.heads.weldon import Weldon, WeldonOptions

__all__ = ["AttentionMIL", "AttentionOptions", "Chowder", "ChowderOptions", "MILHead", "MaxPool",
           "MeanPool", "PoolOptions", "Weldon", "WeldonOptions"]
