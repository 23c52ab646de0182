"""Stain normalisation properties: identity on its own target, batch = tile by tile, layouts and
dtypes, deterministic per-slide fits, clear failures, and two slides brought closer together."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.encoders.factory import stain_encoder_id
from wsi_mil.errors import ConfigError
from wsi_mil.stain import (
    MACENKO_REFERENCE,
    REINHARD_REFERENCE,
    Macenko,
    MacenkoTarget,
    Reinhard,
    ReinhardTarget,
    StainFitError,
    create_stain_normalizer,
    fit_store,
    sample_pixels,
    sample_tile_ids,
)
from wsi_mil.stain.reinhard import lab_statistics
from wsi_mil.stores.patches import open_patch_store, write_patch_store

METHODS = [Macenko, Reinhard]


def lab_of_tissue(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LAB mean and std (3,) over the tissue pixels of ``tiles``."""
    return lab_statistics(Reinhard().tissue(tiles))


def store_of(path: Path, tiles: np.ndarray, chunk: int = 8, tissue: np.ndarray | None = None) -> Path:
    n = len(tiles)
    attrs = dict(slide_id=path.stem, target_mpp=0.5, mpp=0.5, tile_size_level0=float(tiles.shape[1]),
                 tile_size=tiles.shape[1], slide_hash=f"sha256:{path.stem}", slide_path=f"/{path.stem}.svs",
                 mpp_source="metadata")
    return write_patch_store(path, tiles, np.stack([np.arange(n), np.zeros(n)], 1).astype(np.int64),
                             np.ones(n, np.float32) if tissue is None else tissue, np.ones((4, 4), np.uint8), 16.0,
                             attrs, codec="zstd", tiles_per_chunk=chunk, chunks_per_shard=2)


def test_reinhard_onto_its_own_statistics_is_the_identity(real_tiles: np.ndarray) -> None:
    fit = Reinhard().fit(real_tiles)
    own = Reinhard(ReinhardTarget(mean=tuple(fit.mean), std=tuple(fit.std))).fit(real_tiles)
    out = own(torch.from_numpy(real_tiles)).numpy().astype(int)
    assert np.abs(out - real_tiles).max() <= 1  # float round trip through LAB, then truncation
    x = torch.from_numpy(real_tiles).double()
    # unquantised: exact but for the rounded knees of the LAB curves (0.008856 vs 0.2068966**3) near black
    np.testing.assert_allclose(own(x).numpy(), real_tiles, atol=1e-3)


def test_macenko_onto_its_own_fit_keeps_every_stain_mixture(real_tiles: np.ndarray) -> None:
    """With the slide's own stain matrix and maxima as the target, the map is the projection onto
    the slide's stain plane: a pixel made of the two stains comes back as it was, plus the one
    level that the reference's ``OD = -log((I + 1) / Io)`` / ``I = Io exp(-OD)`` pair adds."""
    fit = Macenko().fit(real_tiles)
    target = MacenkoTarget(stain_matrix=tuple(map(tuple, fit.stain_matrix)),
                           max_concentrations=tuple(fit.max_concentrations))
    own = Macenko(target).fit(real_tiles)
    m = own.od_map()
    np.testing.assert_allclose(m @ m, m, atol=1e-9)
    np.testing.assert_allclose(m @ fit.stain_matrix, fit.stain_matrix, atol=1e-9)
    conc = np.random.default_rng(0).uniform(0, 1, (2, 4096)) * fit.max_concentrations[:, None]
    mixtures = 240.0 * np.exp(-(fit.stain_matrix @ conc)).T - 1.0  # (N, 3) on [0, 239]
    x = torch.from_numpy(mixtures.reshape(1, 64, 64, 3))
    np.testing.assert_allclose(own(x).numpy().reshape(-1, 3), mixtures + 1.0, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_a_batch_is_its_tiles_one_by_one_in_every_layout(real_tiles: np.ndarray, method: type) -> None:
    fit = method().fit(real_tiles)
    batch = torch.from_numpy(real_tiles)
    out = fit(batch)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    for i in (0, 5, len(real_tiles) - 1):
        assert torch.equal(fit(batch[i]), out[i])  # one (H, W, 3) image
        assert torch.equal(fit(batch[i:i + 1]), out[i:i + 1])
    nchw = batch.permute(0, 3, 1, 2).contiguous()
    assert torch.equal(fit(nchw), out.permute(0, 3, 1, 2))
    as_float = fit(nchw.float(), channels_last=False)  # the engine's input: float on [0, 255]
    assert as_float.dtype == torch.float32 and as_float.shape == nchw.shape
    assert torch.equal(as_float.clamp(0, 255).to(torch.uint8), out.permute(0, 3, 1, 2))  # uint8 = truncated float
    unit = fit(batch.float() / 255.0, scale=1.0)  # float on [0, 1] in, [0, 1] out
    torch.testing.assert_close(unit * 255.0, fit(batch.float()), atol=1e-3, rtol=1e-5)
    half = fit(batch.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), fit(batch.float()), atol=0.25, rtol=2e-3)


@pytest.mark.parametrize("method", METHODS)
def test_a_fitted_transform_pickles_without_its_device_cache(real_tiles: np.ndarray, method: type) -> None:
    fit = method().fit(real_tiles)
    x = torch.from_numpy(real_tiles[:2])
    expected = fit(x)
    assert fit._cache  # device tensors made once and kept
    clone = pickle.loads(pickle.dumps(fit))
    assert clone._cache == {} and torch.equal(clone(x), expected)
    assert clone.params() == fit.params()


def test_normalising_brings_two_slides_closer(both_slides: tuple[np.ndarray, np.ndarray]) -> None:
    """CMU (Aperio, JPEG) and the TCGA slide (JPEG 2000) are stained differently; after either
    method their tissue colours are closer, and Reinhard puts both near its target."""
    a, b = both_slides
    before = np.linalg.norm(lab_of_tissue(a)[0] - lab_of_tissue(b)[0])
    assert before > 10
    for method in (Macenko(), Reinhard()):
        na, nb = (method.fit(t)(torch.from_numpy(t)).numpy() for t in (a, b))
        after = np.linalg.norm(lab_of_tissue(na)[0] - lab_of_tissue(nb)[0])
        assert after < 0.6 * before, (method.name, before, after)
    for t in (a, b):
        mean, std = lab_of_tissue(Reinhard().fit(t)(torch.from_numpy(t)).numpy())
        np.testing.assert_allclose(mean, REINHARD_REFERENCE.mean, atol=3.0)
        np.testing.assert_allclose(std, REINHARD_REFERENCE.std, rtol=0.15)


def test_the_sample_is_spread_over_the_slide_and_prefers_tissue() -> None:
    tissue = np.linspace(0.2, 0.9, 100).astype(np.float32)[::-1].copy()  # tissue falls along the rows
    tissue[40:50] = np.arange(10) / 10.0  # chunk 4: best tiles at its end
    chunks = [(i, min(i + 10, 100)) for i in range(0, 100, 10)]
    ids = sample_tile_ids(tissue, chunks, n_tiles=12, n_chunks=4)
    # chunks 0, 3, 6, 9 (evenly spaced), 3 tiles each, of the highest tissue fraction
    assert ids.tolist() == [0, 1, 2, 30, 31, 32, 60, 61, 62, 90, 91, 92]
    assert sample_tile_ids(tissue, chunks[:1], n_tiles=3).tolist() == [0, 1, 2]
    assert sample_tile_ids(tissue, [], n_tiles=3).tolist() == []
    picked = sample_tile_ids(tissue, chunks, n_tiles=30, n_chunks=10)
    assert [i for i in picked if 40 <= i < 50] == [47, 48, 49]


def test_pixel_subsample_is_seeded() -> None:
    tiles = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert sample_pixels(tiles, 10_000).shape == (4096, 3)  # under the cap: every pixel
    a, b = sample_pixels(tiles, 1000), sample_pixels(tiles, 1000)
    assert a.shape == (1000, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, sample_pixels(tiles, 1000, seed=1))


@pytest.mark.parametrize("method", METHODS)
def test_fitting_a_store_is_deterministic(tmp_path: Path, cmu_tiles: np.ndarray, method: type) -> None:
    path = store_of(tmp_path / "cmu.zarr", cmu_tiles)
    first = fit_store(open_patch_store(path), method())
    again = fit_store(open_patch_store(path), method())
    assert first.attrs() == again.attrs()
    # 6 chunks of 8 tiles: chunks 0, 2, 3 and 5 (4 evenly spaced), each whole (16 wanted per chunk)
    assert first.sample["tile_ids"] == [*range(0, 8), *range(16, 32), *range(40, 48)]
    assert first.sample["n_tiles"] == 32 and first.sample["n_pixels"] == 32 * 64 * 64
    # the sampled tiles, fitted directly, give the same parameters
    direct = method().fit(cmu_tiles[first.sample["tile_ids"]])
    assert direct.params() == first.transform.params()
    capped = fit_store(open_patch_store(path), method(), max_pixels=50_000)
    assert capped.sample["n_pixels"] == 50_000 and capped.attrs() == fit_store(
        open_patch_store(path), method(), max_pixels=50_000).attrs()


@pytest.mark.parametrize("method", METHODS)
def test_too_little_tissue_fails_naming_the_slide(tmp_path: Path, method: type) -> None:
    glass = np.full((16, 32, 32, 3), 243, np.uint8)
    glass[:, :4, :4] = (150, 80, 160)  # a speck of stain: 256 tissue pixels
    store = open_patch_store(store_of(tmp_path / "glass_slide.zarr", glass))
    with pytest.raises(StainFitError, match=r"slide 'glass_slide' .*glass_slide\.zarr.*only 256 tissue pixels") as e:
        fit_store(store, method())
    assert "\n" not in str(e.value) and "--stain-norm" in str(e.value)


def test_one_colour_tissue_cannot_be_fitted() -> None:
    flat = np.tile(np.array([[150, 80, 160]], np.uint8), (10_000, 1))
    with pytest.raises(StainFitError, match="slide x: the two stain vectors"):
        Macenko().fit(flat, "slide x")
    with pytest.raises(StainFitError, match="slide x: the sampled tissue has .*one colour"):
        Reinhard().fit(flat, "slide x")


def test_registry_targets_and_encoder_id() -> None:
    assert create_stain_normalizer("none") is None
    mac = create_stain_normalizer("Macenko")
    assert isinstance(mac, Macenko) and mac.target()["stain_matrix"] == [list(r) for r in MACENKO_REFERENCE.stain_matrix]
    rein = create_stain_normalizer("reinhard")
    assert isinstance(rein, Reinhard) and rein.target()["mean"] == list(REINHARD_REFERENCE.mean)
    assert "CMU-1-Small-Region" in rein.target()["source"]
    with pytest.raises(ConfigError, match="--stain-norm 'vahadane': choose one of none, macenko, reinhard"):
        create_stain_normalizer("vahadane")
    assert stain_encoder_id("resnet50-timm-1f2e3d4c", "none") == "resnet50-timm-1f2e3d4c"
    assert stain_encoder_id("resnet50-timm-1f2e3d4c", "macenko") == "resnet50-timm-1f2e3d4c-macenko"
    assert stain_encoder_id("resnet50-timm-1f2e3d4c", "reinhard") == "resnet50-timm-1f2e3d4c-reinhard"
