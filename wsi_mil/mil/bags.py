"""Bags of tile features in memory: load feature files once, sample tiles, pad and mask.

A bag is the (N, D) feature matrix of one slide. :class:`BagSet` keeps every bag as one tensor
in its storage dtype (float16 files stay float16: half the memory) on the training device when
they fit (else in host memory, copied per batch), and builds padded float32 batches
``features`` (B, T, D) with ``mask`` (B, T) bool (True = real tile, padding is zeros).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from wsi_mil.errors import StoreError
from wsi_mil.mil.centring import bag_centres, masked_sum
from wsi_mil.mil.scaling import FeatureStats
from wsi_mil.stores.features import check_encoder, read_feature_attrs, read_feature_file

#: share of the free GPU memory the bags may take before they are kept in host memory instead
GPU_MEMORY_SHARE = 0.6
#: bags whose padded float32 block (n_bags, N_max, D) fits in this many bytes are also kept as that
#: block, so a batch is one gather instead of one copy per bag (small bags: the classic MIL sets)
DENSE_BYTES = 256 << 20


@dataclass
class Bag:
    """One slide's features (N, D) in storage dtype and level-0 tile coordinates (N, 2) int64."""

    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    path: Path | None = None

    @property
    def n_tiles(self) -> int:
        return int(self.features.shape[0])


def feature_encoder(path: str | Path) -> tuple[str, int]:
    """(encoder id, embed dim) recorded in a feature file."""
    attrs = read_feature_attrs(path)
    return str(attrs["encoder_id"]), int(attrs["embed_dim"])


def load_bags(paths: Sequence[Path], encoder_id: str | None = None, embed_dim: int | None = None) -> list[Bag]:
    """Read feature files once into memory, keeping their dtype.

    Every file must come from ``encoder_id`` with ``embed_dim`` (when None, the first file's
    values are required of all others): a file from another encoder is a StoreError naming it.
    """
    bags = []
    for p in paths:
        if encoder_id is None or embed_dim is None:
            encoder_id, embed_dim = feature_encoder(p)
        ff = read_feature_file(p, encoder_id, embed_dim, dtype=None)
        bags.append(Bag(ff.slide_id, ff.features, ff.coords, Path(p)))
    return bags


def check_same_encoder(paths: Sequence[Path], encoder_id: str, embed_dim: int, skip_unreadable: bool = False) -> None:
    """Validate the encoder of every file before any is loaded (cheap: attributes only).

    ``skip_unreadable``: a file whose attributes cannot be read is left to the caller (which
    records it as a failed slide) instead of raising here; a readable file from another encoder
    is always an error.
    """
    for p in paths:
        try:
            attrs = read_feature_attrs(p)
        except StoreError:
            if skip_unreadable:
                continue
            raise
        check_encoder(p, attrs, encoder_id, embed_dim)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error for the caller."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class BagSet:
    """Bags as tensors, on ``device`` when they fit; padded batches in float32 on ``device``."""

    def __init__(self, features: Sequence[np.ndarray | Tensor], device: torch.device | str = "cpu",
                 prepared: bool = False) -> None:
        """``features``: one (N_i, D) array per bag position. ``prepared``: they are a head's
        :meth:`~wsi_mil.mil.heads.base.MILHead.prepare` output already (:mod:`wsi_mil.mil.prepared`), and the
        head reads them as they are (``prepared=True``)."""
        self.device = torch.device(device)
        #: the bags are a head's prepared tiles (D = its score_dim), not raw features
        self.prepared = prepared
        tensors = [torch.as_tensor(f) for f in features]
        total = sum(t.numel() * t.element_size() for t in tensors)
        self.on_device = self.device.type == "cpu"
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            self.on_device = total <= GPU_MEMORY_SHARE * free
        if self.on_device:
            tensors = [t.to(self.device) for t in tensors]
        elif self.device.type == "cuda":
            tensors = [t.pin_memory() for t in tensors]
        self.bags: list[Tensor] = tensors
        self.sizes = np.array([t.shape[0] for t in tensors], dtype=np.int64)
        self.nbytes = total
        self._buffer: Tensor | None = None
        self._dense: Tensor | None = None
        self._lengths = torch.as_tensor(self.sizes, device=self.device)
        dim = int(tensors[0].shape[1]) if tensors and tensors[0].ndim == 2 else 0
        #: D, the tiles' feature size (0 for no bag)
        self.dim = dim
        width = int(self.sizes.max()) if len(self.sizes) else 0
        if self.on_device and dim and 0 < len(tensors) * width * dim * 4 <= DENSE_BYTES:
            self._dense = torch.zeros(len(tensors), width, dim, dtype=torch.float32, device=self.device)
            for i, t in enumerate(tensors):
                self._dense[i, : t.shape[0]].copy_(t)

    def __len__(self) -> int:
        return len(self.bags)

    def _pad(self, parts: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Copy bags into one reused float32 buffer (B, N_max, D), zero padding; plus the mask.

        Reusing the buffer avoids allocating (and page-faulting) hundreds of MB per step on the
        CPU; the returned tensors are therefore only valid until the next batch is built.
        """
        b = len(parts)
        width = max(p.shape[0] for p in parts)
        out = self._batch_buffer(b, width, parts[0].shape[1])
        for i, p in enumerate(parts):
            n = p.shape[0]
            out[i, :n].copy_(p, non_blocking=True)
            if n < width:
                out[i, n:].zero_()
        lengths = torch.tensor([p.shape[0] for p in parts], device=self.device)
        mask = torch.arange(width, device=self.device).unsqueeze(0) < lengths.unsqueeze(1)
        return out, mask

    def _batch_buffer(self, b: int, width: int, dim: int) -> Tensor:
        """A (b, width, dim) float32 view of the one reused batch buffer (grown when too small).

        Reusing it avoids allocating (and page-faulting) a new batch per step: on the CPU a fresh
        16 x 131 x 5,863 batch (web_recommendation_1) cost ~9x the copy itself."""
        need = b * width * dim
        if self._buffer is None or self._buffer.numel() < need:
            self._buffer = None
            self._buffer = torch.empty(need, dtype=torch.float32, device=self.device)
        return self._buffer[:need].view(b, width, dim)

    def _gather(self, positions: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Whole bags from the dense block: the same (B, N_max_batch, D) and mask as :meth:`_pad`, in the
        same reused buffer (valid until the next batch is built)."""
        dense = self._dense
        if dense is None:
            raise RuntimeError("BagSet._gather needs the dense block")
        idx = torch.as_tensor(list(positions), dtype=torch.int64, device=self.device)
        lengths = self._lengths.index_select(0, idx)
        width = int(self.sizes[list(positions)].max())
        feats = torch.index_select(dense[:, :width], 0, idx, out=self._batch_buffer(len(idx), width, self.dim))
        mask = torch.arange(width, device=self.device).unsqueeze(0) < lengths.unsqueeze(1)
        return feats, mask

    def sample_batch(
        self, positions: Sequence[int], tiles_per_bag: int | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A training batch: up to ``tiles_per_bag`` tiles drawn without replacement from each bag.

        Bags with fewer tiles are used whole (padded). ``None`` uses whole bags.
        Returns features (B, T, D) float32 and mask (B, T) bool on the device, valid until the
        next batch is built (one buffer is reused).
        """
        if self._dense is not None and (tiles_per_bag is None or int(self.sizes[list(positions)].max()) <= tiles_per_bag):
            return self._gather(positions)
        draws = {}
        for p in positions:
            n = self.bags[p].shape[0]
            if tiles_per_bag is not None and n > tiles_per_bag:
                draws[p] = torch.randperm(n, generator=generator)[:tiles_per_bag]
        if draws:  # one host-to-device copy of all draws, not one per bag
            stacked = torch.stack(list(draws.values())).to(self.bags[positions[0]].device)
            draws = dict(zip(draws, stacked, strict=True))
        parts = []
        for p in positions:
            bag = self.bags[p]
            if p in draws:
                bag = bag.index_select(0, draws[p])  # much faster than bag[pick] on CPU
            parts.append(bag)
        return self._pad(parts)

    def median_size(self, positions: npt.NDArray[np.int64]) -> float:
        """Median tiles per bag over ``positions`` (0 for none): what the ``auto`` defaults read."""
        return float(np.median(self.sizes[positions])) if len(positions) else 0.0

    def feature_stats(self, positions: Sequence[int], centring: str = "none") -> FeatureStats:
        """Statistics of every tile of the bags at ``positions``: mean and standard deviation (D,) float32;
        ``centring`` ``mean`` / ``median``: of the tiles minus their bag's mean / median tile
        (``head_options.bag_centring``); the largest absolute value (D,) and the share of zero values of
        the tiles as stored."""
        dim = self.bags[positions[0]].shape[1]
        total = torch.zeros(dim, dtype=torch.float64, device=self.device)
        squares = torch.zeros(dim, dtype=torch.float64, device=self.device)
        max_abs = torch.zeros(dim, dtype=torch.float32, device=self.device)
        count = zeros = 0
        for p in positions:  # one bag's sums in float32 blocks (no bag-sized temporaries), the cohort's in float64
            x = self.bags[p].to(self.device, torch.float32)[None]
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            centres = bag_centres(x, mask, centring)
            total += masked_sum(x, mask, centres)[0, 0].double()
            squares += masked_sum(x, mask, centres, square=True)[0, 0].double()
            if x.shape[1]:
                torch.maximum(max_abs, x[0].abs().amax(dim=0), out=max_abs)
            zeros += int(x.numel()) - int(torch.count_nonzero(x))
            count += x.shape[1]
        mean = total / max(count, 1)
        var = (squares / max(count, 1) - mean * mean).clamp(min=0)
        return FeatureStats(mean.float(), var.sqrt().float(), max_abs, zeros / max(count * dim, 1))

    def whole_batches(
        self, positions: Sequence[int], tile_budget: int
    ) -> Iterator[tuple[list[int], Tensor, Tensor]]:
        """Whole bags, grouped by size so a batch holds at most ``tile_budget`` padded tiles.

        Yields (positions in this batch, features (B, N, D) float32, mask (B, N)).
        """
        order = sorted(positions, key=lambda p: -int(self.sizes[p]))
        i = 0
        while i < len(order):
            width = max(1, int(self.sizes[order[i]]))
            j = i + 1
            while j < len(order) and (j - i + 1) * width <= tile_budget:
                j += 1
            batch = order[i:j]
            feats, mask = self._gather(batch) if self._dense is not None else self._pad([self.bags[p] for p in batch])
            yield batch, feats, mask
            i = j
