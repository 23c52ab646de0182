"""Our Macenko and Reinhard against torchstain's on real tissue from ../shared/data/slides.

torchstain fits and normalises one image; we fit a slide once from its sampled tiles and then
normalise each tile. Both are pixelwise once fitted, so torchstain on the mosaic of the sampled
tiles must give what our fit on those tiles followed by our batched transform gives, tile by
tile. Tolerance: our transform runs in float32 (torchstain's numpy backend in float64) and both
truncate to uint8, so a value may land one level apart where the exact result is within float32
rounding of an integer: at most 1 level, on at most 0.1 % of the values. The fitted parameters
match to 1e-6 (both float64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer
from torchstain.torch.normalizers import TorchMacenkoNormalizer

from wsi_mil.slide import open_slide
from wsi_mil.stain import REINHARD_REFERENCE, Macenko, Reinhard, ReinhardFit
from wsi_mil.stain.reinhard import lab_statistics

#: at most this share of values may differ (by one level) from torchstain's
MAX_DIFFERING = 1e-3


def mosaic(tiles: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) -> (S, n * S, 3): the tiles side by side, one image for torchstain."""
    return np.concatenate(list(tiles), axis=1)


def assert_close_uint8(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    d = np.abs(ours.astype(np.int16) - np.asarray(ref).astype(np.int16))
    assert d.max() <= 1, f"max difference {d.max()} levels"
    assert (d > 0).mean() <= MAX_DIFFERING, f"{(d > 0).mean():.2e} of the values differ"


def test_macenko_fit_matches_torchstain(real_tiles: np.ndarray) -> None:
    ref = NumpyMacenkoNormalizer()
    he, _, max_c = ref._NumpyMacenkoNormalizer__compute_matrices(mosaic(real_tiles), 240, 1, 0.15)  # type: ignore[attr-defined]
    fit = Macenko().fit(real_tiles, "real")
    np.testing.assert_allclose(fit.stain_matrix, he, atol=1e-6)
    np.testing.assert_allclose(fit.max_concentrations, max_c, rtol=1e-6)
    # a real H&E fit: two distinct positive stain directions, haematoxylin (more red OD) first
    assert np.all(fit.stain_matrix > 0) and fit.stain_matrix[0, 0] > fit.stain_matrix[0, 1]
    np.testing.assert_allclose(np.linalg.norm(fit.stain_matrix, axis=0), 1.0, atol=1e-9)


def test_macenko_transform_matches_torchstain(real_tiles: np.ndarray) -> None:
    ref, _, _ = NumpyMacenkoNormalizer().normalize(mosaic(real_tiles), stains=False)
    ours = Macenko().fit(real_tiles, "real")(torch.from_numpy(real_tiles)).numpy()
    assert_close_uint8(mosaic(ours), ref)
    # the image really changed: the comparison is not of two copies of the input
    assert np.abs(ref.astype(int) - mosaic(real_tiles).astype(int)).mean() > 2


def test_macenko_matches_torchstains_torch_backend(real_tiles: np.ndarray) -> None:
    """torchstain's torch backend takes nearest-rank percentiles (we interpolate, as its numpy
    backend and numpy do): its stain vectors move a little, and the output stays within 1 level
    on at most 1 % of the values."""
    image = torch.from_numpy(mosaic(real_tiles)).permute(2, 0, 1).contiguous()
    ref, _, _ = TorchMacenkoNormalizer().normalize(image, stains=False)
    ours = mosaic(Macenko().fit(real_tiles, "real")(torch.from_numpy(real_tiles)).numpy())
    d = np.abs(ours.astype(int) - ref.numpy().astype(int))
    assert d.max() <= 1 and (d > 0).mean() <= 1e-2


def test_reinhard_transform_matches_torchstain(real_tiles: np.ndarray) -> None:
    """torchstain standardises with the statistics of every pixel of the image it normalises:
    ours with those statistics gives the same image."""
    ref = NumpyReinhardNormalizer()
    ref.target_means = np.array(REINHARD_REFERENCE.mean)
    ref.target_stds = np.array(REINHARD_REFERENCE.std)
    expected = ref.normalize(mosaic(real_tiles))
    mean, std = lab_statistics(real_tiles.reshape(-1, 3))
    ours = ReinhardFit(mean, std, REINHARD_REFERENCE)(torch.from_numpy(real_tiles)).numpy()
    assert_close_uint8(mosaic(ours), expected)
    assert np.abs(expected.astype(int) - mosaic(real_tiles).astype(int)).mean() > 2


def test_reinhard_fit_matches_torchstain_on_the_tissue_pixels(real_tiles: np.ndarray) -> None:
    """Our fit leaves background out; on the tissue pixels its statistics are torchstain's."""
    norm = Reinhard()
    tissue = norm.tissue(real_tiles)
    assert 0.3 * real_tiles[..., 0].size < len(tissue) < real_tiles[..., 0].size  # some background dropped
    ref = NumpyReinhardNormalizer()
    ref.fit(tissue.reshape(1, -1, 3))
    fit = norm.fit(real_tiles, "real")
    np.testing.assert_allclose(fit.mean, ref.target_means, atol=2e-4)  # torchstain works in float32
    np.testing.assert_allclose(fit.std, ref.target_stds, rtol=1e-4)


def test_reinhard_reference_target_is_refitted_from_its_source(shared_slides: Path) -> None:
    """The constant target is what the documented source image gives."""
    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as s:
        rgb, _ = s.read_at_mpp(2.0)
    fit = Reinhard().fit(rgb, "CMU-1-Small-Region.svs")
    np.testing.assert_allclose(fit.mean, REINHARD_REFERENCE.mean, atol=2e-3)
    np.testing.assert_allclose(fit.std, REINHARD_REFERENCE.std, atol=2e-3)
