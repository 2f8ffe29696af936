"""ImageNet's own view of a photo: does it show a cat or a dog at all?

A cats-vs-dogs model has only two answers, so a car gets one of them, often confidently: the
softmax of a closed-set classifier says which known class a photo is closest to, not whether it is
one. An ImageNet classifier has seen 1000 kinds of things, among them 118 dog breeds, 5 domestic
cats and their wild relatives; the probability it puts on those classes is a direct answer to
"is this a pet at all?", independent of the model being served. benchmarks/not_a_pet.py measures
it against the served model's own (calibrated) confidence and chooses the thresholds in
petlab/inference/pet.py, where the server reads them without importing torch.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from petlab.data.transforms import Preprocessing
from petlab.inference.pet import (  # noqa: F401 - the constants live where the server can read them without torch
    OWN_BACKBONE_THRESHOLDS,
    PET_CLASSES,
    PET_THRESHOLD,
    SEPARATE_VIEW,
    SEPARATE_VIEW_FILE,
    VIEW_ARCH,
    VIEW_SIZE,
    verdict,
)
from petlab.models.zoo import ARCHS, build_imagenet_classifier, set_submodule


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


def export_separate_view(photos: list, path) -> dict:
    """Write the separate view (PetView's ImageNet classifier) as ONNX at `path`, checked against the eager
    model on `photos` (RGB PIL images, at least 3), with its preprocessing in its metadata: what the server
    runs, torch-free, for a version with no view of its own. Returns the check's report."""
    import json

    from petlab.export.onnx import annotate, export_and_check

    view = PetView()
    batch = view.pre.normalize(torch.stack([view.pre.eval_tensor(img) for img in photos]))
    report = export_and_check(view.model, batch[:2], [batch[2:3], batch], path)
    annotate(path, {"petlab.preprocessing": json.dumps(view.pre.to_dict()), "petlab.arch": VIEW_ARCH,
                    "petlab.outputs": f"ImageNet-1k logits [N, 1000]; pet probability = the softmax summed over "
                                      f"classes {PET_CLASSES.start}-{PET_CLASSES.stop - 1} (dogs, wolves and foxes, "
                                      f"cats), recognised at {PET_THRESHOLD} or more"})
    return report


def pet_probability(imagenet_logits: torch.Tensor) -> torch.Tensor:
    """[N, 1000] ImageNet logits -> [N] probability of a dog or cat class (wild relatives included)."""
    return torch.softmax(imagenet_logits.float(), dim=1)[:, PET_CLASSES].sum(1)


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
