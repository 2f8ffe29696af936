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


def parsed(*argv: str) -> dict:
    import argparse

    from petlab.cli import add_run_flags, overrides_from

    parser = argparse.ArgumentParser()
    add_run_flags(parser)
    return overrides_from(parser.parse_args(list(argv)))


def test_every_config_key_can_be_set_from_the_command_line():
    """--set reaches every key (71 of them, most with no flag of their own), with YAML values."""
    import yaml

    from petlab.config import Config, config_fields

    defaults = Config().flat()
    keys = [key for key, _, _ in config_fields()]
    assert len(keys) >= 70
    argv = [f"--set={key}={yaml.safe_dump(defaults[key], default_flow_style=True).strip().removesuffix('...').strip()}"
            for key in keys]
    assert load_config(None, parsed(*argv)).flat() == defaults  # each default, given back, round-trips
    chosen = parsed("--set", "data.crop_scale_min=0.5", "--set", "train.momentum=0.95", "--set",
                    "model.backbone_lr_scale=0.05", "--set", "diagnostics.loss_patience=7", "--set",
                    "train.cv_lrs=[1e-3, 3e-3]", "--set", "tracking.tags=[a, b]", "--set", "model.weights=null",
                    "--lr", "0.01")
    cfg = load_config(None, chosen)
    assert (cfg.data.crop_scale_min, cfg.train.momentum, cfg.model.backbone_lr_scale) == (0.5, 0.95, 0.05)
    assert cfg.diagnostics.loss_patience == 7 and cfg.train.cv_lrs == [1e-3, 3e-3] and cfg.tracking.tags == ["a", "b"]
    assert cfg.train.lr == 0.01 and cfg.model.weights is None


@pytest.mark.parametrize("argv, message", [
    (["--set", "train.momentun=0.9"], "no such config key; did you mean train.momentum"),
    (["--set", "momentum=0.9"], "did you mean train.momentum"),
    (["--set", "train.momentum"], "expected KEY=VALUE"),
    (["--set", "train.momentum=[1, 2"], "not valid YAML"),
    (["--set", "train.lr=0.1", "--lr", "0.2"], "given both as a flag and by --set"),
])
def test_a_bad_set_says_what_is_wrong(argv, message):
    with pytest.raises(ConfigError, match=message):
        parsed(*argv)


@pytest.mark.parametrize("value, message", [("1.5", "data.crop_scale_min: must be in"),
                                            ("yes please", "data.crop_scale_min: expected float")])
def test_set_values_are_checked_as_in_a_config_file(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, parsed("--set", f"data.crop_scale_min={value}"))
