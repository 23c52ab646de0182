"""``wsi-mil train`` / ``predict`` end to end on synthetic feature bags, and the claim that
min-max heads beat mean pooling when lesions are small."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_mil.cli import main
from wsi_mil.errors import StoreError
from wsi_mil.mil import load_model_run
from wsi_mil.mil.bags import BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.metrics import classification_metrics, roc_auc
from wsi_mil.mil.stage import run_predict, run_train
from wsi_mil.mil.synthbags import make_synthetic_bags, write_synthetic_cohort
from wsi_mil.mil.training import build_head, fit, predict_probs
from wsi_mil.stores.features import write_feature_file

FAST = ["--set", "lr=0.01", "--set", "max_epochs=12", "--set", "min_epochs=3", "--set", "patience=4",
        "--set", "bootstrap=50", "--set", "tiles_per_bag=64", "--set", "batch_size=8", "--tune", "off"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: no oversubscription


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mil")
    co = make_synthetic_bags(n_slides=36, tiles=(40, 90), dim=16, lesion_fraction=(0.05, 0.12), shift=4.0, slides_per_case=2, seed=3)
    features, labels = write_synthetic_cohort(co, root / "features" / "enc-a", encoder_id="enc-a",
                                              labels_csv=root / "labels.csv")
    return root, features, labels, co


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_and_predict_cli(cohort, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, features, labels, co = cohort
    run = tmp_path / "run"
    assert main(["train", str(features), "--labels", str(labels), "--head", "weldon", "-o", str(run),
                 "--folds", "3", "--device", "cpu", "--seed", "1", "--quiet", *FAST,
                 "--set", "head_options.negative_weight=1.0"]) == 0
    assert "out-of-fold (36 slides) auc" in capsys.readouterr().out
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "history.json", "metrics.json",
                                                     "model.safetensors", "predictions.csv", "splits.csv"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["encoder_id"] == "enc-a" and cfg["embed_dim"] == 16 and cfg["head"] == "weldon"
    assert cfg["class_names"] == ["0", "1"] and cfg["train_config"]["seed"] == 1
    assert cfg["final_model"]["n_slides"] == 36 and cfg["final_model"]["epochs"] >= 1
    # the file format of the options: a plain mapping with every default filled in
    # (auto options as settled from the training bags: bags of ~30 tiles are not centred)
    assert cfg["head_options"] == cfg["train_config"]["head_options"] == {
        "bag_centring": "none", "feature_components": None, "tile_hidden": 64, "k_top": 0.5, "k_bottom": 0.5, "negative_weight": 1.0}
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["folds"]) == 3 and {"auc", "accuracy", "balanced_accuracy"} <= set(metrics["fold_summary"])
    assert metrics["fold_summary"]["auc"]["std"] is not None
    oof = metrics["out_of_fold"]
    assert oof["n_slides"] == 36 and len(oof["ci"]["auc"]) == 2
    splits = _read(run / "splits.csv")
    fold_of_case: dict[str, set[str]] = {}
    for r in splits:
        fold_of_case.setdefault(r["case_id"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in fold_of_case.values())  # no case in two folds
    preds = _read(run / "predictions.csv")
    assert len(preds) == 36 and {"prob_0", "prob_1", "fold"} <= set(preds[0])
    y = np.array([int(r["label"]) for r in preds])
    p = np.array([[float(r["prob_0"]), float(r["prob_1"])] for r in preds])
    assert classification_metrics(y, p, ["0", "1"])["auc"] == pytest.approx(oof["metrics"]["auc"])

    out = tmp_path / "pred" / "slides.csv"
    assert main(["predict", str(run), str(features), "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    rows = _read(out)
    assert [r["slide_id"] for r in rows] == co.slide_ids
    tiles = _read(out.parent / "slides.tiles" / f"{co.slide_ids[0]}.csv")
    assert list(tiles[0]) == ["tile_id", "x", "y", "score_0", "score_1", "selected_0", "selected_1"]
    assert len(tiles) == len(co.features[0]) and tiles[3]["x"] == str(3 * 224)
    # k_top auto = half of the bag on bags of instances and small slides (these hold ~30 tiles)
    assert sum(r["selected_1"] == "1" for r in tiles) == math.ceil(len(tiles) / 2)

    model = load_model_run(run)
    assert (model.encoder_id, model.embed_dim, model.class_names, model.head_name) == ("enc-a", 16, ["0", "1"], "weldon")
    pred = model.predict_bag(co.features[0])
    assert pred.probs.shape == (2,) and pred.probs.sum() == pytest.approx(1.0)
    assert pred.tile_scores.dtype == np.float32 and pred.tile_scores.shape == (len(co.features[0]), 2)
    assert pred.selected.dtype == np.int8 and set(np.unique(pred.selected)) <= {-1, 0, 1}
    assert float(rows[0]["prob_1"]) == pytest.approx(pred.probs[1], abs=1e-6)
    # in-place standardisation of a large bag gives the same prediction, and only touches the
    # input when allowed to
    bag = np.array(co.features[0], dtype=np.float32)
    kept = model.predict_bag(bag)
    np.testing.assert_array_equal(bag, np.asarray(co.features[0], dtype=np.float32))
    inplace = model.predict_bag(bag, overwrite_input=True)
    np.testing.assert_allclose(inplace.tile_scores, kept.tile_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inplace.probs, kept.probs, rtol=1e-6)
    np.testing.assert_array_equal(inplace.selected, kept.selected)


def test_test_split_and_reproducible_runs(cohort, tmp_path: Path) -> None:
    root, features, _, co = cohort
    labels = tmp_path / "labels.csv"
    lines = ["slide_id,label,case_id,split"] + [
        f"{s},{'pos' if y else 'neg'},{c},{'test' if i >= 28 else 'train'}"
        for i, (s, y, c) in enumerate(zip(co.slide_ids, co.labels, co.case_ids))]
    labels.write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(head="chowder", head_options={"n_members": 3, "r": 3}, folds=2, lr=0.01, max_epochs=6,
                      min_epochs=2, patience=3, bootstrap=20, tiles_per_bag=32, batch_size=8, device="cpu", tune="off")
    a = run_train(features, labels, tmp_path / "a", cfg)
    run_train(features, labels, tmp_path / "b", cfg)
    assert a.metrics["test"]["n_slides"] == 8 and a.metrics["class_names"] == ["neg", "pos"]
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    test_rows = [r for r in _read(tmp_path / "a" / "predictions.csv") if r["split"] == "test"]
    assert len(test_rows) == 8 and all(r["fold"] == "" for r in test_rows)
    with pytest.raises(StoreError, match="run folder exists"):
        run_train(features, labels, tmp_path / "a", cfg)


def test_other_encoder_or_dimension_is_refused(cohort, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, features, labels, co = cohort
    run = tmp_path / "run"
    cfg = TrainConfig(head="mean", folds=2, max_epochs=2, bootstrap=0, device="cpu", tune="off")
    run_train(features, labels, run, cfg)
    other = tmp_path / "enc-b"
    for sid, x in zip(co.slide_ids[:3], co.features[:3]):
        write_feature_file(other / f"{sid}.h5", x, np.zeros((len(x), 2), np.int64), {"encoder_id": "enc-b"})
    assert main(["predict", str(run), str(other), "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "encoder 'enc-b'" in err and "'enc-a' is expected" in err
    wide = tmp_path / "wide"
    write_feature_file(wide / "s.h5", np.zeros((4, 8), np.float32), np.zeros((4, 2), np.int64), {"encoder_id": "enc-a"})
    with pytest.raises(StoreError, match="dimension 8, but 16 is expected"):
        run_predict(run, wide, tmp_path / "q.csv", device="cpu")
    mixed = tmp_path / "mixed"
    for p in list(features.glob("*.h5"))[:5]:
        (mixed / p.name).parent.mkdir(exist_ok=True)
        (mixed / p.name).write_bytes(p.read_bytes())
    write_feature_file(mixed / "slide_999.h5", co.features[0], np.zeros((len(co.features[0]), 2), np.int64),
                       {"encoder_id": "enc-b"})
    mixed_labels = tmp_path / "mixed.csv"
    mixed_labels.write_text("slide_id,label\n" + "".join(f"{p.stem},{i % 2}\n" for i, p in enumerate(sorted(mixed.glob("*.h5")))))
    with pytest.raises(StoreError, match="slide_999.h5: features come from encoder 'enc-b'"):
        run_train(mixed, mixed_labels, tmp_path / "r2", cfg)


def test_label_problems_exit_2_with_one_line(cohort, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, features, _, co = cohort
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,label\n" + "".join(f"{s},{y}\n" for s, y in zip(co.slide_ids, co.labels)) + "ghost,1\n")
    assert main(["train", str(features), "--labels", str(bad), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "have no feature file: ghost" in err and "missing_features: drop" in err
    assert main(["train", str(features), "--labels", str(bad), "-o", str(tmp_path / "r"), "--folds", "30",
                 "--set", "missing_features=drop"]) == 2
    assert "fewer than the 30 folds" in capsys.readouterr().err
    assert main(["train", str(features), "--labels", str(bad), "-o", str(tmp_path / "r"),
                 "--set", "head_options.k=3", "--head", "weldon"]) == 2
    assert "unknown key 'k'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_multiclass_and_empty_bag(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats, labels = [], []
    for i in range(30):
        y = i % 3
        x = rng.standard_normal((60, 8)).astype(np.float32)
        if y:
            x[:3, (y - 1) * 4:(y - 1) * 4 + 4] += 4.0  # class 1 and 2: lesions in different dimensions
        feats.append(x)
        labels.append(["a", "b", "c"][y])
    fd = tmp_path / "f"
    for i, x in enumerate(feats):
        write_feature_file(fd / f"s{i:02d}.h5", x, np.zeros((60, 2), np.int64), {"encoder_id": "e"})
    write_feature_file(fd / "empty.h5", np.zeros((0, 8), np.float32), np.zeros((0, 2), np.int64), {"encoder_id": "e"})
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("slide_id,label\n" + "".join(f"s{i:02d},{y}\n" for i, y in enumerate(labels)) + "empty,a\n")
    cfg = TrainConfig(head="chowder", head_options={"n_members": 2}, folds=3, lr=0.01, max_epochs=25,
                      patience=25, bootstrap=20, device="cpu", batch_size=6, tune="off")
    s = run_train(fd, csv_path, tmp_path / "run", cfg)
    assert any("no tiles" in w and "empty" in w for w in s.warnings)
    oof = s.metrics["out_of_fold"]["metrics"]
    assert {"auc_a", "auc_b", "auc_c"} <= set(oof) and oof["auc"] > 0.8
    summary = run_predict(tmp_path / "run", fd, tmp_path / "p.csv", device="cpu")
    rows = {r["slide_id"]: r for r in _read(tmp_path / "p.csv")}
    assert rows["empty"]["prob_a"] == "" and rows["empty"]["n_tiles"] == "0"
    assert any("no tiles" in w for w in summary.warnings)
    pred = load_model_run(tmp_path / "run").predict_bag(np.zeros((0, 8), np.float32))
    assert np.isnan(pred.probs).all() and pred.tile_scores.shape == (0, 3)


def _tile_auc(head, co) -> float:
    head.eval()
    aucs = []
    with torch.no_grad():
        for x, lesion, y in zip(co.features, co.lesion, co.labels):
            if y == 1:
                _, tiles = head(torch.as_tensor(x)[None], torch.ones(1, len(x), dtype=torch.bool))
                aucs.append(roc_auc(tiles[0, :, 1].numpy(), lesion))
    return float(np.mean(aucs))


def test_min_max_heads_beat_mean_pooling_on_small_lesions() -> None:
    """Lesions are 1-5 % of a bag, slides vary (stain-like offsets): the bag mean drowns the signal."""
    train = make_synthetic_bags(n_slides=80, tiles=(100, 300), dim=32, seed=1)
    test = make_synthetic_bags(n_slides=60, tiles=(100, 300), dim=32, seed=2)
    bags = BagSet(train.features + test.features)
    y = np.concatenate([train.labels, test.labels])
    tr, te = np.arange(80), np.arange(80, 140)
    slide_auc, tile_auc = {}, {}
    for name in ("mean", "weldon", "chowder"):
        options = {"n_members": 5} if name == "chowder" else {}
        cfg = TrainConfig(head=name, head_options=options, lr=0.01, tiles_per_bag=128, batch_size=8, device="cpu")
        head = build_head(cfg, 32, 2, seed=0)
        fit(head, bags, y, tr, tr[:0], cfg, seed=0, n_epochs=30)
        head.orient_((f, m) for _, f, m in bags.whole_batches(tr.tolist(), 1 << 16))  # one buffer: stream
        probs = predict_probs(head, bags, te.tolist(), 1 << 16)
        slide_auc[name] = classification_metrics(y[te], probs, ["0", "1"])["auc"]
        tile_auc[name] = _tile_auc(head, test)
    assert slide_auc["weldon"] > slide_auc["mean"] + 0.15, slide_auc
    assert slide_auc["chowder"] > slide_auc["mean"] + 0.15, slide_auc
    assert tile_auc["weldon"] > 0.9 and tile_auc["chowder"] > 0.9, tile_auc


def test_evaluate_tiles_against_ground_truth(cohort, tmp_path: Path) -> None:
    from wsi_mil.evaluation.tiles import evaluate_tiles

    root, features, labels, co = cohort
    cfg = TrainConfig(head="max", folds=2, lr=0.01, max_epochs=2, min_epochs=1, bootstrap=0, device="cpu",
                      tiles_per_bag=None, batch_size=4, final_epochs=60, tune="off")
    # (2 CV epochs only: this test is about the final model that evaluate_tiles uses)
    run_train(features, labels, tmp_path / "run", cfg)
    lesion = dict(zip(co.slide_ids, co.lesion))

    def truth(slide_id: str, coords: np.ndarray) -> np.ndarray:
        return lesion[slide_id][coords[:, 0] // 224].astype(np.float32)

    ev = evaluate_tiles(load_model_run(tmp_path / "run"), features, truth)
    assert ev.n_slides == int(co.labels.sum()) and ev.n_tiles == sum(len(x) for x in co.features)
    assert ev.n_lesion_tiles == sum(int(m.sum()) for m in co.lesion)
    assert ev.tile_auc_mean > 0.9 and ev.tile_auc_pooled > 0.8
    flipped = evaluate_tiles(load_model_run(tmp_path / "run"), features, lambda s, c: 1.0 - truth(s, c))
    assert flipped.tile_auc_mean < 0.5  # the metric can fail
