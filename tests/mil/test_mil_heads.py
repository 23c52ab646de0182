"""MIL heads: the min-max layer, WELDON and CHOWDER against hand-computed references, the
(features, mask) contract, padding invariance and where gradients flow."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.cli.train import train
from wsi_mil.config import config_to_dict
from wsi_mil.errors import ConfigError
from wsi_mil.mil import create_head, list_heads
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.heads import ChowderOptions, HeadOptions, WeldonOptions, heads_help, register_head, register_options
from wsi_mil.mil.heads._registry import _HEADS
from wsi_mil.mil.heads.baselines import MeanPool
from wsi_mil.mil.minmax import extreme_mean, extreme_values, minmax_pool, resolve_k, selection_marks


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids oversubscription on the shared 2-core machine."""
    before, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # exact comparisons, no ties from rounding
    yield
    torch.set_num_threads(before)
    torch.set_default_dtype(dtype)


def _s(values, n_pad: int = 0, fill: float = 1e6) -> tuple[torch.Tensor, torch.Tensor]:
    """One bag of scores (1, N+n_pad, 1) with padding ``fill`` and its mask."""
    v = torch.tensor(list(values) + [fill] * n_pad).view(1, -1, 1)
    mask = torch.zeros(1, v.shape[1], dtype=torch.bool)
    mask[0, : len(values)] = True
    return v, mask


# -- min-max layer ------------------------------------------------------------------------------

def test_minmax_hand_computed() -> None:
    s, m = _s([1.0, 5.0, 3.0, 2.0, 4.0], n_pad=3)
    assert extreme_mean(s, m, 2, largest=True).item() == pytest.approx(4.5)
    assert extreme_mean(s, m, 2, largest=False).item() == pytest.approx(1.5)
    assert minmax_pool(s, m, 2, 2).item() == pytest.approx(6.0)
    assert minmax_pool(s, m, 2, 2, negative_weight=0.5).item() == pytest.approx(5.25)
    assert minmax_pool(s, m, 2, None).item() == pytest.approx(4.5)
    # fraction: ceil(0.4 * 5) = 2 tiles; ceil(0.1 * 5) = 1
    assert minmax_pool(s, m, 0.4, 0.1).item() == pytest.approx(4.5 + 1.0)


def test_minmax_k_larger_than_bag_and_fewer_than_2k() -> None:
    s, m = _s([2.0, 6.0], n_pad=4, fill=-1e6)
    # k=3 > n=2: both tiles, in the top and the bottom mean
    assert extreme_mean(s, m, 3, largest=True).item() == pytest.approx(4.0)
    assert extreme_mean(s, m, 3, largest=False).item() == pytest.approx(4.0)
    s, m = _s([1.0, 2.0, 9.0])  # n=3 < 2k=4: tile 2.0 is in both
    assert minmax_pool(s, m, 2, 2).item() == pytest.approx(5.5 + 1.5)
    marks = selection_marks(s, m, 2, 2)[0, :, 0].tolist()
    assert marks == [-1, 1, 1]  # top wins for the shared tile


def test_resolve_k_rules() -> None:
    n = torch.tensor([0, 1, 10, 101])
    assert resolve_k(5, n).tolist() == [0, 1, 5, 5]
    assert resolve_k(0.1, n).tolist() == [0, 1, 1, 11]
    assert resolve_k(1.0, n).tolist() == [0, 1, 10, 101]
    assert resolve_k(3.0, n).tolist() == [0, 1, 3, 3]
    with pytest.raises(ValueError):
        resolve_k(2.5, n)
    with pytest.raises(ValueError):
        resolve_k(0, n)


def test_extreme_values_sorted_and_repeat_last_rank() -> None:
    s, m = _s([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0], n_pad=2)
    assert extreme_values(s, m, 3)[0, :, 0].tolist() == [9.0, 5.0, 4.0, 1.0, 1.5, 2.0]
    s, m = _s([3.0, 7.0], n_pad=5)  # fewer than R tiles: repeat the last available rank
    assert extreme_values(s, m, 3)[0, :, 0].tolist() == [7.0, 3.0, 3.0, 3.0, 7.0, 7.0]
    s, m = _s([], n_pad=4)
    assert extreme_values(s, m, 2).abs().sum().item() == 0.0


def test_minmax_empty_bag_is_zero_not_nan() -> None:
    s, m = _s([], n_pad=3)
    assert minmax_pool(s, m, 2, 2).item() == 0.0


# -- WELDON and CHOWDER against references ------------------------------------------------------

def _bag(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def test_weldon_matches_hand_reference() -> None:
    x = _bag(9, 4, 0)
    head = create_head("weldon", 4, 2, k_top=3, k_bottom=2, negative_weight=0.7).eval()
    w = np.array([0.5, -1.0, 2.0, 0.25])
    with torch.no_grad():
        head.scorer.weight.copy_(torch.tensor(w).view(1, 4))
        head.scorer.bias.fill_(0.1)
    s = x @ w + 0.1
    order = np.sort(s)
    z = order[-3:].mean() + 0.7 * order[:2].mean()
    with torch.no_grad():
        logits, tiles = head(torch.tensor(x)[None], torch.ones(1, 9, dtype=torch.bool))
    np.testing.assert_allclose(logits[0].numpy(), [0.0, z], rtol=1e-12)
    np.testing.assert_allclose(tiles[0].numpy(), np.stack([-s, s], 1), rtol=1e-12)
    sel = head.select(tiles, torch.ones(1, 9, dtype=torch.bool))[0, :, 1].numpy()
    assert set(np.flatnonzero(sel == 1)) == set(np.argsort(s)[-3:])
    assert set(np.flatnonzero(sel == -1)) == set(np.argsort(s)[:2])



def test_weldon_with_a_hidden_tile_scorer_matches_hand_reference() -> None:
    """``tile_hidden``: each tile is scored by ReLU(x W1 + b1) w2 + b2 (numpy), then the same min-max pooling."""
    torch.manual_seed(0)
    x = _bag(11, 4, 1)
    head = create_head("weldon", 4, 2, k_top=2, k_bottom=3, negative_weight=0.5, tile_hidden=5).eval()
    first, last = head.scorer[0], head.scorer[-1]
    w1, b1 = first.weight.detach().double().numpy(), first.bias.detach().double().numpy()
    w2, b2 = last.weight.detach().double().numpy()[0], float(last.bias.detach()[0])
    s = np.maximum(x @ w1.T + b1, 0.0) @ w2 + b2
    order = np.sort(s)
    z = order[-2:].mean() + 0.5 * order[:3].mean()
    with torch.no_grad():
        logits, tiles = head(torch.tensor(x, dtype=torch.float32)[None], torch.ones(1, 11, dtype=torch.bool))
    np.testing.assert_allclose(logits[0].numpy(), [0.0, z], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tiles[0, :, 1].numpy(), s, rtol=1e-5, atol=1e-6)
    assert head.tile_scorer_layer() is None  # the outlier start needs a linear scorer
    # a saved state dict of the hidden scorer loads into a head built from the same options, not a linear one
    again = create_head("weldon", 4, 2, k_top=2, k_bottom=3, negative_weight=0.5, tile_hidden=5)
    again.load_state_dict(head.state_dict())
    with pytest.raises(RuntimeError):
        create_head("weldon", 4, 2, k_top=2, k_bottom=3).load_state_dict(head.state_dict())

def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _chowder_reference(x: np.ndarray, head, member: int, out: int, r: int) -> float:
    """One CHOWDER member's output, written out by hand in numpy."""
    o = head.n_outputs
    w = head.embedding.weight.detach().numpy()[member * o + out]
    b = head.embedding.bias.detach().numpy()[member * o + out]
    s = x @ w + b
    desc = np.sort(s)[::-1]
    top = [desc[min(i, len(s) - 1)] for i in range(r)]
    asc = np.sort(s)
    bottom = [asc[min(i, len(s) - 1)] for i in range(r)]
    h = np.array(top + bottom)
    layers = list(zip(head.weights, head.biases))
    for i, (wl, bl) in enumerate(layers):
        h = h @ wl.detach().numpy()[member, out] + bl.detach().numpy()[member, out, 0]
        if i < len(layers) - 1:
            h = _sigmoid(h)
    return float(h[0])


@pytest.mark.parametrize("n_tiles", [12, 2])  # 2 < R: the repeat-last-rank rule
def test_chowder_matches_hand_reference_binary(n_tiles: int) -> None:
    torch.manual_seed(0)
    head = create_head("chowder", 5, 2, r=3, n_members=1, hidden=[4, 3]).eval()
    x = _bag(n_tiles, 5, 1)
    with torch.no_grad():
        logits, tiles = head(torch.tensor(x)[None], torch.ones(1, n_tiles, dtype=torch.bool))
    z = _chowder_reference(x, head, 0, 0, 3)
    np.testing.assert_allclose(logits[0].numpy(), [0.0, z], rtol=1e-10)
    s = x @ head.embedding.weight.detach().numpy()[0] + head.embedding.bias.detach().numpy()[0]
    np.testing.assert_allclose(tiles[0, :, 1].numpy(), s, rtol=1e-10)


def test_chowder_ensemble_averages_member_probabilities_multiclass() -> None:
    torch.manual_seed(1)
    head = create_head("chowder", 6, 3, r=2, n_members=3, hidden=[5, 4]).eval()
    x = _bag(10, 6, 2)
    with torch.no_grad():
        logits, tiles = head(torch.tensor(x)[None], torch.ones(1, 10, dtype=torch.bool))
    member = np.array([[_chowder_reference(x, head, e, c, 2) for c in range(3)] for e in range(3)])
    probs = np.exp(member) / np.exp(member).sum(1, keepdims=True)
    np.testing.assert_allclose(torch.softmax(logits, -1)[0].numpy(), probs.mean(0), rtol=1e-10)
    w = head.embedding.weight.detach().numpy().reshape(3, 3, 6)
    b = head.embedding.bias.detach().numpy().reshape(3, 3)
    np.testing.assert_allclose(tiles[0].numpy(), (np.einsum("nd,eod->neo", x, w) + b).mean(1), rtol=1e-10)
    # independently initialised members
    assert not torch.allclose(head.weights[0][0], head.weights[0][1])


def _lse_reference(s: np.ndarray, r: float) -> float:
    """(1/r) log(mean exp(r s)) written out in numpy (max-shifted)."""
    m = s.max()
    return float(m + np.log(np.mean(np.exp(r * (s - m)))) / r)


def test_lse_matches_hand_reference_on_padded_batch() -> None:
    torch.manual_seed(0)
    head = create_head("lse", 4, 2, r=3.0).eval()
    bags = [_bag(n, 4, i) for i, n in enumerate((9, 1, 4))]
    feats = torch.full((3, 12, 4), 1e4)  # huge padding: would dominate a max or an unmasked LSE
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for i, b in enumerate(bags):
        feats[i, : len(b)] = torch.tensor(b)
        mask[i, : len(b)] = True
    w = head.scorer.weight.detach().numpy()[0]
    b0 = float(head.scorer.bias.detach()[0])
    with torch.no_grad():
        logits, tiles = head(feats, mask)
    for i, x in enumerate(bags):
        s = x @ w + b0
        assert logits[i, 1].item() == pytest.approx(_lse_reference(s, 3.0), rel=1e-12)
        np.testing.assert_allclose(tiles[i, : len(x), 1].numpy(), s, rtol=1e-12)  # heatmap scores: tile logits
        sel = head.select(tiles, mask)[i, :, 1].numpy()
        assert np.flatnonzero(sel == 1).tolist() == [int(np.argmax(s))] and not (sel == -1).any()
    empty = head(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))[0]
    assert torch.isfinite(empty).all() and empty.abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lse_limits_mean_and_max(dtype: torch.dtype) -> None:
    from wsi_mil.mil.heads.lse import lse_pool

    s = torch.tensor([[[1.0], [-2.0], [4.0], [0.5], [100.0]]], dtype=dtype)  # last one is padding
    mask = torch.tensor([[True, True, True, True, False]])
    assert lse_pool(s, mask, 1e-4).item() == pytest.approx(0.875, abs=1e-3)  # mean of the real tiles
    assert lse_pool(s, mask, 1e4).item() == pytest.approx(4.0, abs=1e-3)  # their max, no overflow
    for r in (0.1, 1.0, 10.0):  # always between the two, increasing with r
        assert 0.875 < lse_pool(s, mask, r).item() < 4.0
    assert lse_pool(s, mask, 0.5).item() < lse_pool(s, mask, 2.0).item()


def test_lse_learnable_temperature_is_positive_and_trained() -> None:
    head = create_head("lse", 3, 2, r=2.5, learn_r=True)
    assert head.temperature().item() == pytest.approx(2.5)
    x, m = torch.randn(2, 6, 3), torch.ones(2, 6, dtype=torch.bool)
    head.member_logits(x, m)[:, 0, 1].sum().backward()
    assert head.rho.grad is not None and head.rho.grad.abs().item() > 0
    with torch.no_grad():
        head.rho.fill_(-50.0)
    assert head.temperature().item() > 0
    assert "rho" in create_head("lse", 3, 2).state_dict()  # fixed r: a buffer, not trained


def test_logistic_is_linear_on_the_mean_feature() -> None:
    torch.manual_seed(0)
    head = create_head("logistic", 4, 2, l2=0.1).eval()
    x = _bag(7, 4, 5)
    with torch.no_grad():
        logits, tiles = head(torch.tensor(x)[None], torch.ones(1, 7, dtype=torch.bool))
    w, b = head.linear.weight.detach().numpy()[0], float(head.linear.bias.detach()[0])
    assert logits[0, 1].item() == pytest.approx(x.mean(0) @ w + b, rel=1e-12)
    np.testing.assert_allclose(tiles[0, :, 1].numpy(), x @ w + b, rtol=1e-12)  # their mean is the logit
    assert head.regularization().item() == pytest.approx(0.1 * (w ** 2).sum())
    assert head.select(tiles, torch.ones(1, 7, dtype=torch.bool)).abs().sum() == 0


def test_chowder_orientation_is_exact_and_makes_slope_positive() -> None:
    torch.manual_seed(3)
    head = create_head("chowder", 6, 2, r=2, n_members=4, hidden=[5, 4]).eval()
    x = torch.tensor(_bag(15, 6, 4))[None]
    m = torch.ones(1, 15, dtype=torch.bool)
    logits0, tiles0 = head(x, m)
    flip = torch.tensor([[True], [False], [True], [False]])
    s0 = head.embedding(x).reshape(1, 15, 4, 1)
    head.flip_(flip)
    logits1, _ = head(x, m)
    s1 = head.embedding(x).reshape(1, 15, 4, 1)
    torch.testing.assert_close(logits1, logits0)  # same predictions
    sign = torch.where(flip, -1.0, 1.0).view(1, 1, 4, 1)
    torch.testing.assert_close(s1, s0 * sign)
    head.orient_([(x, m)])
    assert (head.output_slope([(x, m)]) >= 0).all()
    torch.testing.assert_close(head(x, m)[0], logits0)


# -- contract: every head ------------------------------------------------------------------------

HEAD_KW = {"weldon": {"k_top": 3, "k_bottom": 2}, "chowder": {"r": 3, "n_members": 3, "hidden": [8, 4]},
           "mean": {"hidden": 8}, "max": {}, "attention": {"hidden": 8, "attention_dim": 4},
           "lse": {"r": 2.0, "learn_r": True}, "logistic": {}}


def test_registry_lists_every_head_and_rejects_unknown() -> None:
    assert set(list_heads()) == set(HEAD_KW)
    with pytest.raises(ConfigError, match="unknown MIL head 'nope'"):
        create_head("nope", 4, 2)
    with pytest.raises(ConfigError, match="unknown key 'kk'"):
        create_head("weldon", 4, 2, kk=3)
    with pytest.raises(ConfigError, match="'r'"):
        create_head("chowder", 4, 2, r=0)


def test_typed_options_are_validated_once_and_used_as_they_are() -> None:
    cfg = TrainConfig(head="weldon", head_options={"k_top": 3, "negative_weight": 1.0})
    assert isinstance(cfg.head_options, WeldonOptions) and cfg.head_options.k_bottom == "auto"
    head = create_head(cfg.head, 4, 2, cfg.head_options)
    assert head.opts is cfg.head_options  # no dict round trip, no second validation
    # the JSON form (config.json, study.yaml) stays a plain mapping with the defaults filled in
    assert config_to_dict(cfg)["head_options"] == {"bag_centring": "auto", "feature_components": "auto",
                                                   "tile_hidden": "auto", "k_top": 3, "k_bottom": "auto",
                                                   "negative_weight": 1.0}
    assert TrainConfig.model_validate(config_to_dict(cfg)) == cfg
    assert isinstance(TrainConfig().head_options, ChowderOptions)  # the default head's defaults
    assert TrainConfig(head="mean").head_options.model_dump() == create_head("max", 4, 2).opts.model_dump()  # same keys
    with pytest.raises(ConfigError, match="expected WeldonOptions, got ChowderOptions"):
        create_head("weldon", 4, 2, ChowderOptions())
    with pytest.raises(TypeError, match="not both"):
        create_head("weldon", 4, 2, {"k_top": 3}, k_bottom=2)
    with pytest.raises(ConfigError, match="unknown key 'r'"):
        TrainConfig(head="weldon", head_options={"r": 3})
    pool = TrainConfig(head="mean", head_options={"hidden": 4})
    pool.head = "max"  # assignment: the options are re-read as the new head's (one model for both)
    assert pool.head_options.hidden == 4
    with pytest.raises(ConfigError, match="head_options of 'chowder'.*unknown key 'k_top'"):
        cfg.head = "chowder"


def test_names_come_from_the_registry_only() -> None:
    """CLI help, the config field's description, the unknown-head error and docs/train.md all
    name every registered head."""
    names = list_heads()
    assert heads_help() == ", ".join(names)
    cli_help = typing.get_type_hints(train, include_extras=True)["head"].__metadata__[0].help
    assert ", ".join(names) in cli_help
    assert TrainConfig.model_fields["head"].description.endswith(", ".join(names))
    with pytest.raises(ConfigError) as err:
        TrainConfig(head="nope")
    assert str(err.value).endswith(", ".join(names))
    docs = (Path(__file__).resolve().parents[2] / "docs" / "train.md").read_text(encoding="utf-8")
    table = docs[docs.index("Heads (`head_options`):"):]
    rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines()[4:] if line.startswith("| `")]
    assert rows == names


def test_registering_a_head() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_options("weldon", "again")(HeadOptions)
    with pytest.raises(ValueError, match="no registered options"):
        register_head("unregistered")(MeanPool)
    with pytest.raises(ValueError, match="already implemented by MaxPool"):
        register_head("max")(MeanPool)
    try:
        @register_options("mean2", "a test head")
        class Mean2Options(HeadOptions):
            hidden: int | None = None
            dropout: float = 0.0

        @register_head("mean2")
        class Mean2(MeanPool):
            pass

        assert "mean2" in list_heads()
        assert type(create_head("mean2", 4, 2, hidden=3)) is Mean2
    finally:
        _HEADS.pop("mean2", None)


def test_config_does_not_load_torch() -> None:
    code = ("import sys; import wsi_mil.mil.config as c; from wsi_mil.mil.heads import list_heads; "
            "c.TrainConfig(head='weldon', head_options={'k_top': 2}); "
            "assert 'torch' not in sys.modules, 'torch loaded'; print(','.join(list_heads()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ",".join(list_heads())


@pytest.mark.parametrize("name", sorted(HEAD_KW))
@pytest.mark.parametrize("n_classes", [2, 3])
def test_padding_never_changes_the_result(name: str, n_classes: int) -> None:
    torch.manual_seed(0)
    head = create_head(name, 6, n_classes, **HEAD_KW[name]).eval()
    bags = [torch.randn(n, 6) for n in (7, 2, 13)]
    alone = [head(b[None], torch.ones(1, len(b), dtype=torch.bool)) for b in bags]
    width = 20
    feats = torch.full((3, width, 6), 1e3)  # garbage in the padding
    mask = torch.zeros(3, width, dtype=torch.bool)
    for i, b in enumerate(bags):
        feats[i, : len(b)] = b
        mask[i, : len(b)] = True
    logits, tiles = head(feats, mask)
    marks = head.select(tiles, mask)
    for i, (b, (lg, tl)) in enumerate(zip(bags, alone)):
        torch.testing.assert_close(logits[i], lg[0])
        torch.testing.assert_close(tiles[i, : len(b)], tl[0])
        assert tiles[i, len(b):].abs().sum() == 0
        assert marks[i, len(b):].abs().sum() == 0
        torch.testing.assert_close(marks[i, : len(b)], head.select(tl, torch.ones(1, len(b), dtype=torch.bool))[0])
    assert logits.shape == (3, n_classes) and tiles.shape == (3, width, n_classes)
    assert head.member_logits(feats, mask).shape[::2] == (3, n_classes)


@pytest.mark.parametrize(("name", "n_selected"), [("weldon", 5), ("chowder", 6), ("max", 1)])
def test_gradients_reach_only_selected_tiles(name: str, n_selected: int) -> None:
    """One model (a CHOWDER ensemble's gradient reaches the union of its members' selections)."""
    torch.manual_seed(0)
    kw = {**HEAD_KW[name], "n_members": 1} if name == "chowder" else HEAD_KW[name]
    head = create_head(name, 6, 2, **kw).eval()
    x = torch.randn(1, 12, 6, requires_grad=True)
    pad = torch.zeros(1, 4, 6, requires_grad=True)
    feats = torch.cat([x, pad], dim=1)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, :12] = True
    logits, tiles = head(feats, mask)
    logits[:, 1].sum().backward()
    touched = set(torch.nonzero(x.grad[0].abs().sum(-1) > 0).flatten().tolist())
    selected = set(torch.nonzero(head.select(tiles, mask)[0, :, 1] != 0).flatten().tolist())
    assert touched == selected and len(selected) == n_selected
    assert pad.grad.abs().sum() == 0


def test_contract_shape_errors() -> None:
    head = create_head("weldon", 4, 2)
    with pytest.raises(ValueError, match="features must be"):
        head(torch.zeros(2, 3, 5), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        head(torch.zeros(2, 3, 4), torch.ones(2, 3))


@pytest.mark.parametrize("name", sorted(HEAD_KW))
def test_standardization_equals_scoring_standardized_features(name: str) -> None:
    torch.manual_seed(0)
    head = create_head(name, 6, 2, **HEAD_KW[name]).eval()
    x = torch.randn(2, 9, 6) * 5 + 3
    x[..., 4] = 7.0  # constant in training: gets weight 0
    mask = torch.ones(2, 9, dtype=torch.bool)
    mean, std = x.reshape(-1, 6).mean(0), x.reshape(-1, 6).std(0, unbiased=False)
    z = (x - mean) / std.clamp(min=1e-6)
    z[..., 4] = 0.0
    ref = head(z, mask)
    head.set_standardization(mean, std)
    out = head(x, mask)
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1])
    assert head.feature_scale[4] == 0 and "feature_shift" in head.state_dict()


@pytest.mark.parametrize(("name", "options", "layer"), [
    ("weldon", {}, "scorer"), ("weldon", {"tile_hidden": 4}, None), ("chowder", {}, "embedding"),
    ("chowder", {"tile_hidden": 4}, None), ("mean", {}, "scorer"), ("max", {"hidden": 4}, None),
    ("lse", {}, "scorer"), ("attention", {}, None), ("logistic", {}, None)])
def test_tile_scorer_layer_is_the_linear_scorer_the_outlier_start_writes(name: str, options: dict,
                                                                         layer: str | None) -> None:
    """Heads whose tiles are scored by one linear layer expose it (the outlier warm start writes into
    it); a hidden tile scorer, attention and the mean-feature logistic regression expose none."""
    head = create_head(name, 8, 2, **options)
    got = head.tile_scorer_layer()
    assert (got is None) if layer is None else (got is getattr(head, layer))


@pytest.mark.parametrize(("name", "options"), [
    ("weldon", {"tile_hidden": 6, "k_top": 2, "k_bottom": 2}), ("chowder", {"tile_hidden": 6, "r": 2, "n_members": 2}),
    ("mean", {"hidden": 6}), ("max", {"hidden": 6})])
def test_hidden_tile_layers_on_packed_real_tiles_give_the_padded_results(name: str, options: dict,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch mostly of padding runs a hidden tile scorer on its real tiles only (``score_tiles``): the same
    slide logits, real-tile scores and gradients as scoring the padded batch, and 0 on the padding."""
    from wsi_mil.mil.heads import base

    torch.manual_seed(1)
    head = create_head(name, 5, 2, **options).eval()
    lengths = torch.tensor([30, 3, 5, 2])  # 40 real of 120 positions: packed once forced
    mask = torch.arange(30)[None] < lengths[:, None]
    x = torch.randn(4, 30, 5)

    def run(pack: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        monkeypatch.setattr(base, "PACK_MIN_VALUES", 0)
        monkeypatch.setattr(base, "PACK_REAL_SHARE", 0.5 if pack else -1.0)
        head.zero_grad()
        slide, tiles = head(x, mask)
        head.member_logits(x, mask).sum().backward()
        raw_tiles = head.member_outputs(x, mask)[1]
        return slide, tiles, [p.grad.clone() for p in head.parameters() if p.grad is not None] + [raw_tiles]

    packed, padded = run(True), run(False)
    torch.testing.assert_close(packed[0], padded[0])
    torch.testing.assert_close(packed[1], padded[1])
    for a, b in zip(packed[2][:-1], padded[2][:-1], strict=True):
        torch.testing.assert_close(a, b)
    packed_tiles, padded_tiles = packed[2][-1], padded[2][-1]
    torch.testing.assert_close(packed_tiles[mask], padded_tiles[mask])
    if name != "mean":  # mean's last layer runs after the packed hidden one: its padding holds the bias
        assert torch.all(packed_tiles[~mask] == 0) and not torch.all(padded_tiles[~mask] == 0)
