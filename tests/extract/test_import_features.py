"""``wsi-mil import-features``: TRIDENT / CLAM / STAMP files in, our contract out, provenance kept;
train's refusal of foreign files points there."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from wsi_mil.cli import main
from wsi_mil.errors import StoreError
from wsi_mil.extract.importer import import_features, read_peer_file
from wsi_mil.stores.features import read_feature_attrs, read_feature_file

RNG = np.random.default_rng(0)


def _trident(path: Path, n: int = 7, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """As TRIDENT's save_h5 writes it: features + coords, attributes on both datasets."""
    feats = RNG.normal(size=(n, d)).astype(np.float32)
    coords = (np.arange(2 * n).reshape(n, 2) * 512).astype(np.int64)
    with h5py.File(path, "w") as f:
        f["features"] = feats
        f["coords"] = coords
        f["features"].attrs.update({"name": path.stem, "savetodir": "/x", "encoder": "uni_v1"})
        f["coords"].attrs.update({"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                                  "target_magnification": 20, "overlap": 0, "level0_width": 9000, "level0_height": 7000})
    return feats, coords


def _clam(path: Path, n: int = 5, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    feats = RNG.normal(size=(n, d)).astype(np.float32)
    coords = np.stack([np.arange(n) * 256, np.arange(n) * 128], 1).astype(np.int32)
    with h5py.File(path, "w") as f:
        f["features"] = feats
        f["coords"] = coords
    return feats, coords


def _stamp(path: Path, n: int = 6, d: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """As STAMP writes it: feats (float16) and coords in micrometres."""
    feats = RNG.normal(size=(n, d)).astype(np.float16)
    coords_um = np.stack([np.arange(n) * 256.0, np.arange(n) * 512.0], 1).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["coords"] = coords_um
        f["feats"] = feats
        f.attrs.update({"stamp_version": "2.3.0", "extractor": "virchow2", "unit": "um", "tile_size_um": 256.0,
                        "tile_size_px": 224, "code_hash": "abc", "feat_type": "tile"})
    return feats, coords_um


def test_trident_and_clam_files_become_ours(tmp_path: Path) -> None:
    src = tmp_path / "trident_out" / "features_uni_v1"
    src.mkdir(parents=True)
    feats, coords = _trident(src / "slide-a.h5")
    cfeats, ccoords = _clam(src / "slide-b.h5")
    out = tmp_path / "job" / "features" / "uni_trident"
    report = import_features(src, out)
    assert [s.status for s in report.statuses] == ["done", "done"] and report.encoder_id == "uni_trident"
    assert report.record_path == tmp_path / "job" / "status" / "import-uni_trident.csv" and report.record_path.is_file()
    a = read_feature_file(out / "slide-a.h5", encoder_id="uni_trident", embed_dim=16)
    np.testing.assert_array_equal(a.features, feats)
    np.testing.assert_array_equal(a.coords, coords)
    assert a.attrs["source_format"] == "trident" and a.attrs["imported_from"] == str((src / "slide-a.h5").resolve())
    assert a.attrs["source_encoder"] == "uni_v1" and a.attrs["tile_size_level0"] == 512.0
    assert a.attrs["source_attrs"]["coords"]["level0_magnification"] == 40
    assert a.attrs["source_hash"].startswith("sha256") and a.attrs["level0_width"] == 9000
    b = read_feature_file(out / "slide-b.h5")
    assert b.attrs["source_format"] == "clam" and b.coords.dtype == np.int64
    np.testing.assert_array_equal(b.coords, ccoords)
    # resumable: the same sources are skipped, a changed one is redone
    assert [s.status for s in import_features(src, out).statuses] == ["skipped", "skipped"]
    _clam(src / "slide-b.h5")
    assert [s.status for s in import_features(src, out).statuses] == ["skipped", "done"]


def test_stamp_micrometres_become_level0_pixels(tmp_path: Path) -> None:
    src = tmp_path / "stamp"
    src.mkdir()
    feats, coords_um = _stamp(src / "s1.h5")
    with pytest.raises(StoreError, match="micrometres; give the slide's level-0 µm per pixel with --mpp"):
        read_peer_file(src / "s1.h5")
    out = tmp_path / "features" / "virchow2_stamp"
    assert main(["import-features", str(src), "-o", str(out), "--format", "stamp", "--mpp", "0.25"]) == 0
    f = read_feature_file(out / "s1.h5", dtype=None)
    assert f.features.dtype == np.float16
    np.testing.assert_array_equal(f.features, feats)
    np.testing.assert_array_equal(f.coords, (coords_um / 0.25).astype(np.int64))
    assert f.attrs["tile_size_level0"] == 1024.0 and f.attrs["mpp"] == 0.25 and f.attrs["source_encoder"] == "virchow2"
    assert f.attrs["source_coords_unit"] == "um"
    # per-slide mpp from a table
    table = tmp_path / "mpp.csv"
    table.write_text("slide_id,mpp\ns1,0.5\n")
    assert main(["import-features", str(src), "-o", str(out), "--mpp-table", str(table), "--overwrite"]) == 0
    assert read_feature_attrs(out / "s1.h5")["mpp"] == 0.5


def test_unknown_layouts_and_bad_options_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with h5py.File(src / "odd.h5", "w") as f:
        f["embeddings"] = np.zeros((3, 4))
        f["xy"] = np.zeros((3, 2))
    with pytest.raises(StoreError, match=r"odd.h5: not a TRIDENT, CLAM or STAMP feature file: datasets embeddings, xy"):
        read_peer_file(src / "odd.h5")
    _clam(src / "c.h5")
    with pytest.raises(StoreError, match="not a STAMP feature file: datasets coords, features"):
        read_peer_file(src / "c.h5", "stamp")
    # one bad file fails alone; the command exits 1 and names it
    assert main(["import-features", str(src), "-o", str(tmp_path / "features" / "x")]) == 1
    assert "failed odd: " in capsys.readouterr().out
    assert main(["import-features", str(src), "-o", str(tmp_path / "features" / "x"), "--encoder-id", "y"]) == 2
    assert "must be named after the encoder id ('y')" in capsys.readouterr().err


def test_train_points_foreign_files_to_import_features(tmp_path: Path) -> None:
    _trident(tmp_path / "t.h5")
    _stamp(tmp_path / "s.h5")
    with pytest.raises(StoreError, match=r"t.h5: not a wsi_mil feature file .* looks like a TRIDENT/CLAM feature "
                                         r"file: convert its folder once with 'wsi-mil import-features"):
        read_feature_file(tmp_path / "t.h5")
    with pytest.raises(StoreError, match="looks like a STAMP feature file"):
        read_feature_attrs(tmp_path / "s.h5")


def test_wsi_mil_train_on_a_trident_folder_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "features_uni_v1"
    folder.mkdir()
    for i in range(4):
        _trident(folder / f"s{i}.h5")
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(4)))
    assert main(["train", str(folder), "-l", str(labels), "-o", str(tmp_path / "run"), "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert "not a wsi_mil feature file" in err and "wsi-mil import-features" in err
