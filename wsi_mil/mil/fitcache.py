"""What the fits on one set of training slides share: a search's trials on one inner fold.

A search (``train --tune on``, :mod:`wsi_mil.mil.tuning`) fits every trial's head on the same inner training
and validation slides, with the same standardisation statistics. Three things a fit computes before its
first epoch depend on those slides and that transform only, never on a trial's settings (the declared
search spaces hold learning rates, weight decay, pooling and MLP settings, no key of the feature
transform): the feature components fitted on the training tiles, the bags prepared with them
(:mod:`wsi_mil.mil.prepared`) and the outlier warm start of the tile scorer computed from those prepared
tiles (:mod:`wsi_mil.mil.warmstart`). The first trial computes them; the others reuse them, and get the
same fit they would have got computing their own (``tests/mil/test_fitcache.py``).

Every entry is keyed by all it depends on (:func:`fit_key`: the head's standardisation, bag centring and
scored dimension and the training positions; and, where they matter, the prepared positions, the labels
and the seed), so a cache never hands a fit what another transform computed, should a search ever vary one. Prepared bags take
memory (on slides of 1,024-d float16 tiles, 128-d float32 ones: a quarter of the bags); the search's inner
folds draw them from one :class:`CacheBudget`, and a fit whose prepared bags would exceed it prepares its
own as before and keeps nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from torch import Tensor

from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.heads.base import MILHead

#: what decides a head's transform: bag centring, scored dimension, standardisation and training positions
FitKey = tuple[str, int, bytes, bytes, bytes]


def _digest(values: npt.NDArray[np.generic] | Tensor) -> bytes:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    return np.ascontiguousarray(values).tobytes()


def fit_key(head: MILHead, train_pos: npt.NDArray[np.int64]) -> FitKey:
    """The key of a fit's feature transform, once its standardisation is set: the head's resolved bag
    centring, the dimension it scores (K feature components, or D), its standardisation buffers (D,) and
    the training positions the components are fitted on."""
    return (head.bag_centring(), int(head.score_dim), _digest(head.feature_scale), _digest(head.feature_shift),
            _digest(np.asarray(train_pos)))


@dataclass
class CacheBudget:
    """Bytes of prepared bags the caches sharing this budget may still keep."""

    left: int

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes``; False (nothing reserved) when fewer are left."""
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True


@dataclass
class FitCache:
    """The components, prepared bags and warm starts of fits on one set of training positions.

    ``budget``: the bytes of prepared bags it may keep (shared with the other folds of a search); None:
    no limit beyond the per-fit rule of :func:`wsi_mil.mil.prepared.worth_preparing`.
    """

    budget: CacheBudget | None = None
    #: fit key -> feature projection (D, K) and shift (K,)
    components: dict[FitKey, tuple[Tensor, Tensor]] = field(default_factory=dict)
    prepared: dict[tuple[FitKey, bytes], BagSet] = field(default_factory=dict)
    warm_starts: dict[tuple[FitKey, bytes, int, str],
                      tuple[npt.NDArray[np.float64], float]] = field(default_factory=dict)

    def prepared_bags(self, key: FitKey, positions: npt.NDArray[np.int64], nbytes: int,
                      make: Callable[[], BagSet]) -> BagSet:
        """The prepared bags of ``positions`` under the transform of ``key``: kept ones, else ``make()``, kept
        when its ``nbytes`` fit the budget."""
        entry = (key, _digest(np.unique(positions)))
        if entry in self.prepared:
            return self.prepared[entry]
        ready = make()
        if self.budget is None or self.budget.take(nbytes):
            self.prepared[entry] = ready
        return ready

    def warm_start(self, key: FitKey, labels: npt.NDArray[np.int64], seed: int,
                   make: Callable[[], tuple[npt.NDArray[np.float64], float]],
                   method: str = "outliers") -> tuple[npt.NDArray[np.float64], float]:
        """The outlier start (weight (K,), bias) of the training positions of ``key`` with 0/1 ``labels``
        (theirs, in that order) and ``seed``: kept, else ``make()`` (a few floats: always kept)."""
        entry = (key, _digest(np.asarray(labels)), int(seed), method)
        if entry not in self.warm_starts:
            self.warm_starts[entry] = make()
        return self.warm_starts[entry]
