"""Wall time until a recipe reaches its target test accuracy, from a cold start.

    python benchmarks/time_to_accuracy.py [--recipe NAME ...] [--json] [--output-dir DIR]

A recipe is a named experiment config (experiments/configs/NAME.yaml) on one of the shared
real-photo datasets, with the accuracy it must reach and the minutes it may take. Each one runs
as a user runs it -- `python experiments/run.py --config ... --data-dir ...` in its own process,
Comet tracking on (offline without a key) -- with an empty decode/feature cache, so the minutes
include decoding every JPEG, any backbone features, training, the final evaluation and the
figures. Accuracy is the test split's, of the checkpoint chosen by validation accuracy.

Prints a table (recipe, dataset, minutes, accuracy, target, budget, met); `--json` prints one
JSON object instead. `--before-after` runs each recipe twice, cold both times, side by side: first as
petlab ran before ONNX Runtime (PETLAB_RUNTIME=torch: PyTorch eager predicts and extracts features),
then as it runs now, with the speed-up and the accuracy difference (PETLAB_NATIVE_BF16=0 in the
environment measures both as a CPU without native bf16 runs them). The latest figures per recipe
are kept in reports/speed/time_to_accuracy.json and drawn in reports/speed/time_to_accuracy.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import REPO, benchmark_report_dir, shared_data  # benchmarks/common.py (this script's folder)


@dataclass(frozen=True)
class Recipe:
    data: str  # folder under the shared data
    target: float  # test accuracy to reach
    budget_minutes: float
    what: str


RECIPES = {
    "lite0_features_cats_vs_dogs": Recipe(
        "cats_and_dogs_filtered", 0.985, 3, "ImageNet EfficientNet-Lite0 frozen: features once, then the head"),
    "lite0_finetune_cats_vs_dogs": Recipe(
        "cats_and_dogs_filtered", 0.990, 15, "EfficientNet-Lite0: head first, then all layers with augmentation"),
    "fast_resnet_cats_vs_dogs": Recipe(
        "cats_and_dogs_filtered", 0.850, 20, "from scratch: fast_resnet at 128 px, one-cycle, label smoothing"),
    "lite0_features_breeds": Recipe(
        "stanford-dogs-3breeds", 0.950, 3, "dog breeds: EfficientNet-Lite0 features, then the head"),
    "breeds_fewshot": Recipe(
        "oxford-pets-37breeds-5shot", 0.920, 5,
        "37 breeds x 5 photos: Lite2 features + mirrors, ImageNet head rows, 5-fold CV for lr and epochs, refit"),
}


def run_recipe(name: str, out: Path, env_extra: dict | None = None) -> dict:
    recipe = RECIPES[name]
    cache, runs = out / "cache", out / "runs"
    if out.exists():
        raise SystemExit(f"{out} exists: a cold start needs an empty --output-dir")
    cache.mkdir(parents=True)  # empty: nothing decoded or extracted yet
    command = [sys.executable, str(REPO / "experiments" / "run.py"),
               "--config", str(REPO / "experiments" / "configs" / f"{name}.yaml"),
               "--data-dir", str(shared_data() / recipe.data), "--output-dir", str(runs)]
    env = {**os.environ, **(env_extra or {}), "PETLAB_CACHE_DIR": str(cache)}
    print(f"[{name}] {recipe.what} (target {recipe.target:.1%} within {recipe.budget_minutes:g} min)",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    # The run's own progress bars and log go to stderr; stdout stays for this script's table or JSON.
    proc = subprocess.run(command, env=env, cwd=REPO, stdout=sys.stderr)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {proc.returncode} (its log is above)")
    (run_dir,) = runs.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    accuracy = results["test"]["accuracy"]
    return {"dataset": recipe.data, "minutes": minutes, "test_accuracy": accuracy,
            "val_accuracy": results["val"]["accuracy"], "target": recipe.target,
            "budget_minutes": recipe.budget_minutes,
            "met": accuracy >= recipe.target and minutes <= recipe.budget_minutes,
            "epochs": results["epochs_completed"], "best_epoch": results["best_epoch"],
            "test_images": results["test"]["n"], "run_dir": str(run_dir), "what": recipe.what,
            "machine": results.get("machine"),
            "measured_at": time.strftime("%Y-%m-%d %H:%M")}


def save_report(measured: dict, report_dir: Path) -> Path:
    """Merge into the kept figures (latest measurement per recipe) and redraw the chart."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "time_to_accuracy.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}
    kept.update({name: {k: v for k, v in r.items() if k != "run_dir"} for name, r in measured.items()})
    kept = {name: kept[name] for name in [*RECIPES, *kept] if name in kept}  # the recipes' order, then any old ones
    path.write_text(json.dumps(kept, indent=2) + "\n")
    draw(kept, report_dir / "time_to_accuracy.png")
    return path


def draw(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(9, 0.8 + 0.7 * len(names)))
    for i, name in enumerate(names):
        r = results[name]
        ax.barh(i, r["budget_minutes"], color="#e5e5e5", edgecolor="#999999")
        ax.barh(i, r["minutes"], height=0.5, color="#2a9d8f" if r["met"] else "#e76f51")
        ax.text(r["minutes"] + 0.15, i, f"{r['test_accuracy']:.1%} test (target {r['target']:.1%}), "
                                        f"{r['minutes']:.1f} min", va="center", fontsize=9)
    ax.set_xlim(0, 1.5 * max(max(r["budget_minutes"], r["minutes"]) for r in results.values()))
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("minutes from a cold start (grey: the budget)")
    ax.set_title("Time to accuracy on this machine (green: target reached within budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def before_after(args) -> int:
    from petlab.export.onnx import RUNTIME_SWITCH

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or Path(tmp)
        for name in args.recipe:
            before = run_recipe(name, out / name / "before", {RUNTIME_SWITCH: "torch"})
            after = run_recipe(name, out / name / "after")
            results[name] = {"before": before, "after": after, "speedup": before["minutes"] / after["minutes"],
                             "accuracy_points": 100 * (after["test_accuracy"] - before["test_accuracy"])}
    if args.json:
        print(json.dumps(results))
        return 0
    machine = next(iter(results.values()))["after"]["machine"] or {}
    print(f"{machine.get('cpu')} ({machine.get('cpu_capability')}, native bf16: {machine.get('native_bf16')}), "
          f"{machine.get('threads')} threads; cold caches; before: PETLAB_RUNTIME=torch")
    print(f"{'recipe':<30} {'before min':>10} {'after min':>9} {'speed-up':>8} {'acc before':>10} {'acc after':>9}")
    for name, r in results.items():
        print(f"{name:<30} {r['before']['minutes']:10.2f} {r['after']['minutes']:9.2f} {r['speedup']:7.2f}x "
              f"{r['before']['test_accuracy']:10.2%} {r['after']['test_accuracy']:9.2%}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="+", choices=list(RECIPES), default=list(RECIPES), metavar="NAME",
                        help=f"one or more of: {', '.join(RECIPES)} (default: all)")
    parser.add_argument("--output-dir", type=Path, help="keep the runs and caches here (default: a temp folder)")
    parser.add_argument("--no-report", action="store_true", help="write no figures")
    parser.add_argument("--report-dir", type=Path, default=benchmark_report_dir("reports/speed"),
                        help="default runs/benchmarks/speed; the committed figures: --report-dir reports/speed")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--before-after", action="store_true",
                        help="each recipe on PyTorch alone (as before ONNX Runtime), then as now, side by side")
    args = parser.parse_args(argv)
    if args.before_after:
        return before_after(args)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or Path(tmp)
        results = {name: run_recipe(name, out / name) for name in args.recipe}
    if not args.no_report:
        save_report(results, args.report_dir)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'recipe':<30} {'dataset':<24} {'minutes':>7} {'accuracy':>9} {'target':>7} {'budget':>7}  met")
    for name, r in results.items():
        print(f"{name:<30} {r['dataset']:<24} {r['minutes']:7.2f} {r['test_accuracy']:9.2%} {r['target']:7.1%} "
              f"{r['budget_minutes']:6g}m  {'yes' if r['met'] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
