"""The one lesion-tile rule of ``wsi_mil.evaluation`` and the tile evaluators built on it."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import wsi_mil
from wsi_mil.evaluation.lesion import LESION_TILE_FRACTION, label_tiles
from wsi_mil.evaluation.tiles import SlideTileScores, evaluate_tile_scores, evaluate_tiles
from wsi_mil.stores.features import write_feature_file
from wsi_mil.synth import lesion_fraction

PACKAGE = Path(wsi_mil.__file__).resolve().parent


def test_rule_at_and_around_the_threshold() -> None:
    assert LESION_TILE_FRACTION == 0.5
    frac = np.array([0.0, 1e-6, 0.4999, 0.5, 0.75, 1.0])
    labelled, lesion = label_tiles(frac)
    assert labelled.tolist() == [True, False, False, True, True, True]  # in between: ambiguous
    assert lesion.tolist() == [False, False, False, True, True, True]  # "at least half" is lesion


def test_rule_on_a_hand_built_mask() -> None:
    # mask at downsample 10: 4 x 4 px = 40 x 40 level-0 px; lesion in the top-left 2 x 2 mask px
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    coords = np.array([[0, 0], [10, 0], [15, 0], [20, 20], [5, 5]], np.int64)
    frac = lesion_fraction(mask, 10.0, coords, 20.0)  # tiles of 20 level-0 px
    np.testing.assert_allclose(frac, [1.0, 0.5, 0.25, 0.0, 0.5625], atol=1e-6)
    labelled, lesion = label_tiles(frac)
    assert labelled.tolist() == [True, True, False, True, True]
    assert lesion.tolist() == [True, True, False, False, True]


def test_tile_partly_outside_the_mask_counts_the_outside_as_no_lesion() -> None:
    mask = np.ones((4, 4), bool)  # all lesion, 40 x 40 level-0 px
    coords = np.array([[20, 30], [30, 30], [50, 50]], np.int64)
    frac = lesion_fraction(mask, 10.0, coords, 20.0)
    np.testing.assert_allclose(frac, [0.5, 0.25, 0.0], atol=1e-6)  # share of the whole tile
    labelled, lesion = label_tiles(frac)
    assert labelled.tolist() == [True, False, True] and lesion.tolist() == [True, False, False]


def test_zero_lesion_gives_no_auc_and_no_lesion_tiles() -> None:
    rng = np.random.default_rng(0)
    frac = lesion_fraction(np.zeros((8, 8), bool), 4.0, rng.integers(0, 32, (20, 2)), 8.0)
    assert not frac.any()
    ev = evaluate_tile_scores([SlideTileScores(rng.random(20), frac, False)])
    assert ev.tile_auc_mean is None and ev.tile_auc_pooled is None and ev.n_slides == 0
    assert (ev.n_lesion_tiles, ev.n_normal_tiles, ev.n_tiles, ev.n_positive) == (0, 20, 20, 0)


def _slides(seed: int) -> list[SlideTileScores]:
    rng = np.random.default_rng(seed)
    out = []
    for n, positive in ((60, True), (45, True), (50, False)):
        frac = np.zeros(n)
        if positive:
            frac[rng.choice(n, n // 3, replace=False)] = rng.choice([0.1, 0.3, 0.5, 0.8, 1.0], n // 3)
        scores = frac + rng.normal(0, 0.4, n)
        scores[:5] = np.round(scores[:5], 1)  # a few ties
        out.append(SlideTileScores(scores, frac, positive))
    return out


def test_tile_evaluator_agrees_with_sklearn() -> None:
    slides = _slides(1)
    ev = evaluate_tile_scores(slides)
    per_slide, ys, ss = [], [], []
    for s in slides:
        keep = (s.fraction >= 0.5) | (s.fraction == 0)
        y, x = s.fraction[keep] >= 0.5, s.scores[keep]
        ys.append(y)
        ss.append(x)
        if 0 < y.sum() < y.size:
            per_slide.append(roc_auc_score(y, x))
    assert ev.n_slides == 2 and ev.tile_auc_mean == pytest.approx(np.mean(per_slide), abs=1e-12)
    assert ev.tile_auc_pooled == pytest.approx(roc_auc_score(np.concatenate(ys), np.concatenate(ss)), abs=1e-12)
    assert ev.n_lesion_tiles == int(np.concatenate(ys).sum())
    assert ev.n_normal_tiles == int((~np.concatenate(ys)).sum()) and ev.n_tiles == 155
    assert ev.n_positive == 2
    tops = [int(np.argmax(s.scores)) for s in slides if s.positive]
    assert ev.top_tile_hits == sum(s.fraction[t] >= 0.5 for s, t in zip(slides, tops))
    assert ev.top_tile_touch == sum(s.fraction[t] > 0 for s, t in zip(slides, tops))
    inverted = evaluate_tile_scores(SlideTileScores(-s.scores, s.fraction, s.positive) for s in slides)
    assert inverted.tile_auc_pooled == pytest.approx(1 - ev.tile_auc_pooled, abs=1e-12)  # the metric can fail


def test_evaluate_tiles_of_a_run_over_feature_files(tmp_path: Path) -> None:
    slides = _slides(2)
    ids = [f"s{i}" for i in range(len(slides))]
    for sid, s in zip(ids, slides):
        x = np.stack([s.scores, np.zeros_like(s.scores)], axis=1).astype(np.float32)  # feature 0 = score
        coords = np.stack([np.arange(len(x)) * 224, np.zeros(len(x))], axis=1).astype(np.int64)
        write_feature_file(tmp_path / f"{sid}.h5", x, coords, {"encoder_id": "fake", "slide_id": sid})
    write_feature_file(tmp_path / "empty.h5", np.zeros((0, 2), np.float32), np.zeros((0, 2), np.int64),
                       {"encoder_id": "fake", "slide_id": "empty"})
    run = SimpleNamespace(encoder_id="fake", embed_dim=2, predict_bag=lambda f: SimpleNamespace(
        tile_scores=np.stack([-f[:, 0], f[:, 0]], axis=1)))
    fractions = dict(zip(ids, (s.fraction for s in slides)))
    ev = evaluate_tiles(run, tmp_path, lambda sid, coords: fractions[sid][coords[:, 0] // 224])  # type: ignore[arg-type]
    expected = evaluate_tile_scores([SlideTileScores(s.scores.astype(np.float32), s.fraction, s.positive)
                                     for s in slides])
    assert ev == expected and ev.tile_auc_pooled is not None
    assert evaluate_tiles(run, tmp_path, lambda sid, c: fractions[sid][c[:, 0] // 224], positive_class=0  # type: ignore[arg-type]
                          ).tile_auc_pooled == pytest.approx(1 - ev.tile_auc_pooled)


@pytest.mark.parametrize("package", ["mil", "ssl"])
def test_mil_and_ssl_import_neither_synth_nor_evaluation(package: str) -> None:
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if n.startswith(("wsi_mil.synth", "wsi_mil.evaluation"))]
    assert not bad, bad
