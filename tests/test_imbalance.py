"""Class imbalance: balanced class weights in the training loss, and a balanced sampler (engine/imbalance.py)."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from petlab.config import ConfigError, load_config
from petlab.data.loaders import train_order
from petlab.engine.imbalance import class_weights
from tests.imaging import save_photo
from tests.trainers import tiny_trainer


def test_balanced_class_weights_are_n_over_classes_times_count():
    labels = np.array([0] * 90 + [1] * 10 + [2] * 20)
    weights = class_weights("balanced", labels, 4)
    # 120 photos, 3 classes present: 120 / (3 x count); a class with no photo (a fold may lack one) weighs 1
    torch.testing.assert_close(weights, torch.tensor([120 / 270, 120 / 30, 120 / 60, 1.0]))
    assert class_weights(load_config().train.class_weights, labels, 4) is None
    balanced = class_weights("balanced", np.array([0, 1] * 50), 2)
    torch.testing.assert_close(balanced, torch.ones(2))  # a no-op on balanced data


def test_the_balanced_sampler_draws_every_class_equally_and_repeats_with_its_seed():
    labels = np.array([0] * 900 + [1] * 100)
    generator = torch.Generator()
    order = train_order("balanced", labels, generator)
    sampler = order["sampler"]
    assert isinstance(sampler, WeightedRandomSampler) and order["generator"] is generator and "shuffle" not in order
    generator.manual_seed(3)
    drawn = list(sampler)
    assert len(drawn) == 1000
    share = Counter(labels[drawn])[1] / 1000
    assert 0.45 < share < 0.55  # 10% of the photos, half of the draws
    generator.manual_seed(3)
    assert list(sampler) == drawn  # the trainer reseeds the generator each epoch: a resumed epoch repeats
    assert train_order("shuffle", labels, generator) == {"shuffle": True, "generator": generator}


def test_both_corrections_at_once_are_refused():
    with pytest.raises(ConfigError, match="choose one"):
        load_config(None, {"train.class_weights": "balanced", "train.sampler": "balanced"})


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """24 cats to 4 dogs in train (generated photos), 4 of each in val."""
    root = tmp_path_factory.mktemp("imbalanced")
    seed = 0
    for split, counts in (("train", {"cats": 24, "dogs": 4}), ("val", {"cats": 4, "dogs": 4})):
        for label, (name, n) in enumerate(counts.items()):
            for i in range(n):
                seed += 1
                save_photo(root / split / name / f"{name}.{i}.jpg", label, seed)
    return root


def test_a_run_trains_with_weighted_loss_and_validates_unweighted(tmp_path, imbalanced):
    trainer = tiny_trainer(tmp_path, imbalanced, **{"train.class_weights": "balanced", "train.epochs": 1})
    train_labels = trainer.loaders["train"].dataset.decoded.labels
    counts = np.bincount(train_labels)
    expected = len(train_labels) / (2 * counts)
    torch.testing.assert_close(trainer.step.criterion.weight, torch.tensor(expected, dtype=torch.float32))
    assert trainer.step.eval_criterion.weight is None  # validation loss compares across runs
    state = trainer.fit()
    assert state.finished and np.isfinite(state.history[0]["train_loss"])


def test_a_run_with_the_balanced_sampler_sees_the_rare_class_half_the_time(tmp_path, imbalanced):
    trainer = tiny_trainer(tmp_path, imbalanced, **{"train.sampler": "balanced", "train.epochs": 1})
    loader = trainer.loaders["train"]
    assert isinstance(loader.sampler, WeightedRandomSampler) and trainer.step.criterion.weight is None
    seen = Counter()
    for epoch in range(20):
        trainer.generator.manual_seed(epoch)
        seen.update(int(y) for _, labels in loader for y in labels)
    assert 0.4 < seen[1] / sum(seen.values()) < 0.6  # 4 of 28 photos, about half of what trains
    assert trainer.fit().finished
