"""``wsi-mil demo``: a tiny run end to end, and the localisation figures it prints checked by hand."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from wsi_mil.cli import main


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    import sys
    from contextlib import redirect_stdout
    from io import StringIO

    buf = StringIO()
    with redirect_stdout(buf):
        code = main(["demo", "-o", str(out), "--slides", "6", "--size", "2048", "--pretrain-epochs", "1",
                     "--folds", "2", "--workers", "0", "--no-progress"])
    text = buf.getvalue()
    sys.stdout.write(text)
    assert code == 0, text
    return out, text


def test_demo_prints_measured_figures(tiny_demo: tuple[Path, str]) -> None:
    out, text = tiny_demo
    assert re.search(r"slide AUC \(cross-validated, out-of-fold\): (n/a|\d\.\d{3})", text)
    assert re.search(r"tile AUC, lesion vs normal tiles, all slides: (n/a|\d\.\d{3}) \(\d+ lesion tiles", text)
    assert re.search(r"top-scored tile is a lesion tile: \d/3 ", text)
    assert (out / "cohort" / "labels.csv").is_file() and (out / "cohort" / "ground_truth").is_dir()
    assert (out / "job" / "heatmaps" / "demo" / "index.html").is_file()
    assert (out / "job" / "encoders" / "simclr-test_resnet" / "encoder.json").is_file()
    assert f"open {out / 'job' / 'heatmaps' / 'demo' / 'index.html'}" in text


def _rewrite_scores(tiles_dir: Path, cohort: Path, job: Path, sign: float) -> dict[str, float]:
    """Replace every tile score by sign x the tile's true lesion share (a perfect / inverted model).

    Returns the largest lesion share of a tile on each slide.
    """
    from wsi_mil.jobdir import patch_store_path
    from wsi_mil.stores.patches import open_patch_store
    from wsi_mil.synth import lesion_fraction, load_lesion_mask

    best = {}
    for path in tiles_dir.glob("*.csv"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            fields = list(rows[0].keys()) if rows else []
        if not rows:
            continue
        coords = np.array([[int(r["x"]), int(r["y"])] for r in rows])
        store = open_patch_store(patch_store_path(job, path.stem))
        mask, ds = load_lesion_mask(cohort, path.stem)
        frac = lesion_fraction(mask, ds, coords, float(store.attrs["tile_size_level0"]))
        best[path.stem] = float(frac.max())
        for r, v in zip(rows, frac):
            r["score_1"] = f"{sign * float(v):.6f}"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    return best


def test_localisation_figures_of_a_perfect_and_an_inverted_model(tiny_demo: tuple[Path, str], tmp_path: Path) -> None:
    import shutil

    from wsi_mil.evaluation.localisation import evaluate_localisation

    out, _ = tiny_demo
    job = out / "job"
    pred = tmp_path / "demo.csv"
    shutil.copy(job / "predictions" / "demo.csv", pred)
    shutil.copytree(job / "predictions" / "demo.tiles", tmp_path / "demo.tiles")
    best = _rewrite_scores(tmp_path / "demo.tiles", out / "cohort", job, +1.0)
    good = evaluate_localisation(out / "cohort", job, pred, job / "models" / "demo")
    assert good.n_positive == 3 and good.n_lesion_tiles > 0 and good.n_normal_tiles > 0
    assert good.tile_auc == pytest.approx(1.0) and good.top_tile_touch == 3
    assert good.top_tile_hits == sum(v >= 0.5 for v in best.values())
    _rewrite_scores(tmp_path / "demo.tiles", out / "cohort", job, -1.0)
    bad = evaluate_localisation(out / "cohort", job, pred, job / "models" / "demo")
    assert bad.tile_auc == pytest.approx(0.0) and bad.top_tile_hits == 0 and bad.top_tile_touch == 0


@pytest.mark.slow
def test_full_demo_as_make_demo_runs_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`make demo` = `wsi-mil demo -o demo_output` with the default sizes (a few minutes on 2 cores)."""
    code = main(["demo", "-o", str(tmp_path / "demo_output"), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    auc = re.search(r"slide AUC \(cross-validated, out-of-fold\): (\d\.\d{3})", text)
    tile = re.search(r"tile AUC, lesion vs normal tiles, all slides: (\d\.\d{3})", text)
    assert auc and tile, text
    # the demo must show the method working: lesions found better than chance
    assert float(tile.group(1)) > 0.6, text
