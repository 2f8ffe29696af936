"""Config: defaults < YAML < flags; bad values fail naming the key; shipped configs load."""

from pathlib import Path

import pytest
import yaml

from petlab.config import ConfigError, config_from_dict, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "experiments" / "configs").glob("*.yaml"))


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.5, "epochs": 3}, "model": {"arch": "resnet18"}}))
    cfg = load_config(path, {"train.lr": "0.01", "train.precision": "bf16"})
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.arch, cfg.train.precision) == (0.01, 3, "resnet18", "bf16")
    assert cfg.train.batch_size == 32  # default kept


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config(overrides={"model.arch": "mobilenet_v2", "data.image_size": 160})
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg
    assert cfg.flat()["model.arch"] == "mobilenet_v2"


@pytest.mark.parametrize("overrides, message", [
    ({"train.lr": "fast"}, "train.lr: expected float"),
    ({"train.epochs": 0}, "train.epochs: must be positive"),
    ({"train.epochs": 2.5}, "train.epochs: expected int"),
    ({"train.optimizer": "adamax"}, "train.optimizer: 'adamax' is not one of"),
    ({"model.arch": "vgg99"}, "model.arch: 'vgg99' is not one of"),
    ({"train.precision": "fp8"}, "train.precision"),
    ({"data.val_fraction": 1.5}, "data.val_fraction"),
    ({"train.colour": 1}, "unknown config key 'train.colour'"),
    ({"data.image_size": 128}, "custom_cnn takes 192 to 255 px"),
    ({"task": "birds"}, "task: 'birds' is not one of"),
    # coerced, not checked, until issue 24: each of these used to be accepted
    ({"tracking.tags": "baseline"}, r"tracking.tags: expected a list, got the string 'baseline'; write \[baseline\]"),
    ({"train.lr": True}, "train.lr: expected float, got True"),
    ({"train.lr": float("inf")}, "train.lr: must be a finite number"),
    ({"train.lr": "nan"}, "train.lr: must be a finite number"),
    ({"model.dropout": 2.0}, r"model.dropout: must be in \[0, 1\)"),
    ({"model.backbone_lr_scale": -1}, "model.backbone_lr_scale: must be >= 0"),
    ({"train.momentum": -5}, r"train.momentum: must be in \[0, 1\)"),
    ({"train.cv_lrs": [0.1, "high"]}, r"train.cv_lrs\[1\]: expected float"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_experiment_configs_load(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_the_seed_config_keeps_the_seed_settings():
    cfg = load_config(Path(__file__).parents[1] / "experiments/configs/custom_cnn_cats_vs_dogs.yaml")
    assert (cfg.model.arch, cfg.train.batch_size, cfg.train.epochs, cfg.train.lr) == ("custom_cnn", 32, 20, 1e-4)
