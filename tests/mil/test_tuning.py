"""Nested model selection in ``train`` (``tune: on``): the search of outer fold k never sees a
slide (or a case) of fold k, it is deterministic per seed, and metrics.json records it."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wsi_mil.mil import load_model_run, tuning
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.heads import LSEOptions
from wsi_mil.mil.stage import run_train
from wsi_mil.stores.features import read_feature_file, write_feature_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(folds=2, tune_trials=4, tune_folds=2, max_epochs=8, min_epochs=2, patience=3, bootstrap=0,
            tiles_per_bag=None, batch_size=8, device="cpu")


def _cohort(root: Path, n: int, signal: np.ndarray | None = None, n_test: int = 0, seed: int = 0) -> tuple[Path, Path]:
    """``n`` slides (8 tiles, 4-d, two slides per case); positives carry a lesion tile in dim 1, or,
    where ``signal`` is given, only the slides with ``signal[i]`` do (in dim 0, all tiles)."""
    rng = np.random.default_rng(seed)
    fd = root / "features"
    rows = []
    for i in range(n):
        y = i % 2 if (i // 2) % 2 == 0 else 1 - i % 2
        x = rng.standard_normal((8, 4)).astype(np.float32)
        if signal is None:
            x[0, 1] += 3.0 * y
        elif signal[i]:
            x[:, 0] += 2.0 * y
        write_feature_file(fd / f"s{i:03d}.h5", x, np.zeros((8, 2), np.int64), {"encoder_id": "e"})
        rows.append(f"s{i:03d},{y},c{i // 2:03d},{'test' if i >= n - n_test else 'train'}\n")
    labels = root / "labels.csv"
    labels.write_text("slide_id,label,case_id,split\n" + "".join(rows))
    return fd, labels


def _splits(run: Path) -> list[dict[str, str]]:
    with open(run / "splits.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_search_space_leaves_out_keys_set_in_the_config() -> None:
    space, fixed = tuning.search_space(TrainConfig(head="lse", head_options={"r": 2.0}, lr=0.01))
    assert set(space) == {"head_options.l2"} and set(fixed) == {"head_options.r", "lr"}
    assert set(tuning.search_space(TrainConfig(head="lse"))[0]) == set(LSEOptions.search_space)
    chosen = tuning.apply_settings(TrainConfig(head="lse"), {"head_options.r": 0.5, "lr": 0.002})
    assert chosen.head_options.r == 0.5 and chosen.lr == 0.002 and chosen.tune == "off"


def test_nested_cv_never_shows_an_outer_fold_to_its_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spy on every fit and prediction inside a search: all of them use slides of that search's
    pool, which holds no slide and no case of the outer fold being chosen for, nor the test split."""
    fd, labels = _cohort(tmp_path, 40, n_test=8)
    searches: list[dict[str, Any]] = []
    real_search, real_fit, real_predict = tuning.search_settings, tuning.fit, tuning.predict_probs

    def spy_search(bagset, targets, groups, pool, *args, **kw):
        searches.append({"pool": set(pool.tolist()), "used": set()})
        return real_search(bagset, targets, groups, pool, *args, **kw)

    def spy_fit(head, bags, targets, train_pos, val_pos, *args, **kw):
        searches[-1]["used"] |= set(train_pos.tolist()) | set(val_pos.tolist())
        return real_fit(head, bags, targets, train_pos, val_pos, *args, **kw)

    def spy_predict(head, bags, positions, *args, **kw):
        searches[-1]["used"] |= set(positions)
        return real_predict(head, bags, positions, *args, **kw)

    monkeypatch.setattr(tuning, "search_settings", spy_search)
    monkeypatch.setattr(tuning, "fit", spy_fit)
    monkeypatch.setattr(tuning, "predict_probs", spy_predict)
    run_train(fd, labels, tmp_path / "run", TrainConfig(head="logistic", **{**FAST, "folds": 3}, tune_final="refit"))

    rows = _splits(tmp_path / "run")  # table order = bag positions
    fold = [int(r["fold"]) if r["fold"] else -1 for r in rows]
    case = [r["case_id"] for r in rows]
    assert len(searches) == 4  # one per outer fold, then the final model's
    for k, s in enumerate(searches):
        assert s["used"] and s["used"] <= s["pool"]
        assert all(fold[i] >= 0 for i in s["used"])  # never a test-split slide
        if k < 3:
            held_cases = {case[i] for i in range(len(rows)) if fold[i] == k}
            assert not any(fold[i] == k for i in s["used"]), f"outer fold {k} seen by its own search"
            assert not {case[i] for i in s["used"]} & held_cases
            assert s["pool"] == {i for i in range(len(rows)) if fold[i] not in (k, -1)}
        else:
            assert s["pool"] == {i for i in range(len(rows)) if fold[i] >= 0}


def test_a_signal_only_in_the_outer_fold_is_not_exploited(tmp_path: Path) -> None:
    """Only outer fold 0's slides carry a (strong) signal. Fold 0's search sees fold 1 alone, which
    is noise: its inner score stays near chance. A search that leaked fold 0 in would score high,
    as fold 1's search does (its pool is fold 0)."""
    n = 64
    probe_fd, probe_labels = _cohort(tmp_path / "probe", n)
    cfg = TrainConfig(head="logistic", **{**FAST, "tune_trials": 3, "max_epochs": 40, "min_epochs": 5, "patience": 5},
                      lr=0.05, tune="off")  # lr fixed: the search chooses l2 only
    run_train(probe_fd, probe_labels, tmp_path / "probe" / "run", cfg.model_copy(update={"max_epochs": 1}))
    fold0 = np.array([r["fold"] == "0" for r in _splits(tmp_path / "probe" / "run")])  # the outer folds of the seed

    fd, labels = _cohort(tmp_path / "real", n, signal=fold0)
    s = run_train(fd, labels, tmp_path / "real" / "run", cfg.model_copy(update={"tune": "on"}))
    assert [r["fold"] == "0" for r in _splits(tmp_path / "real" / "run")] == fold0.tolist()
    inner = [f["tuning"]["inner_score"] for f in s.metrics["folds"]]
    assert inner[0] < 0.75 and inner[1] > 0.9, inner


def test_tuned_train_is_deterministic_and_recorded(tmp_path: Path) -> None:
    fd, labels = _cohort(tmp_path, 32, n_test=8)
    cfg = TrainConfig(head="lse", **FAST)
    a = run_train(fd, labels, tmp_path / "a", cfg)
    b = run_train(fd, labels, tmp_path / "b", cfg)
    assert [f["tuning"]["chosen"] for f in a.metrics["folds"]] == [f["tuning"]["chosen"] for f in b.metrics["folds"]]
    for name in ("predictions.csv", "model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for f in a.metrics["folds"]:
        t = f["tuning"]
        assert set(t["chosen"]) == set(LSEOptions.search_space) and 0 <= t["inner_score"] <= 1
        assert t["trials"] == 4 and t["inner_folds"] == 2
    # the default final model: the outer-fold models averaged, loaded and predicted as one
    assert a.metrics["tuning"]["final_model"] == "ensemble" and "test" in a.metrics
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    fm = config["final_model"]
    assert fm["kind"] == "fold_ensemble" and fm["members"] == 2 and config["train_config"]["tune"] == "on"
    assert [o["r"] for o in fm["member_head_options"]] == [f["tuning"]["chosen"]["head_options.r"] for f in a.metrics["folds"]]
    run = load_model_run(tmp_path / "a")
    rows = {r["slide_id"]: r for r in csv.DictReader(open(tmp_path / "a" / "predictions.csv", newline=""))}
    x = read_feature_file(fd / "s031.h5", "e", 4).features
    pred = run.predict_bag(x)
    assert rows["s031"]["split"] == "test" and pred.probs[1] == pytest.approx(float(rows["s031"]["prob_1"]), abs=1e-6)
    assert pred.tile_scores.shape == (8, 2) and pred.selected[:, 1].tolist().count(1) >= 1  # LSE marks its arg-max

    refit = run_train(fd, labels, tmp_path / "refit", cfg.model_copy(update={"tune_final": "refit"}))
    final = refit.metrics["tuning"]
    assert final["final_model"] == "refit" and "test_fold_ensemble" in refit.metrics
    config = json.loads((tmp_path / "refit" / "config.json").read_text())
    assert config["head_options"]["r"] == final["chosen"]["head_options.r"]  # the final model's own settings
    assert config["final_model"]["tuned_settings"] == final["chosen"]
    assert [f["tuning"]["chosen"] for f in refit.metrics["folds"]] == [f["tuning"]["chosen"] for f in a.metrics["folds"]]
    off = run_train(fd, labels, tmp_path / "off", cfg.model_copy(update={"tune": "off"}))
    assert "tuning" not in off.metrics and "tuning" not in off.metrics["folds"][0]


def test_fold_ensemble_averages_members_probabilities() -> None:
    import torch

    from wsi_mil.mil import create_head
    from wsi_mil.mil.heads import FoldEnsemble

    torch.manual_seed(0)
    members = [create_head("weldon", 3, 2, k_top=1, k_bottom=None), create_head("lse", 3, 2, r=2.0)]
    members[1].set_standardization(torch.ones(3), 2 * torch.ones(3))  # each member keeps its own
    ens = FoldEnsemble(members).eval()
    x = torch.full((2, 7, 3), 1e3)
    x[0, :5], x[1, :2] = torch.randn(5, 3), torch.randn(2, 3)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, :5], mask[1, :2] = True, True
    with torch.no_grad():
        logits, tiles = ens(x, mask)
        outs = [m.eval()(x, mask) for m in members]
    probs = sum(torch.softmax(lg, -1) for lg, _ in outs) / 2
    torch.testing.assert_close(torch.softmax(logits, -1), probs)
    torch.testing.assert_close(tiles, (outs[0][1] + outs[1][1]) / 2)
    marks = ens.select(tiles, mask)
    assert (marks[:, :, 1] == 1).sum(dim=1).tolist() == [1, 1] and marks[1, 2:].abs().sum() == 0


def _noisy_trials(seed: int, n_trials: int, better: float) -> tuple[Any, Any, list[Any]]:
    """A pool of 60 slides (a quarter positive), the defaults' pooled predictions and ``n_trials`` searched
    trials' predictions: each the same signal with fresh noise, the first ``better`` stronger on positives."""
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.25).astype(np.int64)
    signal = y + rng.standard_normal(60)

    def probs(score: Any) -> Any:
        p = 1 / (1 + np.exp(-score))
        return np.stack([1 - p, p], axis=1)

    trials = [probs(signal + rng.standard_normal(60) + (better * y if k == 0 else 0)) for k in range(n_trials)]
    return y, probs(signal + rng.standard_normal(60)), trials


def _gains(y: Any, given: Any, trials: list[Any]) -> list[float]:
    base = tuning.inner_score(y, given, ["0", "1"])
    return [tuning.inner_score(y, t, ["0", "1"]) - base for t in trials]


def test_the_selection_margin_grows_with_the_trials_so_noise_does_not_replace_the_defaults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten searched trials no better than the defaults (same signal, fresh noise): the best of them beats
    the defaults by more than one paired standard error most of the time, and the selection margin (the
    bootstrap of the best paired difference) lets it replace them only rarely; a trial that is really
    better still gets through; with one trial the margin is about one standard error."""
    y, given, trials = _noisy_trials(0, 1, 0.0)
    rng = np.random.default_rng(1)
    boot = []
    for _ in range(300):
        idx = rng.integers(0, len(y), len(y))
        boot.append(_gains(y[idx], given[idx], [trials[0][idx]])[0])
    se = float(np.std(boot, ddof=1))
    assert 0.75 * se < tuning._selection_margin(y, trials, given, ["0", "1"], "classification", 0) < 1.25 * se
    assert tuning._selection_margin(y, [], given, ["0", "1"], "classification", 0) == 0.0

    monkeypatch.setattr(tuning, "MARGIN_RESAMPLES", 150)
    seeds = range(16)
    one_se, margin, found = 0, 0, 0
    for seed in seeds:
        y, given, trials = _noisy_trials(seed, 10, 0.0)
        gains = _gains(y, given, trials)
        best = int(np.argmax(gains))
        one = tuning._selection_margin(y, [trials[best]], given, ["0", "1"], "classification", seed)
        one_se += max(gains) > one
        margin += max(gains) > tuning._selection_margin(y, trials, given, ["0", "1"], "classification", seed)
        y, given, trials = _noisy_trials(seed, 10, 2.0)
        gains = _gains(y, given, trials)
        found += int(np.argmax(gains)) == 0 and max(gains) > tuning._selection_margin(
            y, trials, given, ["0", "1"], "classification", seed)
    assert one_se >= 6 and margin <= 3 and found >= 12, (one_se, margin, found)



def test_the_settings_as_given_are_the_first_trial_and_are_replaced_only_by_a_better_score() -> None:
    """Trial 0 of every search is the defaults; a search keeps them unless a searched trial scores
    strictly higher on the same inner folds, and records which it did."""
    from wsi_mil.mil.bags import BagSet

    rng = np.random.default_rng(0)
    y = np.array([i % 2 for i in range(24)], dtype=np.int64)
    bags = [rng.standard_normal((6, 3)).astype(np.float32) + 1.5 * y[i] * (np.arange(6)[:, None] == 0) for i in range(24)]
    bagset = BagSet(bags)
    groups = np.array([f"c{i}" for i in range(24)])
    pool = np.arange(24, dtype=np.int64)
    base = TrainConfig(head="weldon", **{**FAST, "tune_folds": 3})
    only_given = tuning.search_settings(bagset, y, groups, pool, base.model_copy(update={"tune_trials": 1}), ["0", "1"], 0)
    defaults = {k: tuning._current_value(base, k) for k in tuning.search_space(base)[0]}
    assert only_given.kept_given and only_given.chosen == defaults and only_given.n_trials == 1
    assert only_given.record()["trials"] == 1 and only_given.trials[0]["given"]

    res = tuning.search_settings(bagset, y, groups, pool, base.model_copy(update={"tune_trials": 6}), ["0", "1"], 0)
    given_value = res.trials[0]["value"]
    assert res.trials[0]["params"] == defaults and given_value == only_given.inner_score  # same inner folds
    others = [t["value"] for t in res.trials[1:] if t["state"] == "complete"]
    assert res.n_trials == 6 and len(res.trials) == 6
    if res.kept_given:
        assert res.chosen == defaults and max(others) - given_value <= res.margin
    else:
        assert res.inner_score == max(others) > given_value + res.margin > given_value
