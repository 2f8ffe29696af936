"""What ImageNet already knows: start a new head's rows from the pretrained classifier's rows.

ImageNet-1k has 118 dog breeds and 5 domestic cats among its 1000 classes. All 120 Stanford Dogs
breeds and 14 of the 37 Oxford-IIIT Pet breeds carry an ImageNet category's own name, so the
pretrained classifier already separates them before any training. `model.head_init: imagenet`
copies those rows (weights and bias) into the new head; classes without a match start fresh.

Names match after case and separators are dropped (`Staffordshire_bullterrier` = `Staffordshire
bullterrier`), or through ALIASES, a short table of the spellings in which public breed datasets and
ImageNet differ. For cats vs dogs each of the two rows merges a group of ImageNet rows: the mean
weight vector and the log-sum-exp of the biases, which is exact when the group's weight vectors are
equal (then exp(w.x + b_1) + ... + exp(w.x + b_n) = exp(w.x + logsumexp(b))).
"""

from __future__ import annotations

import torch
from torch import nn

from petlab.data.datasets import normalise_class_name

# ImageNet-1k class indices (torchvision's order, the one every ImageNet classifier here uses).
IMAGENET_CATS = tuple(range(281, 286))  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
IMAGENET_DOGS = tuple(range(151, 269))  # Chihuahua ... Mexican hairless: the 118 breeds

# normalised dataset class name -> ImageNet category name, where the two spell one breed differently.
ALIASES = {
    # Oxford-IIIT Pet
    "persian": "Persian cat", "siamese": "Siamese cat", "egyptianmau": "Egyptian cat",
    "bassethound": "basset", "japanesechin": "Japanese spaniel", "germanshorthaired": "German short-haired pointer",
    "leonberger": "Leonberg", "scottishterrier": "Scotch terrier", "wheatenterrier": "soft-coated wheaten terrier",
    "englishcockerspaniel": "cocker spaniel",
    # Udacity dogImages (133 breeds)
    "alaskanmalamute": "malamute", "cardiganwelshcorgi": "Cardigan", "pembrokewelshcorgi": "Pembroke",
    "chowchow": "chow", "brusselsgriffon": "Brabancon griffon", "dobermanpinscher": "Doberman",
    "lhasaapso": "Lhasa", "belgianmalinois": "malinois", "belgiansheepdog": "groenendael",
    "bostonterrier": "Boston bull", "brittany": "Brittany spaniel", "entlebuchermountaindog": "EntleBucher",
    "englishspringerspaniel": "English springer", "xoloitzcuintli": "Mexican hairless",
    "bluetickcoonhound": "bluetick", "redbonecoonhound": "redbone", "dandiedinmontterrier": "Dandie Dinmont",
    "cairnterrier": "cairn", "airedaleterrier": "Airedale", "pekingese": "Pekinese", "maltese": "Maltese dog",
    "poodle": "standard poodle", "germanshepherddog": "German shepherd",
    "cavalierkingcharlesspaniel": "Blenheim spaniel",
}


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k names, offline: torchvision's weights metadata carries them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def match_imagenet(classes: list[str], task: str) -> dict[str, list[str]]:
    """{dataset class: [ImageNet categories whose rows make its row]}; unmatched classes are absent."""
    names = imagenet_categories()
    if task == "cats_vs_dogs":
        groups = {"cat": IMAGENET_CATS, "dog": IMAGENET_DOGS}
        return {c: [names[i] for i in groups[c]] for c in classes if c in groups}
    index: dict[str, str] = {}
    for name in names:
        index.setdefault(normalise_class_name(name), name)
    matches = {}
    for c in classes:
        key = normalise_class_name(c)
        found = index.get(key) or ALIASES.get(key)
        if found:
            matches[c] = [found]
    return matches


@torch.no_grad()
def init_rows_from_imagenet(new_head: nn.Linear, imagenet_head: nn.Linear, classes: list[str],
                            matches: dict[str, list[str]]) -> None:
    """Overwrite the matched rows of new_head with (merged) rows of the 1000-class imagenet_head."""
    if imagenet_head.out_features != 1000:
        raise ValueError(f"expected a 1000-class ImageNet head, got {imagenet_head.out_features} outputs")
    position = {name: i for i, name in reversed(list(enumerate(imagenet_categories())))}
    for row, name in enumerate(classes):
        if name not in matches:
            continue
        rows = [position[n] for n in matches[name]]
        new_head.weight[row] = imagenet_head.weight[rows].mean(0)
        new_head.bias[row] = torch.logsumexp(imagenet_head.bias[rows], 0)


def head_init_report(classes: list[str], matches: dict[str, list[str]], task: str) -> dict:
    """What results.json and the tracker record about head_init."""
    report = {"mode": "imagenet", "matched": len(matches), "of": len(classes),
              "unmatched": [c for c in classes if c not in matches]}
    if task == "cats_vs_dogs":
        report["rows"] = {c: f"{len(v)} ImageNet classes merged" for c, v in matches.items()}
    else:
        report["rows"] = {c: v[0] for c, v in matches.items()}
    return report
