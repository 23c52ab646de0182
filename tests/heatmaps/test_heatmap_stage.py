"""The heatmap stage over a real job folder: patch stores, feature files, a saved WELDON run and a
pyramidal TIFF slide; missing pieces fail one slide, not the batch; the CLI and resume work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_mil.cli import main
from wsi_mil.errors import ConfigError, StoreError
from wsi_mil.heatmaps.config import HeatmapConfig
from wsi_mil.heatmaps.render import OUTPUTS
from wsi_mil.heatmaps.stage import run_heatmap
from wsi_mil.heatmaps.table import read_scores_csv
from wsi_mil.jobdir import feature_file_path, patch_store_path
from wsi_mil.runrecord import read_run_record
from wsi_mil.stores.features import write_feature_file
from wsi_mil.stores.patches import write_patch_store

W0, H0, MPP = 4096, 3072, 0.5
TILE, SIZE0 = 64, 256.0  # 64 px tiles at 2 mpp = 256 level-0 px
ENCODER = "test-encoder"
D = 6


def write_slide(path: Path) -> None:
    """A small pyramidal JPEG TIFF (levels 1, 2, 4, 8): glass with one pink tissue blob.

    Reduced levels carry NewSubfileType 1 and resolution tags, so OpenSlide reads a pyramid and
    its mpp (see ../shared/NOTES.md).
    """
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for k, d in enumerate((1, 2, 4, 8)):
            h, w = H0 // d, W0 // d
            yy, xx = np.mgrid[0:h, 0:w] * d
            img = np.full((h, w, 3), 255, np.uint8)
            img[(xx - 2048) ** 2 / 1500**2 + (yy - 1536) ** 2 / 1100**2 < 1] = (205, 120, 185)
            res = 1e4 / (MPP * d)
            tif.write(img, tile=(256, 256), photometric="rgb", compression="jpeg", subfiletype=1 if k else 0,
                      resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)


def tile_grid() -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(H0 // 256), np.arange(W0 // 256), indexing="ij")
    coords = np.stack([xs.ravel() * 256, ys.ravel() * 256], 1).astype(np.int64)
    cx, cy = coords[:, 0] + 128, coords[:, 1] + 128
    return coords[(cx - 2048) ** 2 / 1500**2 + (cy - 1536) ** 2 / 1100**2 < 1]


def write_store(job: Path, slide_id: str, slide_path: Path, coords: np.ndarray) -> None:
    n = len(coords)
    tiles = np.zeros((n, TILE, TILE, 3), np.uint8)
    tiles[..., 0] = (np.arange(n) % 250)[:, None, None]
    mask = np.zeros((H0 // 64, W0 // 64), np.uint8)
    for x, y in coords:
        mask[y // 64:(y + 256) // 64, x // 64:(x + 256) // 64] = 1
    attrs = dict(slide_id=slide_id, slide_path=str(slide_path), mpp=MPP, mpp_source="metadata",
                 level0_width=W0, level0_height=H0, target_mpp=2.0, tile_size=TILE, stride=TILE,
                 tile_size_level0=SIZE0, stride_level0=SIZE0, tile_size_um=TILE * 2.0)
    write_patch_store(patch_store_path(job, slide_id), tiles, coords, np.ones(n, np.float32), mask, 64.0, attrs,
                      codec="zstd")


def lesion_signal(coords: np.ndarray) -> np.ndarray:
    """Feature 0: high in a 'lesion' on the right of the blob."""
    return np.where(coords[:, 0] > 2800, 3.0, -1.0) + 0.01 * np.arange(len(coords)) % 0.5


def write_features(job: Path, slide_id: str, coords: np.ndarray, encoder: str = ENCODER, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = rng.normal(scale=0.1, size=(len(coords), D)).astype(np.float32)
    f[:, 0] = lesion_signal(coords)
    write_feature_file(feature_file_path(job, encoder, slide_id), f, coords, {"encoder_id": encoder})
    return f


def write_run(run_dir: Path) -> None:
    """A WELDON run whose class-1 tile score is exactly feature 0."""
    from wsi_mil.mil.modelrun import rows_to_csv, save_model_run
    from wsi_mil.mil.registry import create_head

    opts = {"k_top": 3, "k_bottom": 3}
    head = create_head("weldon", D, 2, **opts)
    with torch.no_grad():
        head.scorer.weight.zero_()
        head.scorer.weight[0, 0] = 1.0
        head.scorer.bias.zero_()
    config = {"head": "weldon", "head_options": opts, "class_names": ["normal", "tumor"],
              "encoder_id": ENCODER, "embed_dim": D}
    preds = rows_to_csv([{"slide_id": "s1", "label": "tumor"}, {"slide_id": "s2", "label": "normal"},
                         {"slide_id": "s-nofeat", "label": "tumor"},
                         {"slide_id": "s-trainonly", "label": "normal"}],  # a training slide of another job
                        ["slide_id", "label"])
    save_model_run(run_dir, head, config, {"predictions.csv": preds})


@pytest.fixture(scope="module")
def job_and_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hm_stage")
    job = root / "job"
    slide = root / "slides" / "s1.tiff"
    slide.parent.mkdir(parents=True)
    write_slide(slide)
    coords = tile_grid()
    write_store(job, "s1", slide, coords)
    write_features(job, "s1", coords)
    write_store(job, "s2", root / "slides" / "moved-away.tiff", coords)  # slide file gone: no thumbnail
    write_features(job, "s2", coords)
    write_store(job, "s-empty", slide, np.zeros((0, 2), np.int64))  # no tissue
    write_features(job, "s-empty", np.zeros((0, 2), np.int64))
    write_store(job, "s-nofeat", slide, coords)  # features missing
    write_features(job, "s-nostore", coords)  # store missing
    write_store(job, "s-otherenc", slide, coords)
    write_features(job, "s-otherenc", coords, encoder="other")  # only another encoder's features
    write_store(job, "s-shifted", slide, coords)
    write_features(job, "s-shifted", coords + 1)  # features from another tiling
    run = root / "models" / "run1"
    write_run(run)
    return job, run, coords


@pytest.fixture(scope="module")
def rendered(job_and_run, tmp_path_factory):
    job, run, coords = job_and_run
    out = tmp_path_factory.mktemp("hm_out") / "heatmaps"
    report = run_heatmap(run, job, out, HeatmapConfig(overlay_width=800), workers=0, progress=False)
    return job, run, coords, out, report


def test_statuses_and_record(rendered):
    job, run, coords, out, report = rendered
    st = {s.slide_id: s for s in report.statuses}
    # the job's slides only: the run's training slide 's-trainonly' (not in this job) is not tried
    assert set(st) == {"s1", "s2", "s-empty", "s-nofeat", "s-nostore", "s-otherenc", "s-shifted"}
    assert st["s1"].status == "done" and st["s1"].n_tiles == len(coords) and st["s1"].reason == ""
    assert st["s2"].status == "done" and "thumbnail unavailable" in st["s2"].reason
    assert st["s-empty"].status == "done" and "no tissue" in st["s-empty"].reason
    assert st["s-nofeat"].status == "failed" and "no feature file" in st["s-nofeat"].reason
    assert st["s-nostore"].status == "failed" and "patch store not found" in st["s-nostore"].reason
    assert st["s-otherenc"].status == "failed" and "no feature file" in st["s-otherenc"].reason
    assert st["s-shifted"].status == "failed" and "coordinates differ" in st["s-shifted"].reason
    assert report.record_path == out / "status.csv"
    assert {r.slide_id: r.status for r in read_run_record(report.record_path)} == {k: v.status for k, v in st.items()}
    for sid in ("s-nofeat", "s-nostore", "s-otherenc", "s-shifted"):
        assert not (out / sid).exists()


def test_outputs_of_a_slide_match_the_model(rendered):
    job, run, coords, out, report = rendered
    folder = out / "s1"
    assert {p.name for p in folder.iterdir()} == set(OUTPUTS) | {"slide.json"}
    m = json.loads((folder / "slide.json").read_text())
    assert m["class_shown"] == "tumor" and m["label"] == "tumor" and m["n_tiles"] == len(coords)
    assert m["predicted"] == "tumor" and m["probability"] > 0.9  # top-3 mean 3 + bottom-3 mean -1 -> sigmoid(2)
    expected = lesion_signal(coords).astype(np.float32)
    sc = read_scores_csv(folder / "scores.csv")
    np.testing.assert_array_equal(sc["x"], coords[:, 0])
    np.testing.assert_allclose(sc["score_tumor"], expected, rtol=1e-5)
    np.testing.assert_allclose(sc["score_normal"], -expected, rtol=1e-5)
    assert (sc["selected_tumor"] == 1).sum() == 3 and (sc["selected_tumor"] == -1).sum() == 3
    assert expected[sc["selected_tumor"] == 1].min() >= np.sort(expected)[-3]
    doc = json.loads((folder / "tiles.geojson").read_text())
    assert len(doc["features"]) == len(coords)
    assert doc["features"][0]["properties"]["classification"]["name"].startswith("tumor")
    with Image.open(folder / "overlay.png") as im:
        assert im.size[0] == 800
        rgb = np.asarray(im.convert("RGB")).astype(int)
    # the thumbnail was read from the slide: the pink blob shows outside the score tiles' colours
    assert ((rgb[..., 0] > 180) & (rgb[..., 1] < 170) & (rgb[..., 2] > 160)).any()
    import tifffile

    with tifffile.TiffFile(folder / "overlay.ome.tif") as tif:
        base = tif.series[0].levels[0].asarray()
        d = SIZE0 / 4
        i = int(np.argmax(expected))
        x, y = coords[i] + 128
        assert base[int(y // d), int(x // d)] == pytest.approx(expected[i])
        assert base.shape == (int(np.ceil(H0 / d)), int(np.ceil(W0 / d)))


def test_cohort_page_lists_every_slide_with_reasons(rendered):
    job, run, coords, out, report = rendered
    html = (out / "index.html").read_text()
    for sid in ("s1", "s2", "s-empty", "s-nofeat", "s-nostore", "s-otherenc", "s-shifted"):
        assert f'data-slide="{sid}"' in html
    assert "no feature file" in html and "patch store not found" in html and "no tissue" in html
    assert 'src="s1/overlay.png"' in html
    assert "encoder test-encoder" in html
    assert "s-trainonly" not in html  # issue 14 item 9: a run's training slides are not drawn or reported


def test_resume_skips_complete_slides_and_overwrite_redraws(rendered):
    job, run, coords, out, report = rendered
    again = run_heatmap(run, job, out, HeatmapConfig(overlay_width=800), slides=["s1", "s2"], workers=0,
                         progress=False)
    assert [s.status for s in again.statuses] == ["skipped", "skipped"]
    # the record keeps the other slides' rows, and the page still lists every slide
    assert len(read_run_record(out / "status.csv")) == 7
    assert (out / "index.html").read_text().count("<tr class=") == 7
    other = run_heatmap(run, job, out, HeatmapConfig(overlay_width=600), slides=["s1"], workers=0, progress=False)
    assert other.statuses[0].status == "done"  # another config redraws
    with Image.open(out / "s1" / "overlay.png") as im:
        assert im.size[0] == 600
    cfg600 = HeatmapConfig(overlay_width=600)
    again = run_heatmap(run, job, out, cfg600, slides=["s1", "s2"], workers=0, progress=False)
    assert [s.status for s in again.statuses] == ["skipped", "done"]
    # s2 re-extracted (same tiles, new features): its heatmaps are stale and redrawn, s1's are kept
    write_features(job, "s2", coords, seed=99)
    again = run_heatmap(run, job, out, cfg600, slides=["s1", "s2"], workers=0, progress=False)
    assert [s.status for s in again.statuses] == ["skipped", "done"]


def test_unknown_class_and_missing_run_are_errors(job_and_run, tmp_path):
    job, run, _ = job_and_run
    with pytest.raises(ConfigError, match="choose one of normal, tumor"):
        run_heatmap(run, job, tmp_path / "o", HeatmapConfig(class_name="nope"), workers=0)
    with pytest.raises(StoreError, match="not a model run"):
        run_heatmap(tmp_path / "norun", job, tmp_path / "o", workers=0)
    with pytest.raises(ConfigError, match="colour map"):
        run_heatmap(run, job, tmp_path / "o", HeatmapConfig(cmap="nope"), workers=0)


def test_cli(job_and_run, tmp_path, capsys):
    job, run, coords = job_and_run
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\ns1,normal\n")
    out = tmp_path / "hm"
    code = main(["heatmap", str(run), str(job), "-o", str(out), "--slides", "s1,s-empty", "--class", "normal",
                 "--labels", str(labels), "--workers", "0", "--no-progress", "--pixels-per-tile", "2"])
    assert code == 0, capsys.readouterr()
    m = json.loads((out / "s1" / "slide.json").read_text())
    assert m["class_shown"] == "normal" and m["label"] == "normal" and m["overlay_tiff"]["pixels_per_tile"] == 2
    with open(out / "status.csv", newline="") as f:
        assert [r["slide_id"] for r in csv.DictReader(f)] == ["s-empty", "s1"]
    assert "cohort page" in capsys.readouterr().out
    code = main(["heatmap", str(run), str(job), "-o", str(tmp_path / "hm2"), "--slides", "s-nostore",
                 "--workers", "0", "--no-progress"])
    assert code == 1  # a failed slide
    code = main(["heatmap", str(run), str(job), "-o", str(tmp_path / "hm3"), "--class", "zzz", "--workers", "0"])
    assert code == 2 and "choose one of" in capsys.readouterr().err


def test_dask_workers(job_and_run, tmp_path):
    """One Dask task per slide on a local cluster: the task and its config travel to a worker process."""
    job, run, coords = job_and_run
    report = run_heatmap(run, job, tmp_path / "hm", HeatmapConfig(overlay_width=600), slides=["s1", "s-nostore"],
                          workers=1, progress=False)
    assert [(s.slide_id, s.status) for s in report.statuses] == [("s-nostore", "failed"), ("s1", "done")]
    sc = read_scores_csv(tmp_path / "hm" / "s1" / "scores.csv")
    np.testing.assert_allclose(sc["score_tumor"], lesion_signal(coords), rtol=1e-5)


def test_display_labels_csv(tmp_path):
    from wsi_mil.errors import LabelsError
    from wsi_mil.heatmaps.stage import read_display_labels

    p = tmp_path / "l.csv"
    p.write_text("slide_id,label,case_id\na,tumor,c1\nb,tumor,c2\n")
    assert read_display_labels(p) == {"a": "tumor", "b": "tumor"}  # one class is fine for display
    p.write_text("slide,label\na,1\n")
    with pytest.raises(LabelsError, match="needs the columns slide_id and label"):
        read_display_labels(p)
    p.write_text("slide_id,label\na,1\na,0\n")
    with pytest.raises(LabelsError, match="line 3: duplicate slide_id 'a'"):
        read_display_labels(p)
    p.write_text("slide_id,label\na,\n")
    with pytest.raises(LabelsError, match="line 2: empty"):
        read_display_labels(p)
    with pytest.raises(LabelsError, match="not found"):
        read_display_labels(tmp_path / "missing.csv")
