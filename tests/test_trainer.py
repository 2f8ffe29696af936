"""Transfer-learning modes and early stopping, checked on the weights themselves."""

import json

import torch

from petlab.engine.batches import seed_everything
from petlab.engine.experiment import run_experiment
from petlab.models import build_model, head_parameters
from tests.imaging import make_imagefolder
from tests.recipe import TINY, Recipe


def train(tmp_path, **overrides):
    data = tmp_path / "data"
    if not data.exists():
        make_imagefolder(data, {"train": 12, "val": 4, "test": 2})
    cfg = Recipe(TINY).on(data).shrink({"train.lr": 0.01, "train.optimizer": "adam"}).config(
        output_dir=str(tmp_path / "runs"), **overrides)
    outcome = run_experiment(cfg)
    run_dir, code = outcome.run_dir, outcome.exit_code
    assert code == 0 and outcome.status == "completed"
    return run_dir, torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


def initial_weights(seed=42):
    seed_everything(seed)
    model, _ = build_model("resnet18", 2)
    return model


def split_changed(before, after_state):
    head = {n for n, p in before.named_parameters() if id(p) in head_parameters(before, "resnet18")}
    changed = {k for k, v in before.state_dict().items() if not torch.equal(v, after_state[k])}
    return changed & head, changed - head


def test_frozen_backbone_trains_only_the_head(tmp_path):
    _, ckpt = train(tmp_path, **{"model.freeze_backbone": True, "train.epochs": 2})
    head_changed, backbone_changed = split_changed(initial_weights(), ckpt["model"])
    assert head_changed == {"fc.weight", "fc.bias"}
    assert backbone_changed == set()  # BatchNorm statistics included


def test_unfreeze_at_trains_the_backbone_from_that_epoch(tmp_path):
    _, ckpt = train(tmp_path, **{"model.freeze_backbone": True, "model.unfreeze_at": 1, "train.epochs": 2})
    _, backbone_changed = split_changed(initial_weights(), ckpt["model"])
    assert "conv1.weight" in backbone_changed and "layer4.1.bn2.running_mean" in backbone_changed
    groups = {g["name"]: g["lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert groups == {"head": 0.01, "backbone": 0.01}  # random-init backbone: no lr scaling


def test_freeze_batchnorm_trains_every_weight_but_keeps_the_statistics(tmp_path):
    _, ckpt = train(tmp_path, **{"model.freeze_batchnorm": True, "train.epochs": 1})
    _, backbone_changed = split_changed(initial_weights(), ckpt["model"])
    assert {"conv1.weight", "bn1.weight", "layer4.1.bn2.bias"} <= backbone_changed  # affine weights train
    assert not any(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in backbone_changed)


def test_early_stopping_on_validation(tmp_path):
    # Nothing can change (frozen backbone, lr 0), so val accuracy never improves after epoch 1.
    run_dir, ckpt = train(tmp_path, **{"train.lr": 0.0, "model.freeze_backbone": True, "train.epochs": 6,
                                       "train.early_stopping_patience": 2})
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs_completed"] == 3 and results["best_epoch"] == 1
    assert ckpt["state"]["finished"]
