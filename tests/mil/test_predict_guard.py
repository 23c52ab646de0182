"""``predict`` records a slide whose feature file cannot be read as failed and predicts the rest."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.cli import main
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.stage import predict_status_path, run_predict, run_train
from wsi_mil.runrecord import DONE, FAILED, read_run_record
from wsi_mil.stores.features import write_feature_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cohort(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    fd = root / "features"
    rows = []
    for i in range(12):
        y = i % 2
        x = rng.normal(size=(30, 4)).astype(np.float32)
        x[:3, 0] += 4.0 * y
        write_feature_file(fd / f"s{i:02d}.h5", x, np.zeros((30, 2), np.int64), {"encoder_id": "e"})
        rows.append(f"s{i:02d},{y}\n")
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(rows))
    return fd, labels


def test_unreadable_feature_file_fails_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fd, labels = _cohort(tmp_path)
    cfg = TrainConfig(head="mean", folds=2, max_epochs=3, min_epochs=1, patience=1, bootstrap=0, device="cpu", tune="off")
    run_train(fd, labels, tmp_path / "run", cfg)
    other = tmp_path / "other"
    shutil.copytree(fd, other)
    (other / "s03.h5").write_bytes(b"not an HDF5 file at all")
    out = tmp_path / "pred.csv"
    summary = run_predict(tmp_path / "run", other, out, device="cpu")
    assert [st.slide_id for st in summary.failed] == ["s03"]
    assert "s03.h5" in summary.failed[0].reason and "\n" not in summary.failed[0].reason
    with open(out, newline="") as f:
        ids = [r["slide_id"] for r in csv.DictReader(f)]
    assert ids == [f"s{i:02d}" for i in range(12) if i != 3]
    record = {r.slide_id: r.status for r in read_run_record(predict_status_path(out))}
    assert record["s03"] == FAILED and sum(v == DONE for v in record.values()) == 11
    assert not (out.parent / "pred.tiles" / "s03.csv").exists()
    # the command line exits 0 and names the failed slide
    assert main(["predict", str(tmp_path / "run"), str(other), "-o", str(tmp_path / "p2.csv"), "--quiet"]) == 0
    assert "failed: s03" in capsys.readouterr().out
