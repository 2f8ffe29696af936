"""Class imbalance: the two standard answers, each a library call.

- class weights (train.class_weights balanced): each class's loss is weighted by n / (classes x its count),
  scikit-learn's "balanced" heuristic, in torch's CrossEntropyLoss. With hard targets the batch's loss is
  the weighted mean (normalised by the weights of the batch's labels). With label smoothing the smoothed
  target is weighted per class as well, and with MixUp/CutMix the targets are soft: torch then weights each
  class's share of a target and takes the plain mean over the batch, so a batch of rare classes counts
  more in total -- the intended effect, at a varying step size.
- a balanced sampler (train.sampler balanced; data/loaders.py: train_order): torch's WeightedRandomSampler
  draws each epoch's photos with replacement, every class equally often; the loss is unweighted. Rare
  photos repeat within an epoch (augmentation varies them), common ones are partly left out.

Evaluation is never weighted: validation loss and every metric are over the photos as they are, and
balanced accuracy is reported beside accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import Dataset, Subset, TensorDataset

from petlab.data.loaders import CachedImages


def class_weights(mode: str, labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """The loss weight of each class from the training labels (mode "balanced", train.class_weights), or None
    (mode "none": unweighted). A class with no training photo (a cross-validation fold may lack one) gets weight
    1: it has no loss to weigh."""
    if mode == "none":
        return None
    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The labels of a training dataset as the loaders build them: decoded images, cached features (one row per
    view), or a cross-validation fold's subset of either."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    if isinstance(dataset, CachedImages):
        return np.asarray(dataset.decoded.labels)
    raise TypeError(f"no labels known for a {type(dataset).__name__}")
