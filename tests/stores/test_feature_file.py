"""Feature files: round trip, CLAM/TRIDENT-compatible layout, refusal of other encoders."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from wsi_mil.errors import StoreError
from wsi_mil.stores.features import (
    is_complete_feature_file,
    list_feature_files,
    read_feature_attrs,
    read_feature_file,
    write_feature_file,
)


def _write(path: Path, n: int = 6, d: int = 4, dtype=np.float16) -> np.ndarray:
    feats = np.arange(n * d, dtype=np.float32).reshape(n, d).astype(dtype)
    write_feature_file(path, feats, np.arange(2 * n).reshape(n, 2),
                       dict(encoder_id="enc-a", data_config={"mean": [0.5, 0.5, 0.5]}))
    return feats


def test_round_trip_and_plain_h5py_layout(tmp_path: Path) -> None:
    feats = _write(tmp_path / "s1.h5")
    f = read_feature_file(tmp_path / "s1.h5")
    assert f.slide_id == "s1" and f.encoder_id == "enc-a" and f.embed_dim == 4 and f.n_tiles == 6
    assert f.features.dtype == np.float32
    np.testing.assert_array_equal(f.features, feats.astype(np.float32))
    assert f.attrs["data_config"] == {"mean": [0.5, 0.5, 0.5]}
    with h5py.File(tmp_path / "s1.h5", "r") as h:  # what CLAM / TRIDENT / torchmil loaders read
        assert h["features"].shape == (6, 4) and h["coords"].dtype == np.int64
    assert read_feature_file(tmp_path / "s1.h5", dtype=None).features.dtype == np.float16


def test_other_encoder_or_dimension_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "s1.h5")
    with pytest.raises(StoreError, match=r"s1.h5: features come from encoder 'enc-a', but 'enc-b'"):
        read_feature_file(tmp_path / "s1.h5", encoder_id="enc-b")
    with pytest.raises(StoreError, match=r"dimension 4, but 8"):
        read_feature_file(tmp_path / "s1.h5", embed_dim=8)


def test_incomplete_foreign_and_missing(tmp_path: Path) -> None:
    _write(tmp_path / "s1.h5")
    with h5py.File(tmp_path / "s1.h5", "a") as h:
        h.attrs["complete"] = False
    assert not is_complete_feature_file(tmp_path / "s1.h5")
    with h5py.File(tmp_path / "clam.h5", "w") as h:
        h["features"] = np.zeros((2, 3))
        h["coords"] = np.zeros((2, 2))
    with pytest.raises(StoreError, match=r"clam.h5: not a wsi_mil feature file"):
        read_feature_attrs(tmp_path / "clam.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match=r"junk.h5: not a readable HDF5"):
        read_feature_attrs(tmp_path / "junk.h5")
    with pytest.raises(StoreError, match="feature file not found"):
        read_feature_attrs(tmp_path / "none.h5")
    with pytest.raises(StoreError, match="features folder not found"):
        list_feature_files(tmp_path / "nowhere")
    assert [p.name for p in list_feature_files(tmp_path)] == ["clam.h5", "junk.h5", "s1.h5"]


def test_bad_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"x.h5: features must be \(N, D\)"):
        write_feature_file(tmp_path / "x.h5", np.zeros((3, 2)), np.zeros((2, 2)), dict(encoder_id="e"))
    assert not (tmp_path / "x.h5").exists()
