"""ImageNet's own view of a photo: does it show a cat or a dog at all?

A cats-vs-dogs model has only two answers, so a car gets one of them, often confidently: the
softmax of a closed-set classifier says which known class a photo is closest to, not whether it is
one. An ImageNet classifier has seen 1000 kinds of things, among them 118 dog breeds, 5 domestic
cats and their wild relatives; the probability it puts on those classes is a direct answer to
"is this a pet at all?", independent of the model being served. benchmarks/not_a_pet.py measures
it against the served model's own (calibrated) confidence and chooses the threshold below.
"""

from __future__ import annotations

import numpy as np
import torch

from petlab.data.transforms import Preprocessing
from petlab.models.zoo import ARCHS, build_imagenet_classifier

VIEW_ARCH = "efficientnet_lite0"
# 128 px, not Lite0's native 224: the view only has to tell animals from everything else, and at
# 128 px it costs about a sixth of the native forward pass (benchmarks/not_a_pet.py: held-out AUROC
# 0.993 at 128 px vs 0.999 at 224 px, the same share of non-pets caught).
VIEW_SIZE = 128
# ImageNet-1k indices 151-268: dogs; 269-280: wolves, foxes and wild dogs; 281-285: domestic cats;
# 286-293: wild cats. Neighbours count: an unusual pet photo is often read as its wild relative.
PET_CLASSES = list(range(151, 294))
# Chosen by benchmarks/not_a_pet.py (README, "Not a pet"): the pet probability below which a photo
# is answered as not recognised -- the highest that wrongly rejects at most 2% of the tuning pets
# (the 400 cats-vs-dogs validation photos), with half of the offline non-pet photos beside them.
PET_THRESHOLD = 0.12


class PetView:
    def __init__(self, arch: str = VIEW_ARCH, image_size: int | None = VIEW_SIZE):
        self.model = build_imagenet_classifier(arch)
        # the eval resize petlab trains with; a smaller image_size than the native one costs less per photo
        self.pre = Preprocessing.for_model(ARCHS[arch], image_size, 1.14)

    @torch.inference_mode()
    def pet_probability(self, images: list) -> np.ndarray:
        """RGB PIL images -> the ImageNet probability that each shows a dog or a cat (wild relatives included)."""
        batch = self.pre.normalize(torch.stack([self.pre.eval_tensor(img) for img in images]))
        return torch.softmax(self.model(batch).float(), dim=1)[:, PET_CLASSES].sum(1).numpy()

    def judge(self, image) -> dict:
        """The server's answer for one photo: recognised or not, why, and the score behind it."""
        score = float(self.pet_probability([image])[0])
        recognised = score >= PET_THRESHOLD
        reason = None if recognised else (
            f"this does not look like a cat or a dog: an ImageNet classifier gives it {score:.1%} probability of "
            f"showing one (below {PET_THRESHOLD:.0%}); the model's best guesses are still given")
        return {"recognised": recognised, "reason": reason, "pet_probability": round(score, 4)}
