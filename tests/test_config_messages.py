"""Config errors name where the bad value came from: a ``--set`` override is blamed, not the YAML
file it overrides, and a missing key is named without dumping the whole mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_mil.config import build_config
from wsi_mil.errors import ConfigError
from wsi_mil.mil.config import TrainConfig
from wsi_mil.study import StudyConfig


def test_an_override_error_blames_the_override_not_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text("train:\n  folds: 3\n")
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, cfg, ["folds=abc"], section="train", section_optional=True)
    assert str(e.value).startswith("--set folds=abc: invalid config: 'folds'") and "study.yaml" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^--set foldz=3: invalid config: unknown key 'foldz'$"):
        build_config(TrainConfig, cfg, ["foldz=3"], section="train", section_optional=True)
    cfg.write_text("train:\n  foldz: 3\n")  # the file's own error still names the file
    with pytest.raises(ConfigError, match=r"study.yaml: invalid config: unknown key 'foldz'$"):
        build_config(TrainConfig, cfg, ["lr=0.01"], section="train", section_optional=True)


def test_a_missing_key_is_named_without_the_whole_mapping(tmp_path: Path) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"slides: {tmp_path}\njob: {tmp_path / 'job'}\nencoder: {{arch: resnet18, weights: random}}\n")
    with pytest.raises(ConfigError) as e:
        build_config(StudyConfig, cfg, ["train.lr=-1"])
    msg = str(e.value)
    assert "study.yaml: invalid config: missing required key 'labels'" in msg and "got {" not in msg
    assert "--set train.lr=-1: invalid config: 'train.lr'" in msg and "\n" not in msg


def test_a_negative_worker_count_is_refused_from_python_too(tmp_path: Path) -> None:
    """``run_tile(workers=-1)`` (and every slide-parallel stage, through ``dask_client``) is refused,
    not a local cluster that waits for ever."""
    from wsi_mil.parallel import dask_client

    with pytest.raises(ConfigError, match=r"workers=-1: give 0"):
        with dask_client(workers=-1):
            pass


def test_jpeg_subsampling_given_as_a_yaml_number_is_read_as_its_text() -> None:
    from wsi_mil.tiling.config import TilingConfig

    assert build_config(TilingConfig, None, ["jpeg_subsampling=444"]).jpeg_subsampling == "444"
    with pytest.raises(ConfigError, match=r"^--set jpeg_subsampling=411: .*'444', '422' or '420'"):
        build_config(TilingConfig, None, ["jpeg_subsampling=411"])


def test_fold_advice_never_asks_for_fewer_than_two_folds() -> None:
    """A class with one case cannot be fixed by lowering --folds (1 fold is invalid): the advice
    says to add slides or remove a stray label instead."""
    import numpy as np

    from wsi_mil.errors import LabelsError
    from wsi_mil.mil.splits import check_fold_counts

    targets, groups = np.array([0, 0, 0, 1]), np.array(["a", "b", "c", "d"])
    with pytest.raises(LabelsError) as e:
        check_fold_counts(targets, groups, ["0", "1"], 3, "labels.csv")
    assert "at most 1" not in str(e.value) and "add slides of class '1' (at least 2 cases)" in str(e.value)
    with pytest.raises(LabelsError, match="lower --folds to at most 2"):
        check_fold_counts(np.array([0, 0, 0, 1, 1]), np.array(["a", "b", "c", "d", "e"]), ["0", "1"], 3, "labels.csv")
