"""Class imbalance: accuracy and balanced accuracy with no correction, class weights, or a balanced sampler.

    python benchmarks/imbalance.py [--seeds 0 1 2] [--cut cats_vs_dogs breeds] [--json]

Two imbalanced cuts of the shared photos (symlinks in a temporary folder; test splits untouched):
- cats_vs_dogs: cats_and_dogs_filtered's training photos with 10% of the dogs (1000 cats, 100 dogs; validation
  is carved from them, stratified); test is the shipped validation/ folder, 500 of each. Recipe:
  lite0_features_cats_vs_dogs.
- breeds: oxford-pets-37breeds-5shot with every other breed (18 of 37) cut to 2 training photos; test keeps its 5
  photos of every breed. Recipe: breeds_fewshot (cross-validated).
Each (cut, variant, seed) is a real run (run_experiment, tracking off). Prints per cut and variant the median over
seeds of test accuracy, balanced accuracy and the mean recall of the cut classes, and writes
reports/imbalance/imbalance.json and imbalance.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import REPO, benchmark_report_dir, shared_data  # benchmarks/common.py (this script's folder)

from petlab.config import load_config
from petlab.engine.experiment import run_experiment
from petlab.engine.speed import cpu_model
from petlab.reports.figures import pyplot

VARIANTS = {"none": {}, "class weights": {"train.class_weights": "balanced"},
            "balanced sampler": {"train.sampler": "balanced"}}


def link_all(files, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)


def cats_vs_dogs_cut(root: Path) -> tuple[Path, list[str]]:
    source = shared_data() / "cats_and_dogs_filtered"
    link_all(sorted((source / "train" / "cats").glob("*.jpg")), root / "train" / "cats")
    link_all(sorted((source / "train" / "dogs").glob("*.jpg"))[:100], root / "train" / "dogs")
    for label in ("cats", "dogs"):
        link_all(sorted((source / "validation" / label).glob("*.jpg")), root / "validation" / label)
    return root, ["dog"]


def breeds_cut(root: Path) -> tuple[Path, list[str]]:
    from petlab.data.datasets import pretty_class_name

    source = shared_data() / "oxford-pets-37breeds-5shot"
    cut = []
    for i, breed in enumerate(sorted(p.name for p in (source / "train").iterdir())):
        photos = sorted((source / "train" / breed).glob("*.jpg"))
        if i % 2:
            photos, cut = photos[:2], cut + [pretty_class_name(breed)]
        link_all(photos, root / "train" / breed)
        link_all(sorted((source / "test" / breed).glob("*.jpg")), root / "test" / breed)
    return root, cut


CUTS = {"cats_vs_dogs": (cats_vs_dogs_cut, "lite0_features_cats_vs_dogs"),
        "breeds": (breeds_cut, "breeds_fewshot")}


def measure(cut: str, seeds: list[int], tmp: Path) -> dict:
    build, recipe = CUTS[cut]
    data, minority = build(tmp / cut / "data")
    rows = {}
    for variant, overrides in VARIANTS.items():
        runs = []
        for seed in seeds:
            cfg = load_config(REPO / "experiments" / "configs" / f"{recipe}.yaml", {
                **overrides, "seed": seed, "data.data_dir": str(data), "tracking.backend": "none",
                "output_dir": str(tmp / cut / "runs")})
            test = run_experiment(cfg).results["test"]
            runs.append({"accuracy": test["accuracy"], "balanced_accuracy": test["balanced_accuracy"],
                         "cut_class_recall": statistics.mean(test["per_class"][c]["recall"] for c in minority)})
        rows[variant] = {**{k: statistics.median(r[k] for r in runs) for k in runs[0]}, "runs": runs}
        print(f"{cut:13s} {variant:17s} accuracy {rows[variant]['accuracy']:.4f}  balanced "
              f"{rows[variant]['balanced_accuracy']:.4f}  cut-class recall {rows[variant]['cut_class_recall']:.4f}",
              flush=True)
    return {"recipe": recipe, "cut_classes": minority, "variants": rows}


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    cuts = list(results["cuts"])
    fig, axes = plt.subplots(1, len(cuts), figsize=(6 * len(cuts), 4), squeeze=False)
    metrics = ("accuracy", "balanced_accuracy", "cut_class_recall")
    for ax, cut in zip(axes[0], cuts):
        variants = results["cuts"][cut]["variants"]
        for i, variant in enumerate(variants):
            values = [variants[variant][m] for m in metrics]
            bars = ax.bar([j + 0.27 * (i - 1) for j in range(len(metrics))], values, width=0.27, label=variant)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
        ax.set_xticks(range(len(metrics)), ["test accuracy", "balanced accuracy", "recall of the cut classes"])
        ax.set_ylim(min(0.5, min(v[m] for v in variants.values() for m in metrics) - 0.05), 1.02)
        ax.set_title(f"{cut} ({results['cuts'][cut]['recipe']}), median of {len(results['seeds'])} seeds",
                     fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"class imbalance, {results['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cut", nargs="+", choices=sorted(CUTS), default=list(CUTS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report-dir", type=Path, default=benchmark_report_dir("reports/imbalance"),
                        help="default runs/benchmarks/imbalance; the committed figures: --report-dir reports/imbalance")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="petlab-imbalance-") as tmp:
        results = {"cpu": cpu_model(), "seeds": args.seeds,
                   "cuts": {cut: measure(cut, args.seeds, Path(tmp)) for cut in args.cut}}
    args.report_dir.mkdir(parents=True, exist_ok=True)
    (args.report_dir / "imbalance.json").write_text(json.dumps(results, indent=2))
    plot(results, args.report_dir / "imbalance.png")
    if args.json:
        print(json.dumps(results, indent=2))
    print(f"-> {args.report_dir / 'imbalance.json'}, {args.report_dir / 'imbalance.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
