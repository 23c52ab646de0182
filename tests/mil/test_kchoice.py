"""WELDON's ``k: auto`` on slides, chosen from the warm start (:mod:`wsi_mil.mil.kchoice`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.mil import create_head, load_model_run
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.kchoice import K_CANDIDATES, choose_k, pooled_scores
from wsi_mil.mil.stage import run_train
from wsi_mil.mil.synthbags import make_synthetic_bags, write_synthetic_cohort
from wsi_mil.mil.training import settle_bag_defaults

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference_pool(scores: np.ndarray, k_top: int | float, k_bottom: int | float | None, weight: float) -> float:
    """WELDON's slide score by hand: mean of the k highest + weight x mean of the k lowest (a share: ceil(k n))."""
    n = len(scores)

    def k_of(k: int | float) -> int:
        return min(n, max(1, int(np.ceil(k * n))) if isinstance(k, float) else int(k))

    s = np.sort(scores)
    out = s[-k_of(k_top):].mean()
    return float(out + (weight * s[:k_of(k_bottom)].mean() if k_bottom is not None else 0.0))


@pytest.mark.parametrize(("k_top", "k_bottom"), [(1, 1), (3, None), (0.02, 0.05), (10, 2), (700, 1)])
def test_pooled_scores_match_a_hand_written_reference(k_top: int | float, k_bottom: int | float | None) -> None:
    rng = np.random.default_rng(0)
    bags = [rng.standard_normal(n) for n in (1, 7, 250, 613)]
    got = pooled_scores([torch.as_tensor(b) for b in bags], k_top, k_bottom, 0.5)
    want = [_reference_pool(b, k_top, k_bottom, 0.5) for b in bags]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def _bags(n_lesion: int, shift: float, seed: int) -> tuple[list[torch.Tensor], np.ndarray]:
    """40 bags of 500 standard-normal tile scores; positives hold ``n_lesion`` tiles raised by ``shift``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(40) % 2
    bags = []
    for y in labels:
        s = rng.standard_normal(500)
        if y:
            s[:n_lesion] += shift
        bags.append(torch.as_tensor(s))
    return bags, labels


def test_choose_k_is_small_for_one_strong_tile_and_large_for_a_weak_wide_lesion() -> None:
    k_top, k_bottom, aucs = choose_k(*_bags(1, 6.0, 0), None, None, 0.5, bottom_auto=True)
    assert k_top == k_bottom and k_top in (1, 2, 3) and set(aucs) == {str(k) for k in K_CANDIDATES}, aucs
    k_top, k_bottom, aucs = choose_k(*_bags(25, 1.0, 0), None, None, 0.5, bottom_auto=True)
    assert k_top == k_bottom and k_top in (0.02, 0.05), aucs  # 25 of 500 = 5 %
    # a side given stays; the other is chosen; nothing to choose: one candidate read
    k_top, k_bottom, _ = choose_k(*_bags(1, 6.0, 0), 10, None, 0.5, bottom_auto=False)
    assert (k_top, k_bottom) == (10, None)
    k_top, k_bottom, _ = choose_k(*_bags(1, 6.0, 0), None, 10, 0.5, bottom_auto=False)
    assert k_top in (1, 2, 3) and k_bottom == 10


def test_weldon_k_auto_is_left_to_the_start_on_slides_only() -> None:
    """On slides (median >= 200 tiles) with a warm start and a linear scorer, ``auto`` stays for the fit to choose;
    the random start, a hidden tile scorer and survival settle 10 as before."""
    rng = np.random.default_rng(0)
    bags = BagSet([rng.standard_normal((n, 8)).astype(np.float32) for n in (250, 300, 320)])
    pos = np.arange(3)
    settled = settle_bag_defaults(TrainConfig(head="weldon"), bags, pos).head_options
    assert (settled.k_top, settled.k_bottom, settled.top_k) == ("auto", "auto", 10)
    for cfg in (TrainConfig(head="weldon", tile_init="random"), TrainConfig(head="weldon", task="survival"),
                TrainConfig(head="weldon", head_options={"tile_hidden": 8})):
        opts = settle_bag_defaults(cfg, bags, pos).head_options
        assert (opts.k_top, opts.k_bottom) == (10, 10), cfg


def test_settle_from_start_sets_only_the_auto_sides_and_keeps_them_searchable() -> None:
    bags, labels = _bags(1, 6.0, 1)
    x = [torch.stack([b, torch.zeros_like(b)], dim=1).float() for b in bags]  # tile score = feature 0
    head = create_head("weldon", 2, 2, {"k_bottom": 5, "tile_hidden": None})
    head.init_tile_scorer(torch.tensor([1.0, 0.0]), 0.0)
    settled = head.settle_from_start(x, labels)
    assert settled["k_top"] in (1, 2, 3) and "k_bottom" not in settled
    assert (head.opts.k_top, head.opts.k_bottom) == (settled["k_top"], 5)
    assert head.opts.model_fields_set == {"k_bottom", "tile_hidden"}
    assert head.settle_from_start(x, labels) == {}  # settled once: nothing left to choose
    no_bottom = create_head("weldon", 2, 2, {"negative_weight": 0.0, "tile_hidden": None})
    no_bottom.init_tile_scorer(torch.tensor([1.0, 0.0]), 0.0)
    no_bottom.settle_from_start(x, labels)
    assert no_bottom.opts.k_top == no_bottom.opts.k_bottom == 1  # the max alone: one lesion tile, no bottom noise


def test_train_records_the_chosen_k_and_the_saved_model_pools_with_it(tmp_path: Path) -> None:
    co = make_synthetic_bags(n_slides=32, tiles=(220, 300), dim=12, lesion_fraction=(0.004, 0.008), shift=4.0,
                             seed=5)
    features, labels = write_synthetic_cohort(co, tmp_path / "features" / "enc", encoder_id="enc",
                                              labels_csv=tmp_path / "labels.csv")
    cfg = TrainConfig(head="weldon", folds=2, max_epochs=4, min_epochs=2, patience=2, bootstrap=0, batch_size=8,
                      device="cpu", tune="off")
    summary = run_train(features, labels, tmp_path / "run", cfg)
    for fold in summary.metrics["folds"]:
        chosen = fold["settled_from_start"]
        assert chosen["k_top"] == chosen["k_bottom"] and chosen["k_top"] in K_CANDIDATES, chosen
        assert set(chosen["training_auc_per_k"]) == {str(k) for k in K_CANDIDATES}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    final = config["final_model"]["settled_from_start"]
    assert config["head_options"]["k_top"] == final["k_top"] and config["head_options"]["k_bottom"] == final["k_bottom"]
    model = load_model_run(tmp_path / "run")
    assert model.head.opts.top_k == final["k_top"]
