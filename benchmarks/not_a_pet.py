"""Choosing how the server says "this is not a cat or a dog", by measurement.

    python benchmarks/not_a_pet.py [--task cats_vs_dogs] [--registry DIR] [--data-dir DIR] [--max-rejected 0.02]
    python benchmarks/not_a_pet.py --all-shared   # every photo of every shared set, per view: how petlab's
                                                  # thresholds (petlab/inference/pet.py) were chosen

The scores compete, each computed for real pet photos and for offline non-pet photos
(petlab/data/non_pets.py: scikit-image's and matplotlib's sample photos, synthetic drawings):
- `served_confidence`: the production model's calibrated top probability (free: it is already computed);
- `imagenet_pet_probability@SIZE`: the separate ImageNet classifier's probability on dog and cat classes
  (petlab/models/pet_view.py; one more forward pass);
- `own_backbone:ARCH@SIZE`: the same probability from ImageNet's head on the production model's own
  backbone, when that backbone is ImageNet's (the version's pet_view.pt2; free, as the first).
Each score's threshold is chosen on the tuning half: the highest threshold that wrongly rejects at
most --max-rejected of the tuning pets (validation photos, or training photos for a run without a
validation split). Then both rates are measured on held-out photos: the test split's pets and the
other half of the non-pets. Writes reports/not_a_pet/<task>.json and <task>.png, prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, shared_data  # benchmarks/common.py (this script's folder)
from sklearn.metrics import roc_auc_score

from petlab.data.datasets import load_splits
from petlab.data.images import load_rgb
from petlab.data.non_pets import non_pet_images, split_tune_heldout
from petlab.inference.model import load_version
from petlab.models.pet_view import OWN_BACKBONE_THRESHOLDS, PET_THRESHOLD, VIEW_SIZE, PetView
from petlab.registry import Registry
from petlab.registry.torch_fallback import load_weights_only
from petlab.reports.figures import pyplot

DEFAULT_DATA = {"cats_vs_dogs": "cats_and_dogs_filtered", "breeds": "oxford-pets-37breeds-5shot"}


def batched(fn, images: list, size: int = 32) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + size])) for i in range(0, len(images), size)])


def choose_threshold(pet_scores: np.ndarray, max_rejected: float) -> float:
    """The highest threshold t with share(pet_scores < t) <= max_rejected."""
    ordered = np.sort(pet_scores)
    allowed = int(np.floor(max_rejected * len(ordered)))  # pets that may fall below t
    return float(ordered[allowed])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cats_vs_dogs", choices=sorted(DEFAULT_DATA))
    parser.add_argument("--registry", type=Path, help="default: $PETLAB_REGISTRY_DIR or models/registry")
    parser.add_argument("--data-dir", type=Path, help="the pets (default: the task's shared dataset)")
    parser.add_argument("--max-rejected", type=float, default=0.02, help="pets wrongly rejected, at most, on tuning")
    parser.add_argument("--view-size", type=int, nargs="+", default=[VIEW_SIZE],
                        help="image sizes at which to measure the ImageNet view (smaller is cheaper)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "not_a_pet")
    parser.add_argument("--all-shared", action="store_true",
                        help="score every shared photo set with each ImageNet view (no production model needed)")
    args = parser.parse_args(argv)
    if args.all_shared:
        return all_shared(args.out)

    registry = Registry(args.registry)
    production = registry.production(args.task)
    if production is None:
        print(f"error: no production {args.task} model in {registry.root}; promote one first", file=sys.stderr)
        return 2
    served = load_version(registry, args.task, production["version"], fallback=load_weights_only)
    data_dir = args.data_dir or shared_data() / DEFAULT_DATA[args.task]
    splits = load_splits(None, args.task, str(data_dir), None, 0.2, 42, download=False)
    pets = {"tune": [p for p, _ in (splits.val or splits.train)], "held-out": [p for p, _ in splits.test]}
    non_pets = dict(zip(("tune", "held-out"), split_tune_heldout(non_pet_images())))
    scorers = {"served_confidence": lambda imgs: served.probabilities(imgs).max(1),
               **{f"imagenet_pet_probability@{size}": PetView(image_size=size).pet_probability
                  for size in args.view_size}}
    served_thresholds = {f"imagenet_pet_probability@{VIEW_SIZE}": PET_THRESHOLD}  # what the server ships
    if served.pet_module is not None:
        arch, size = served.card["arch"], served.pre.image_size
        own = f"own_backbone:{arch}@{size}"
        scorers[own] = lambda imgs: served.probabilities_and_pet(imgs)[1]
        served_thresholds[own] = OWN_BACKBONE_THRESHOLDS[(arch, size)]

    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {name: {} for name in scorers}
    seconds = {name: 0.0 for name in scorers}
    for half in ("tune", "held-out"):
        pet_images = [load_rgb(p) for p in pets[half]]
        other_images = [img for _, img, _ in non_pets[half]]
        for name, fn in scorers.items():
            start = time.perf_counter()
            scores[name][half] = {"pets": batched(fn, pet_images), "non_pets": batched(fn, other_images)}
            seconds[name] += time.perf_counter() - start
            print(f"{name} on {half}: {len(pet_images)} pets, {len(other_images)} non-pets", flush=True)

    report = {"task": args.task, "model": f"{served.name} v{served.version} ({served.card['arch']})",
              "pets": {h: len(v) for h, v in pets.items()}, "pets_from": str(data_dir.name),
              "non_pets": {h: len(v) for h, v in non_pets.items()}, "max_rejected_on_tuning": args.max_rejected,
              "scores": {}}
    n_images = sum(len(pets[h]) + len(non_pets[h]) for h in pets)
    for name, by_half in scores.items():
        threshold = choose_threshold(by_half["tune"]["pets"], args.max_rejected)
        held = by_half["held-out"]
        labels = np.r_[np.ones(len(held["pets"])), np.zeros(len(held["non_pets"]))]
        report["scores"][name] = {
            "threshold": threshold,
            "held_out_pets_wrongly_rejected": float(np.mean(held["pets"] < threshold)),
            "held_out_non_pets_caught": float(np.mean(held["non_pets"] < threshold)),
            "held_out_auroc": float(roc_auc_score(labels, np.r_[held["pets"], held["non_pets"]])),
            "ms_per_image": 1000 * seconds[name] / n_images,
            "missed_non_pets": [n for (n, _, _), s in zip(non_pets["held-out"], held["non_pets"]) if s >= threshold]}
        if name in served_thresholds:  # what the server ships, whatever this run would tune
            shipped = served_thresholds[name]
            report["scores"][name]["at_the_servers_threshold"] = {
                "threshold": shipped,
                "held_out_pets_wrongly_rejected": float(np.mean(held["pets"] < shipped)),
                "held_out_non_pets_caught": float(np.mean(held["non_pets"] < shipped))}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.task}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(scores, report, args.out / f"{args.task}.png")
    print(f"\n{report['model']}; pets: {report['pets']} from {report['pets_from']}; non-pets: {report['non_pets']}")
    print("| score | threshold (tuning) | held-out pets wrongly rejected | held-out non-pets caught | AUROC "
          "| ms/image |")
    print("|---|---|---|---|---|---|")
    for name, r in report["scores"].items():
        print(f"| {name} | {r['threshold']:.3f} | {r['held_out_pets_wrongly_rejected']:.1%} | "
              f"{r['held_out_non_pets_caught']:.1%} | {r['held_out_auroc']:.3f} | {r['ms_per_image']:.1f} |")
    for name, r in report["scores"].items():
        if "at_the_servers_threshold" in r:
            served_at = r["at_the_servers_threshold"]
            print(f"the server's threshold {served_at['threshold']} ({name}): held-out pets wrongly rejected "
                  f"{served_at['held_out_pets_wrongly_rejected']:.1%}, non-pets caught "
                  f"{served_at['held_out_non_pets_caught']:.1%}")
    print(f"wrote {args.out / (args.task + '.json')} and .png")
    return 0


SHARED_SETS = {"cats_and_dogs_filtered": "*/*/*.jpg", "oxford-iiit-pet-3breeds": "images/*.jpg",
               "stanford-dogs-3breeds": "*/*/*.jpg", "oxford-pets-37breeds-5shot": "*/*/*.jpg"}
VIEWS = [("efficientnet_lite0", 224), ("efficientnet_lite0", 128), ("efficientnet_lite2", 260)]
CANDIDATES = (0.379, 0.265, 0.2, 0.12, 0.1, 0.05, 0.03, 0.02, 0.01)


def all_shared(out: Path) -> int:
    """For each view, every shared set's share of pets rejected and the non-pets caught at each candidate
    threshold, and the highest candidate that keeps every set at 1% or less. Writes all_shared.json."""
    data, report = shared_data(), {}
    non_pets = non_pet_images()
    for arch, size in VIEWS:
        view, key = PetView(arch, size), f"{arch}@{size}"
        scores = {name: dict(zip([str(p.relative_to(data / name)) for p in files],
                                 batched(view.pet_probability, [load_rgb(p) for p in files]).tolist()))
                  for name, files in ((n, sorted((data / n).glob(g))) for n, g in SHARED_SETS.items())}
        other = batched(view.pet_probability, [img for _, img, _ in non_pets])
        table = {t: {"pets_rejected": {n: float(np.mean(np.array(list(v.values())) < t)) for n, v in scores.items()},
                     "non_pets_caught": float(np.mean(other < t))} for t in CANDIDATES}
        fit = [t for t in CANDIDATES if max(table[t]["pets_rejected"].values()) <= 0.01]
        lowest = sorted((s, f"{n}/{f}") for n, v in scores.items() for f, s in v.items())[:10]
        report[key] = {"table": table, "highest_threshold_at_most_1pc_everywhere": fit[0] if fit else None,
                       "lowest_pets": lowest, "non_pets_missed_at_that": [
                           (n, float(s)) for (n, _, _), s in zip(non_pets, other) if fit and s >= fit[0]]}
        print(f"\n{key}: {len(non_pets)} non-pets; highest threshold with at most 1% of every set rejected: "
              f"{report[key]['highest_threshold_at_most_1pc_everywhere']}")
        print("| threshold | " + " | ".join(SHARED_SETS) + " | non-pets caught |")
        print("|---" * (len(SHARED_SETS) + 2) + "|")
        for t, row in table.items():
            print(f"| {t} | " + " | ".join(f"{row['pets_rejected'][n]:.2%}" for n in SHARED_SETS)
                  + f" | {row['non_pets_caught']:.1%} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "all_shared.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'all_shared.json'}")
    return 0


def plot(scores: dict, report: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(scores), figsize=(6 * len(scores), 4.2), squeeze=False)
    axes = axes[0]
    for ax, (name, by_half) in zip(axes, scores.items()):
        held, r = by_half["held-out"], report["scores"][name]
        bins = np.linspace(0, 1, 41)
        ax.hist(held["pets"], bins, alpha=0.6, color="C0", density=True, label=f"pets ({len(held['pets'])})")
        ax.hist(held["non_pets"], bins, alpha=0.6, color="C3", density=True,
                label=f"non-pets ({len(held['non_pets'])})")
        ax.axvline(r["threshold"], color="k", linestyle="--",
                   label=f"threshold {r['threshold']:.2f}: pets rejected {r['held_out_pets_wrongly_rejected']:.1%}, "
                         f"non-pets caught {r['held_out_non_pets_caught']:.0%}")
        ax.set_title(f"{name} (held-out AUROC {r['held_out_auroc']:.3f})")
        ax.set_xlabel("score")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.suptitle(f"not a pet? {report['model']}, held-out photos")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
