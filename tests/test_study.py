"""The study config: ready-made configs validate, errors name the key, overrides win."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wsi_mil.config import build_config
from wsi_mil.errors import ConfigError
from wsi_mil.study import SECTIONS, StudyConfig, load_study, study_to_yaml
from wsi_mil.tiling.config import TilingConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _minimal(**extra: object) -> dict:
    doc = {"slides": "slides", "labels": "labels.csv", "job": "job", "encoder": {"arch": "resnet18", "weights": "random"}}
    doc.update(extra)
    return doc


def test_ready_made_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"resnet50_chowder", "simclr_chowder", "weldon", "demo"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_validates(path: Path) -> None:
    cfg = load_study(path)
    assert isinstance(cfg, StudyConfig)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    # every key written in the file is kept (nothing silently dropped or renamed)
    dumped = yaml.safe_load(study_to_yaml(cfg))
    for section in SECTIONS:
        for key, value in (raw.get(section) or {}).items():
            if isinstance(value, dict) and key != "head_options":
                for k2, v2 in value.items():
                    assert dumped[section][key][k2] == v2
            elif key == "head_options":
                for k2, v2 in value.items():
                    assert dumped[section][key][k2] == v2
            else:
                assert dumped[section][key] == value, f"{path.name}: {section}.{key}"


def test_config_heads_and_encoders() -> None:
    by = {p.stem: load_study(p) for p in CONFIGS}
    assert by["resnet50_chowder"].train.head == "chowder"
    assert by["resnet50_chowder"].encoder.arch == "resnet50_in1k"
    assert by["resnet50_chowder"].encoder.is_file_like
    assert by["simclr_chowder"].encoder.is_simclr and by["simclr_chowder"].train.head == "chowder"
    assert by["weldon"].train.head == "weldon"
    assert by["demo"].encoder.is_simclr


def test_demo_config_is_what_the_demo_runs() -> None:
    from wsi_mil.demo import DemoOptions, demo_study

    from_file = load_study(ROOT / "configs" / "demo.yaml")
    assert from_file.model_dump(mode="json") == demo_study("demo_output", DemoOptions()).model_dump(mode="json")


def test_stage_commands_read_the_study_sections(tmp_path: Path) -> None:
    """`wsi-mil tile --config STUDY.yaml` reads the same `tiling` section as `wsi-mil run`."""
    from wsi_mil.extract.config import ExtractConfig
    from wsi_mil.mil.config import TrainConfig

    path = ROOT / "configs" / "resnet50_chowder.yaml"
    study = load_study(path)
    assert build_config(TilingConfig, path, section="tiling") == study.tiling
    assert build_config(ExtractConfig, path, section="extract") == study.extract
    assert build_config(TrainConfig, path, section="train") == study.train
    # what the stage commands call: a whole study, or a file holding that section alone
    assert build_config(TilingConfig, path, section="tiling", section_optional=True) == study.tiling
    only = tmp_path / "tiling.yaml"
    only.write_text("target_mpp: 1.0\ntile_size: 256\n")
    got = build_config(TilingConfig, only, section="tiling", section_optional=True)
    assert (got.target_mpp, got.tile_size) == (1.0, 256)


def test_unknown_keys_are_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'tilling'"):
        load_study(_write(tmp_path / "a.yaml", _minimal(tilling={"target_mpp": 0.25})))
    with pytest.raises(ConfigError, match=r"unknown key 'tiling.target_mp'"):
        load_study(_write(tmp_path / "b.yaml", _minimal(tiling={"target_mp": 0.25})))
    with pytest.raises(ConfigError, match=r"c.yaml: train.head_options.*unknown key 'k'"):
        load_study(_write(tmp_path / "c.yaml", _minimal(train={"head": "chowder", "head_options": {"k": 3}})))


def test_wrong_types_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'tiling.tile_size'.*not-a-number"):
        load_study(_write(tmp_path / "a.yaml", _minimal(tiling={"tile_size": "not-a-number"})))
    with pytest.raises(ConfigError, match=r"'train.folds'"):
        load_study(_write(tmp_path / "b.yaml", _minimal(train={"folds": 1})))
    with pytest.raises(ConfigError, match=r"'encoder'"):
        load_study(_write(tmp_path / "c.yaml", {"slides": "s", "labels": "l.csv", "job": "j"}))
    with pytest.raises(ConfigError, match=r"'device'"):
        load_study(_write(tmp_path / "d.yaml", _minimal(device="tpu")))


def test_encoder_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"encoder.arch.*pretrain.arch"):
        load_study(_write(tmp_path / "a.yaml", _minimal(encoder={"arch": "resnet50", "weights": "simclr"},
                                                          pretrain={"arch": "resnet18"})))
    with pytest.raises(ConfigError, match=r"encoder.arch.*is needed"):
        load_study(_write(tmp_path / "b.yaml", _minimal(encoder={"weights": "random"})))
    ok = load_study(_write(tmp_path / "c.yaml", _minimal(encoder={"weights": "simclr"}, pretrain={"arch": "resnet18"})))
    assert ok.encoder.is_simclr and not ok.encoder.is_file_like
    assert load_study(_write(tmp_path / "d.yaml", _minimal(encoder={"weights": "enc_dir"}))).encoder.is_file_like


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.yaml", _minimal(tiling={"target_mpp": 0.5}))
    cfg = load_study(path, ["tiling.target_mpp=0.25", "train.head=weldon", "slides=/a/b", "name=x2"])
    assert cfg.tiling.target_mpp == 0.25 and cfg.train.head == "weldon"
    assert cfg.slides == [Path("/a/b")] and cfg.name == "x2"
    with pytest.raises(ConfigError, match=r"unknown key 'tiling.nope'"):
        load_study(path, ["tiling.nope=1"])


def test_device_is_the_default_of_every_stage(tmp_path: Path) -> None:
    cfg = load_study(_write(tmp_path / "a.yaml", _minimal(device="cpu")))
    assert cfg.extract_config().device == "cpu" and cfg.train_config().device == "cpu"
    own = load_study(_write(tmp_path / "b.yaml", _minimal(device="cpu", extract={"device": "cuda:1"})))
    assert own.extract_config().device == "cuda:1" and own.train_config().device == "cpu"


def test_yaml_round_trip(tmp_path: Path) -> None:
    for path in CONFIGS:
        cfg = load_study(path)
        again = tmp_path / path.name
        again.write_text(study_to_yaml(cfg), encoding="utf-8")
        assert load_study(again) == cfg


def test_paths_of_a_study(tmp_path: Path) -> None:
    cfg = load_study(_write(tmp_path / "a.yaml", _minimal(name="r1", job="/j")))
    assert cfg.run_dir() == Path("/j/models/r1")
    assert cfg.heatmap_dir() == Path("/j/heatmaps/r1")
    assert cfg.predictions_csv() == Path("/j/predictions/r1.csv")
    with pytest.raises(ConfigError, match=r"'name'"):
        load_study(_write(tmp_path / "b.yaml", _minimal(name="../escape")))
