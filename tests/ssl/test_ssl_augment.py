"""Batched SimCLR augmentations: shapes, ranges, determinism, and each op against a reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mil.ssl.augment import (
    SimCLRAugment,
    color_jitter,
    crop_flip_rotate,
    gaussian_blur,
    hed_jitter,
    to_float_images,
)
from wsi_mil.ssl.config import AugmentConfig
from wsi_mil.ssl.data import generator

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OFF = dict(hed_p=0.0, color_p=0.0, grayscale_p=0.0, blur_p=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiles(n: int = 6, s: int = 32, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8))


def test_shapes_dtype_range_and_normalisation() -> None:
    aug = SimCLRAugment(AugmentConfig(grayscale_p=0.3), 24, MEAN, STD)
    x = tiles()
    v = aug.views01(x, generator(1))
    assert v.shape == (6, 3, 24, 24) and v.dtype == torch.float32
    assert torch.isfinite(v).all() and v.min() >= 0 and v.max() <= 1
    n = aug(x, generator(1))
    torch.testing.assert_close(n, (v - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    assert x.dtype == torch.uint8  # input untouched


def test_deterministic_given_seed_and_views_differ() -> None:
    aug = SimCLRAugment(AugmentConfig(), 32, MEAN, STD)
    x = tiles()
    a = aug(x, generator(7))
    b = aug(x, generator(7))
    assert torch.equal(a, b)
    g = generator(7)
    v1, v2 = aug(x, g), aug(x, g)
    assert not torch.allclose(v1, v2)
    assert not torch.allclose(aug(x, generator(8)), a)


def test_channels_first_float_input_gives_same_views() -> None:
    aug = SimCLRAugment(AugmentConfig(), 20, MEAN, STD)
    x = tiles()
    xf = x.permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(aug(x, generator(3)), aug(xf, generator(3)))
    with pytest.raises(ValueError):
        to_float_images(torch.zeros(2, 8, 8, 3))


def test_full_crop_without_flips_is_identity() -> None:
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, rot90=False, **OFF)
    x = tiles()
    v = SimCLRAugment(cfg, 32, MEAN, STD).views01(x, generator(0))
    torch.testing.assert_close(v, to_float_images(x), atol=1e-5, rtol=0)


def test_flips_and_rotations_are_exact_dihedral_poses() -> None:
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True, rot90=True, **OFF)
    x = to_float_images(tiles(n=32))
    out = crop_flip_rotate(x, 32, cfg, generator(5))
    seen = set()
    for i in range(32):
        poses = [torch.rot90(x[i], k, dims=(1, 2)) for k in range(4)]
        poses += [torch.rot90(torch.flip(x[i], dims=(2,)), k, dims=(1, 2)) for k in range(4)]
        match = [j for j, p in enumerate(poses) if torch.allclose(out[i], p, atol=1e-5)]
        assert match, f"view {i} is not a flip/rotation of its tile"
        seen.add(match[0])
    assert len(seen) >= 5  # many of the 8 poses are drawn


def test_crop_is_a_zoom_of_the_tile() -> None:
    """A smooth gradient image: a crop keeps values inside the tile's range and zooms in."""
    cfg = AugmentConfig(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), flip=False, rot90=False, **OFF)
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(4, 3, 64, 64).contiguous()
    out = crop_flip_rotate(ramp, 64, cfg, generator(2))
    # half the tile's width (32 of 64 px) spread over 64 output pixels: the ramp rises by ~0.5
    span = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    torch.testing.assert_close(span, torch.full((4,), 0.5), atol=0.01, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_hed_jitter_of_zero_is_identity() -> None:
    x = to_float_images(tiles(n=4))
    one, zero = torch.ones(4, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
    torch.testing.assert_close(hed_jitter(x, one, zero), x, atol=2e-5, rtol=0)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, rot90=False,
                        color_p=0.0, blur_p=0.0, hed_p=1.0, hed_alpha=0.0, hed_beta=0.0)
    v = SimCLRAugment(cfg, 32, MEAN, STD).views01(tiles(n=4), generator(0))
    torch.testing.assert_close(v, x, atol=2e-5, rtol=0)


def test_hed_jitter_matches_skimage() -> None:
    from skimage.color import hed2rgb, rgb2hed

    # skimage floors stain amounts at 0, so compare on stained pixels (positive H, E, DAB amounts)
    rng = np.random.default_rng(0)
    img = hed2rgb(rng.uniform(0.005, 0.08, (16, 16, 3)))
    assert (rgb2hed(img) > 0).all()
    alpha = np.array([1.04, 0.97, 1.02])
    beta = np.array([0.01, -0.008, 0.003])
    ref = np.clip(hed2rgb(rgb2hed(img) * alpha + beta), 0, 1)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ours = hed_jitter(x, torch.tensor(alpha)[None], torch.tensor(beta)[None]).clamp(0, 1)[0].permute(1, 2, 0)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4)


def test_color_jitter_matches_torchvision_ops() -> None:
    import torchvision.transforms.v2.functional as TF

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g) * 0.3 + 0.35  # no clipping for small factors
    one = torch.ones(3, dtype=torch.float64)
    f = torch.tensor([0.9, 1.0, 1.1], dtype=torch.float64)
    torch.testing.assert_close(color_jitter(x, f, one, one, 0 * one),
                               torch.stack([TF.adjust_brightness(x[i], float(f[i])) for i in range(3)]))
    torch.testing.assert_close(color_jitter(x, one, f, one, 0 * one),
                               torch.stack([TF.adjust_contrast(x[i], float(f[i])) for i in range(3)]), atol=1e-5, rtol=0)
    torch.testing.assert_close(color_jitter(x, one, one, f, 0 * one),
                               torch.stack([TF.adjust_saturation(x[i], float(f[i])) for i in range(3)]), atol=1e-5, rtol=0)
    # hue: a full turn is the identity, any shift keeps gray pixels gray and keeps luma
    torch.testing.assert_close(color_jitter(x, one, one, one, one), x, atol=1e-5, rtol=0)
    gray = torch.full((1, 3, 4, 4), 0.5)
    torch.testing.assert_close(color_jitter(gray, one[:1], one[:1], one[:1], 0.3 * one[:1]), gray, atol=1e-6, rtol=0)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    shifted = color_jitter(x, one, one, one, 0.2 * one)
    torch.testing.assert_close((shifted * luma).sum(1), (x * luma).sum(1), atol=1e-5, rtol=0)
    assert not torch.allclose(shifted, x, atol=1e-3)


def test_gaussian_blur_matches_torchvision_and_sigma_zero_is_identity() -> None:
    import torchvision.transforms.v2.functional as TF

    x = to_float_images(tiles(n=3, s=24))
    sigma = torch.tensor([0.0, 0.8, 1.7], dtype=torch.float64)
    out = gaussian_blur(x, sigma, 2.0)
    torch.testing.assert_close(out[0], x[0], atol=1e-6, rtol=0)
    for i in (1, 2):
        ref = TF.gaussian_blur(x[i], kernel_size=[13, 13], sigma=[float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
    assert out[2].std() < out[1].std() < x[1].std() + 1e-6


def test_ops_can_be_switched_off() -> None:
    geo = dict(crop_scale=(0.5, 1.0))
    x = tiles()
    base = SimCLRAugment(AugmentConfig(**geo, **OFF), 24, MEAN, STD).views01(x, generator(4))
    ref = crop_flip_rotate(to_float_images(x), 24, AugmentConfig(**geo, **OFF), generator(4))
    torch.testing.assert_close(base, ref)
    jittered = SimCLRAugment(AugmentConfig(**geo), 24, MEAN, STD).views01(x, generator(4))
    assert not torch.allclose(base, jittered)


def test_bad_config_is_rejected() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AugmentConfig(crop_scale=(0.5, 0.2))
    with pytest.raises(ValidationError):
        AugmentConfig(blur_sigma=(0.0, 1.0))
    with pytest.raises(ValidationError):
        AugmentConfig(unknown_op=1)
