"""Property tests (issue 14): arbitrary text given to the labels CSV reader and to the config / ``--set``
parser gives a clean :class:`~wsi_mil.errors.WsiMilError` or a valid result, never another exception."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsi_mil.config import apply_overrides, build_config, load_yaml, parse_override
from wsi_mil.errors import ConfigError, LabelsError
from wsi_mil.mil.labels import SPLITS, read_labels
from wsi_mil.study import StudyConfig
from wsi_mil.tiling.config import TilingConfig

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# cells drawn from what label files hold (and what breaks them): ids, numbers, commas, quotes, blanks
CELL = st.one_of(st.sampled_from(["0", "1", "1.0", "01", " 1", "a", "tumor", "normal", "", "train", "test", "val",
                                  "nan", "inf", "1e0", '"', '","', "x,y", "\t", "NaN"]),
                 st.text(max_size=8))
HEADER = st.lists(st.sampled_from(["slide_id", "label", "case_id", "split", "extra", "", "label "]),
                  min_size=0, max_size=5)


def _read(data: bytes, classes: list[str] | None = None):  # noqa: ANN202 - a LabelTable or the error
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "labels.csv"
        path.write_bytes(data)
        try:
            return read_labels(path, classes)
        except LabelsError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            return exc


def _valid(table) -> None:  # noqa: ANN001
    ids = [r.slide_id for r in table.rows]
    assert len(ids) == len(set(ids)) and all(ids)
    assert len(table.class_names) >= 2 and all(r.label in table.class_names for r in table.rows)
    assert all(r.split in SPLITS and r.case_id for r in table.rows)
    assert len(table.targets) == len(table.rows)
    numbers: dict[float, str] = {}
    for name in table.class_names:  # one number is never two classes ("1" beside "1.0")
        try:
            v = float(name)
        except ValueError:
            continue
        if v == v:
            assert numbers.setdefault(v, name) == name


@SETTINGS
@given(st.binary(max_size=300))
def test_labels_reader_on_arbitrary_bytes(data: bytes) -> None:
    result = _read(data)
    if not isinstance(result, LabelsError):
        _valid(result)


@SETTINGS
@given(HEADER, st.lists(st.lists(CELL, min_size=0, max_size=6), max_size=12),
       st.one_of(st.none(), st.lists(st.sampled_from(["0", "1", "a", "tumor"]), min_size=1, max_size=3, unique=True)))
def test_labels_reader_on_csv_like_text(header: list[str], rows: list[list[str]], classes: list[str] | None) -> None:
    text = ",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows)
    result = _read(text.encode("utf-8"), classes)
    if not isinstance(result, LabelsError):
        _valid(result)
        if classes is not None:
            assert result.class_names == classes


KEY = st.lists(st.sampled_from(["tiling", "target_mpp", "tile_size", "tissue", "mask_mpp", "train", "folds", "x",
                                "", " ", "a.b"]), min_size=0, max_size=3).map(".".join)
VALUE = st.one_of(st.sampled_from(["0.5", "224", "-1", "inf", ".nan", "null", "[1, 2]", "{a: 1}", "'x'", "[", "{",
                                   "yes", "1e400", "!!python/object:os.system", "&a [*a]", "2024-01-01", ""]),
                  st.text(max_size=12))
OVERRIDE = st.one_of(st.builds(lambda k, v: f"{k}={v}", KEY, VALUE), st.text(max_size=20))


@SETTINGS
@given(OVERRIDE)
def test_parse_override_on_arbitrary_text(text: str) -> None:
    try:
        keys, _ = parse_override(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert keys and all(keys)


@SETTINGS
@given(st.lists(OVERRIDE, max_size=4))
def test_build_config_with_arbitrary_overrides(overrides: list[str]) -> None:
    try:
        cfg = build_config(TilingConfig, overrides=overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert math.isfinite(cfg.target_mpp) and cfg.target_mpp > 0 and cfg.tile_size >= 1
    assert TilingConfig.model_validate(cfg.model_dump()) == cfg


@SETTINGS
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda k, v: f"{k}: {v}\n".encode(), KEY, VALUE)),
       st.lists(OVERRIDE, max_size=3))
def test_study_yaml_and_overrides_on_arbitrary_text(data: bytes, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "study.yaml"
        path.write_bytes(data)
        try:
            doc = load_yaml(path)
            apply_overrides(doc, overrides)
            build_config(StudyConfig, path, overrides)
        except ConfigError as exc:
            assert "\n" not in str(exc)
