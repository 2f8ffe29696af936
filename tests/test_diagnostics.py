"""Each training rule fires on a run built to trigger it, and stays silent on a healthy one.

The runs are real (generated JPEGs, the real cache, loaders and Trainer); only the model is
chosen to misbehave in the way the rule describes.
"""

import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from petlab.data.loaders import CachedImages
from petlab.tracking import Tracker
from tests.trainers import SIZE, tiny_trainer


@pytest.fixture(scope="module")
def label_noise(tmp_path_factory):
    """Both classes drawn from one distribution: anything learnt from train is memorised noise."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 16), ("test", 2)):
        for name in ("cats", "dogs"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def fit(tmp_path, data, model=None, slow_loader_s=0.0, tracker=None, **overrides):
    trainer = tiny_trainer(tmp_path, data, model, tracker, **overrides)
    if slow_loader_s:
        trainer.loaders["train"].dataset.__class__ = type("SlowImages", (SlowImages,), {"delay": slow_loader_s})
    state = trainer.fit()
    return {e["rule"]: e for e in trainer.hook_results()["diagnostics"]}, state


class SlowImages(CachedImages):
    """A real dataset that reads slowly, like images on a network share."""

    delay = 0.0

    def __getitem__(self, i):
        time.sleep(self.delay)
        return super().__getitem__(i)


class ProbeNet(nn.Module):
    """Flatten -> body -> fc; `fc` is where resnet18 keeps its head, so the Trainer finds it."""

    def __init__(self, body: nn.Module, features: int):
        super().__init__()
        self.body, self.fc = body, nn.Linear(features, 2)

    def forward(self, x):
        return self.fc(self.body(x))


def test_a_healthy_run_fires_nothing(tmp_path, red_vs_blue):
    events, state = fit(tmp_path, red_vs_blue, **{"train.epochs": 5})
    assert events == {}, events
    # it learns: the best epoch (what best.pt keeps) is perfect; a single last epoch may wobble (0.875 once,
    # after the pixels' resize moved from torch to Pillow)
    assert max(h["val_accuracy"] for h in state.history) == 1.0


def test_lr_zero_means_loss_not_decreasing(tmp_path, red_vs_blue):
    # No augmentation randomness (full-image crops, no flip), so the loss is flat for four epochs.
    events, _ = fit(tmp_path, red_vs_blue, **{"train.lr": 0.0, "train.epochs": 5, "diagnostics.loss_patience": 2,
                                              "data.crop_scale_min": 1.0, "data.hflip": False})
    assert set(events) == {"loss_not_decreasing"}


def test_deep_sigmoid_stack_has_vanishing_gradients(tmp_path, red_vs_blue):
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 32), nn.Sigmoid()]
    for _ in range(16):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    events, _ = fit(tmp_path, red_vs_blue, ProbeNet(nn.Sequential(*layers), 32), **{"train.epochs": 1})
    assert "vanishing_gradients" in events
    assert events["vanishing_gradients"]["layer"] == "body.1.weight"  # the layer nearest the input


def test_huge_weights_explode_the_gradients(tmp_path, red_vs_blue):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():
        for p in body.parameters():
            p.mul_(100.0)
    events, _ = fit(tmp_path, red_vs_blue, ProbeNet(body, 64), **{"train.epochs": 1})
    assert "exploding_gradients" in events and events["exploding_gradients"]["grad_norm"] > 1e3


def test_an_overconfident_head_is_poor_initialisation(tmp_path, red_vs_blue):
    torch.manual_seed(0)
    model = ProbeNet(nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()), 48)
    with torch.no_grad():
        model.fc.weight.mul_(300.0)
    events, _ = fit(tmp_path, red_vs_blue, model, **{"train.epochs": 1, "train.lr": 1e-4})
    assert "poor_initialisation" in events
    assert events["poor_initialisation"]["loss"] > 3 * np.log(2)


def test_negative_biases_leave_relus_dead(tmp_path, red_vs_blue):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3)
    with torch.no_grad():
        conv.bias.fill_(-100.0)
    body = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    events, _ = fit(tmp_path, red_vs_blue, ProbeNet(body, 16), **{"train.epochs": 1})
    assert events["dead_activations"]["layer"] == "body.1" and events["dead_activations"]["dead_fraction"] == 1.0


def test_few_images_many_epochs_overfit(tmp_path, label_noise):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 128), nn.ReLU())
    events, state = fit(tmp_path, label_noise, ProbeNet(mlp, 128),
                        **{"train.epochs": 15, "train.batch_size": 2, "data.crop_scale_min": 1.0, "data.hflip": False})
    assert "overfitting" in events, [(r["train_loss"], r["val_loss"]) for r in state.history]


def test_a_slow_loader_is_a_data_loading_bottleneck(tmp_path, red_vs_blue):
    linear = ProbeNet(nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()), 48)  # next to no compute
    events, state = fit(tmp_path, red_vs_blue, linear, slow_loader_s=0.02, **{"train.epochs": 1})
    assert "data_loading_bottleneck" in events
    assert state.history[0]["data_wait_fraction"] > 0.5


class RecordingTracker(Tracker):
    """petlab's do-nothing tracker, keeping the metrics it is given (what Comet would receive)."""

    def __init__(self):
        self.metrics = []

    def log_metrics(self, metrics, step=None, epoch=None):
        self.metrics.append((step, dict(metrics)))


def test_per_step_values_are_read_only_at_the_log_interval(tmp_path, red_vs_blue):
    """The step that makes no host sync on CUDA: loss and gradient norm are read at the log interval only
    (here every 2nd of 4 steps), while the epoch's loss and accuracy still cover every image."""
    tracker = RecordingTracker()
    _, state = fit(tmp_path, red_vs_blue, tracker=tracker, **{"train.epochs": 1, "tracking.log_every_steps": 2,
                                                               "diagnostics.enabled": False})
    per_step = [(step, m) for step, m in tracker.metrics if "batch_loss" in m]
    assert [step for step, _ in per_step] == [0, 2]
    assert all(m["grad_norm"] > 0 and m["batch_loss"] > 0 for _, m in per_step)
    row = state.history[0]
    assert row["train_accuracy"] * 32 == pytest.approx(round(row["train_accuracy"] * 32))  # counted over 32 images
    assert 0 < row["train_loss"] < 10
