"""Bags as a head scores them, computed once per fit instead of at every step.

:meth:`~wsi_mil.mil.heads.base.MILHead.prepare` standardises a bag's tiles, centres them on the slide
(``bag_centring``) and projects them on the feature components. All three depend only on buffers a fit sets
before its first epoch (:func:`wsi_mil.mil.training.set_feature_transform`) and never changes after, so the
prepared tiles of a bag are the same at every step, validation pass and warm-start pass of that fit. On
slides (10,000 tiles x 1,024-d projected on 128 components) preparing was most of an epoch's work: the
z-score and the (N x 1,024) x (1,024 x 128) product of every bag at every step (BENCHMARKS.md, "Prepared
once per fit").

The per-slide statistics are then always those of the whole slide, as at inference, also when
``tiles_per_bag`` draws a sample of tiles per step (before, the sample's own mean and spread centred it).
Kept in float32 when that takes at most half the memory of the bags themselves or fits
:data:`~wsi_mil.mil.bags.DENSE_BYTES` (feature components: K / D of float32 bags, 2K / D of float16 ones);
otherwise the fit prepares every batch as it goes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from wsi_mil.mil.bags import DENSE_BYTES, BagSet
from wsi_mil.mil.fitcache import FitCache, fit_key
from wsi_mil.mil.heads.base import MILHead

PREPARED_DTYPE = torch.float32


def prepared_nbytes(head: MILHead, bags: BagSet, positions: npt.NDArray[np.int64]) -> int:
    """Bytes of the prepared tiles of ``positions``: tiles x ``head.score_dim`` x 4."""
    return int(bags.sizes[np.unique(positions)].sum()) * head.score_dim * PREPARED_DTYPE.itemsize


def worth_preparing(head: MILHead, bags: BagSet, positions: npt.NDArray[np.int64]) -> bool:
    """Whether a fit keeps the prepared tiles of ``positions`` (see the module docstring for the memory rule)."""
    if bags.prepared or len(positions) == 0:
        return False
    need = prepared_nbytes(head, bags, positions)
    return need <= DENSE_BYTES or 2 * need <= bags.nbytes


@torch.no_grad()
def prepare_bags(head: MILHead, bags: BagSet, positions: npt.NDArray[np.int64], tile_budget: int) -> BagSet:
    """A :class:`BagSet` (``prepared=True``) of the same positions, holding ``head.prepare`` of the bags at
    ``positions`` ((N_i, score_dim) float32, gathered in host memory, then placed as any BagSet) and no tile
    elsewhere. ``tile_budget``: padded tiles per batch
    while preparing (the fit's ``eval_tiles_per_batch``)."""
    empty = torch.empty((0, head.score_dim), dtype=PREPARED_DTYPE)
    out: list[Tensor] = [empty] * len(bags)
    for batch, feats, mask in bags.whole_batches(np.unique(positions).tolist(), tile_budget):
        x = head.prepare(head.standardize_(feats), mask, standardized=True)  # feats: the batch's own buffer
        for i, p in enumerate(batch):
            out[p] = x[i, : int(bags.sizes[p])].to("cpu", PREPARED_DTYPE, copy=True)
    return BagSet(out, bags.device, prepared=True)  # on the device when they fit, as any BagSet


def scoring_bags(head: MILHead, bags: BagSet, train_pos: npt.NDArray[np.int64], val_pos: npt.NDArray[np.int64],
                 tile_budget: int, cache: FitCache | None = None) -> BagSet:
    """The bags a fit trains and validates on: :func:`prepare_bags` of ``train_pos`` and ``val_pos`` when
    :func:`worth_preparing`, else ``bags``. With ``cache`` (:mod:`wsi_mil.mil.fitcache`), prepared bags of the
    same transform and positions are taken from it when there, else prepared and kept in it."""
    positions = np.r_[train_pos, val_pos]
    if not worth_preparing(head, bags, positions):
        return bags
    if cache is None:
        return prepare_bags(head, bags, positions, tile_budget)
    return cache.prepared_bags(fit_key(head, train_pos), positions, prepared_nbytes(head, bags, positions),
                               lambda: prepare_bags(head, bags, positions, tile_budget))
