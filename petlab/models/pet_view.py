"""ImageNet's own view of a photo: does it show a cat or a dog at all?

A cats-vs-dogs model has only two answers, so a car gets one of them, often confidently: the
softmax of a closed-set classifier says which known class a photo is closest to, not whether it is
one. An ImageNet classifier has seen 1000 kinds of things, among them 118 dog breeds, 5 domestic
cats and their wild relatives; the probability it puts on those classes is a direct answer to
"is this a pet at all?", independent of the model being served. benchmarks/not_a_pet.py measures
it against the served model's own (calibrated) confidence and chooses the threshold below.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from petlab.data.transforms import Preprocessing
from petlab.models.zoo import ARCHS, build_imagenet_classifier, set_submodule

VIEW_ARCH = "efficientnet_lite0"
# 128 px, not Lite0's native 224: the view only has to tell animals from everything else, and at
# 128 px it costs about a sixth of the native forward pass (benchmarks/not_a_pet.py: held-out AUROC
# 0.993 at 128 px vs 0.999 at 224 px, the same share of non-pets caught).
VIEW_SIZE = 128
# ImageNet-1k indices 151-268: dogs; 269-280: wolves, foxes and wild dogs; 281-285: domestic cats;
# 286-293: wild cats. Neighbours count: an unusual pet photo is often read as its wild relative.
PET_CLASSES = slice(151, 294)
# Chosen by benchmarks/not_a_pet.py (README, "Not a pet"): the pet probability below which a photo
# is answered as not recognised -- the highest that wrongly rejects at most 2% of the tuning pets
# (the 400 cats-vs-dogs validation photos), with half of the offline non-pet photos beside them.
PET_THRESHOLD = 0.12
# What a card records (and /api/health reports) for a model served beside the separate view.
SEPARATE_VIEW = {"view": "separate", "arch": VIEW_ARCH, "image_size": VIEW_SIZE, "threshold": PET_THRESHOLD}
# A served model whose backbone is ImageNet's own, untouched by training (a frozen backbone with its
# BatchNorm statistics kept: the feature-cache recipes), computes ImageNet's features anyway: ImageNet's
# head on those features answers the same question at the cost of one matrix product (OwnBackboneView),
# at the model's own input size. Thresholds per (architecture, input size), chosen by the same rule with
# `benchmarks/not_a_pet.py` (README, "Not a pet"); a combination not measured here gets the separate view.
OWN_BACKBONE_THRESHOLDS = {("efficientnet_lite0", 224): 0.379, ("efficientnet_lite2", 260): 0.265}


class PetView:
    def __init__(self, arch: str = VIEW_ARCH, image_size: int | None = VIEW_SIZE):
        self.model = build_imagenet_classifier(arch)
        # the eval resize petlab trains with; a smaller image_size than the native one costs less per photo
        self.pre = Preprocessing.for_model(ARCHS[arch], image_size, 1.14)

    @torch.inference_mode()
    def pet_probability(self, images: list) -> np.ndarray:
        """RGB PIL images -> the ImageNet probability that each shows a dog or a cat (wild relatives included)."""
        batch = self.pre.normalize(torch.stack([self.pre.eval_tensor(img) for img in images]))
        return pet_probability(self.model(batch)).numpy()


def pet_probability(imagenet_logits: torch.Tensor) -> torch.Tensor:
    """[N, 1000] ImageNet logits -> [N] probability of a dog or cat class (wild relatives included)."""
    return torch.softmax(imagenet_logits.float(), dim=1)[:, PET_CLASSES].sum(1)


def verdict(score: float, threshold: float) -> dict:
    """The server's answer for one photo: recognised or not, why, and the score behind it."""
    recognised = score >= threshold
    reason = None if recognised else (
        f"this does not look like a cat or a dog: an ImageNet classifier gives it {score:.1%} probability of "
        f"showing one (below {threshold:.0%}); the model's best guesses are still given")
    return {"recognised": recognised, "reason": reason, "pet_probability": round(score, 4)}


class _BothHeads(nn.Module):
    """The served head and ImageNet's, side by side on the same features: [N, classes + 1000]."""

    def __init__(self, head: nn.Module, imagenet_head: nn.Module):
        super().__init__()
        self.head, self.imagenet_head = head, imagenet_head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.head(features), self.imagenet_head(features)], dim=1)


class OwnBackboneView(nn.Module):
    """A served model that also answers ImageNet's question from its own features: x -> (logits, pet
    probability), one backbone pass. Only for a model whose backbone is ImageNet's (own_backbone_head)."""

    def __init__(self, model: nn.Module, arch: str, imagenet_head: nn.Module, num_classes: int):
        super().__init__()
        self.model, self.num_classes = copy.deepcopy(model).eval(), num_classes
        path = ARCHS[arch].head
        set_submodule(self.model, path, _BothHeads(self.model.get_submodule(path), copy.deepcopy(imagenet_head)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out[:, :self.num_classes], pet_probability(out[:, self.num_classes:])


def own_backbone_head(model: nn.Module, arch: str, image_size: int) -> nn.Module | None:
    """ImageNet's 1000-class head when `model`'s every tensor outside its new head equals the bundled
    ImageNet weights (weights and BatchNorm statistics, compared exactly) and a threshold was measured for
    (arch, image_size); else None."""
    spec = ARCHS.get(arch)
    if spec is None or spec.bundled_weights is None or (arch, image_size) not in OWN_BACKBONE_THRESHOLDS:
        return None
    imagenet = build_imagenet_classifier(arch)
    ours, theirs = model.state_dict(), imagenet.state_dict()
    head = spec.head + "."
    for key, value in theirs.items():
        if key.startswith(head):
            continue
        if key not in ours or ours[key].shape != value.shape or not torch.equal(ours[key], value):
            return None
    return imagenet.get_submodule(spec.head)
