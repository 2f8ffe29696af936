"""Each training-toolkit feature with and without, on real photos (issue 15's table).

    python benchmarks/toolkit.py [--recipe NAME ...] [--feature NAME ...] [--output-dir DIR] [--lr-find]

Two recipes, each run as a user runs it (`experiments/run.py --config ...` in its own process):

- `fast_resnet_cats_vs_dogs` on cats_and_dogs_filtered: the from-scratch recipe, 50 epochs (about 8 min a run
  here), one seed;
- `lite0_finetune_cats_vs_dogs` with `--task breeds` on oxford-pets-37breeds-5shot: the fine-tune recipe
  (Lite0, head first, then every layer) on 37 breeds x 5 photos. A run takes half a minute, and one photo of the
  185 test photos is 0.5 points, so each cell is the median of three seeds.

Each feature is the recipe plus its flags; every other setting stays the recipe's. Accuracy is the test
split's, of the checkpoint chosen on validation; time is the run's own wall time (results.json) with any
torch.compile time counted apart. The decode cache is filled once per recipe before the first timed run, so no
row pays for decoding JPEGs.

`--lr-find` also runs `experiments/lr_find.py` on the from-scratch recipe and one run at its suggestion.

Results are kept as they arrive in DIR/toolkit.json (default reports/toolkit/), so an interrupted benchmark
picks up where it stopped; the table (toolkit.md) and the figure (toolkit.png) are redrawn at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import REPO, benchmark_report_dir, shared_data  # benchmarks/common.py (this script's folder)


@dataclass(frozen=True)
class Recipe:
    config: str  # experiments/configs/<config>.yaml
    data: str  # folder under the shared data
    extra: tuple[str, ...]  # flags that adapt the config to the data
    seeds: tuple[int, ...]
    what: str


RECIPES = {
    "from_scratch": Recipe("fast_resnet_cats_vs_dogs", "cats_and_dogs_filtered", (), (42,),
                           "fast_resnet from scratch, cats_and_dogs_filtered, 50 epochs one-cycle"),
    "fine_tune": Recipe("lite0_finetune_cats_vs_dogs", "oxford-pets-37breeds-5shot",
                        ("--task", "breeds", "--dataset", "imagefolder"), (0, 1, 2),
                        "Lite0 fine-tune (head, then all layers), oxford-pets-37breeds-5shot, 5 epochs cosine"),
}

# feature -> recipe -> (flags, why these values). None: the feature does not apply to that recipe, and why.
# The EMA horizon 1/(1-decay) is about a tenth of each recipe's optimizer steps (1,400 and 25).
FEATURES: dict[str, dict[str, tuple[tuple[str, ...], str] | str]] = {
    "baseline": {"from_scratch": ((), "the recipe"), "fine_tune": ((), "the recipe")},
    "clip_grad": {r: (("--clip-grad", "1.0"), "total norm clipped to 1") for r in RECIPES},
    "accumulate": {"from_scratch": (("--batch-size", "16", "--accumulate", "4"), "batch 16 x 4 = the recipe's 64"),
                   "fine_tune": (("--batch-size", "8", "--accumulate", "4"), "batch 8 x 4 = the recipe's 32")},
    "warmup": {"from_scratch": "one-cycle warms up by itself (the first 30%, 15 epochs); --warmup-epochs only "
                               "moves that share",
               "fine_tune": (("--warmup-epochs", "0.5"), "linear warm-up over half an epoch before cosine")},
    "mixup": {r: (("--mixup", "0.2"), "MixUp alpha 0.2") for r in RECIPES},
    "cutmix": {r: (("--cutmix", "1.0"), "CutMix alpha 1.0") for r in RECIPES},
    "ema": {"from_scratch": (("--ema", "0.99"), "EMA decay 0.99 (horizon ~100 of 1,400 steps)"),
            "fine_tune": (("--ema", "0.9"), "EMA decay 0.9 (horizon ~10 of 25 steps)")},
    "compile": {r: (("--compile",), "torch.compile on the training forward") for r in RECIPES},
    "fp16": {r: "CUDA only (a GradScaler for float16); this machine has no GPU" for r in RECIPES},
    # The recipe once more, last: how far wall time drifts between two identical runs of the same session.
    "baseline_again": {"from_scratch": ((), "the recipe again, after every other row: the time noise"),
                       "fine_tune": "its three seeds already show the spread"},
}


def run_once(recipe: Recipe, flags: tuple[str, ...], seed: int, out: Path, env: dict) -> dict:
    runs = out / "runs"
    command = [sys.executable, str(REPO / "experiments" / "run.py"),
               "--config", str(REPO / "experiments" / "configs" / f"{recipe.config}.yaml"),
               "--data-dir", str(shared_data() / recipe.data), "--output-dir", str(runs),
               "--tracking", "none", "--seed", str(seed), *recipe.extra, *flags]
    before = set(runs.iterdir()) if runs.is_dir() else set()
    proc = subprocess.run(command, env=env, cwd=REPO, stdout=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode} (its log is above)")
    (run_dir,) = set(runs.iterdir()) - before
    results = json.loads((run_dir / "results.json").read_text())
    compile_seconds = results.get("compile_seconds") or 0.0
    return {"seed": seed, "test_accuracy": results["test"]["accuracy"], "val_accuracy": results["val"]["accuracy"],
            "seconds": results["wall_time_s"] - compile_seconds, "compile_seconds": compile_seconds,
            "best_epoch": results["best_epoch"], "run_dir": str(run_dir)}


def warm_cache(recipe: Recipe, out: Path, env: dict) -> None:
    """One batch of one epoch: every split is decoded into the cache, so no timed run pays for it."""
    print(f"[{recipe.config}] filling the decode cache", file=sys.stderr, flush=True)
    run_once(recipe, ("--epochs", "1", "--limit-batches", "1"), recipe.seeds[0], out / "warm", env)


def summarise(cells: list[dict]) -> dict:
    return {"test_accuracy": statistics.median(c["test_accuracy"] for c in cells),
            "seconds": statistics.median(c["seconds"] for c in cells),
            "compile_seconds": statistics.median(c["compile_seconds"] for c in cells),
            "runs": cells}


def measure(recipes: list[str], features: list[str], out: Path, kept: dict, save) -> dict:
    for recipe_name in recipes:
        recipe = RECIPES[recipe_name]
        env = {**os.environ, "PETLAB_CACHE_DIR": str(out / recipe_name / "cache")}
        warmed = False
        for feature in features:
            spec = FEATURES[feature][recipe_name]
            key = f"{recipe_name}/{feature}"
            if isinstance(spec, str):
                kept[key] = {"not_applicable": spec}
                save(kept)
                continue
            flags, why = spec
            done = kept.get(key, {}).get("runs", [])
            cells = [c for c in done if c["seed"] in recipe.seeds]
            for seed in recipe.seeds:
                if any(c["seed"] == seed for c in cells):
                    continue
                if not warmed:
                    warm_cache(recipe, out / recipe_name, env)
                    warmed = True
                print(f"[{key}] seed {seed}: {' '.join(flags) or '(the recipe)'}", file=sys.stderr, flush=True)
                cells.append(run_once(recipe, flags, seed, out / recipe_name / feature, env))
                kept[key] = {"flags": " ".join(flags), "why": why, **summarise(cells),
                             "measured_at": time.strftime("%Y-%m-%d %H:%M")}
                save(kept)
    return kept


def lr_find_rows(out: Path, kept: dict, save) -> dict:
    """The finder on the from-scratch recipe, then the recipe at the suggested lr (the recipe's own lr is its
    baseline row)."""
    recipe = RECIPES["from_scratch"]
    env = {**os.environ, "PETLAB_CACHE_DIR": str(out / "from_scratch" / "cache")}
    if "lr_find" not in kept:
        runs = out / "lr_find"
        command = [sys.executable, str(REPO / "experiments" / "lr_find.py"),
                   "--config", str(REPO / "experiments" / "configs" / f"{recipe.config}.yaml"),
                   "--data-dir", str(shared_data() / recipe.data), "--output-dir", str(runs), "--tracking", "none"]
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, cwd=REPO, stdout=sys.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"lr_find.py failed with exit code {proc.returncode}")
        (run_dir,) = runs.iterdir()
        found = json.loads((run_dir / "lr_find.json").read_text())
        kept["lr_find"] = {"suggestion": found["suggestion"], "min_loss_lr": found["min_loss_lr"],
                           "configured_lr": found["configured_lr"], "steps": found["steps"],
                           "seconds": time.perf_counter() - start, "figure": str(run_dir / "lr_find.png")}
        save(kept)
    if "from_scratch/lr_found" not in kept:
        lr = f"{kept['lr_find']['suggestion']:.3g}"
        cell = run_once(recipe, ("--lr", lr), recipe.seeds[0], out / "from_scratch" / "lr_found", env)
        kept["from_scratch/lr_found"] = {"flags": f"--lr {lr}", "why": "lr_find.py's suggestion",
                                         **summarise([cell]), "measured_at": time.strftime("%Y-%m-%d %H:%M")}
        save(kept)
    return kept


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def table(kept: dict) -> str:
    """The with/without table (medians over each recipe's seeds), then what each feature's flags were."""
    heads = " | ".join(f"{name}: test acc (change) | {name}: time (ratio)" for name in RECIPES)
    lines = [f"| feature | {heads} |",
             "|---|" + "---|---|" * len(RECIPES)]
    for feature in [*FEATURES, "lr_found"]:
        cells = []
        for recipe_name in RECIPES:
            row, base = kept.get(f"{recipe_name}/{feature}"), kept.get(f"{recipe_name}/baseline")
            if row is None:
                cells += ["", ""]
            elif "not_applicable" in row:
                cells += ["n/a", "n/a"]
            else:
                acc, secs = row["test_accuracy"], row["seconds"]
                vs_base = feature != "baseline" and base is not None
                delta = f" ({100 * (acc - base['test_accuracy']):+.1f})" if vs_base else ""
                ratio = f" ({secs / base['seconds']:.2f}x)" if vs_base else ""
                extra = f" + {row['compile_seconds']:.0f} s compiling" if row.get("compile_seconds") else ""
                cells += [f"{acc:.1%}{delta}", f"{duration(secs)}{ratio}{extra}"]
        if any(cells):  # a row nothing was measured for (lr_found without --lr-find) is left out
            lines.append(f"| {feature} | " + " | ".join(cells) + " |")
    lines.append("")
    for feature in [*FEATURES, "lr_found"]:
        said = []
        for recipe_name in RECIPES:
            row = kept.get(f"{recipe_name}/{feature}")
            if row and feature != "baseline":
                said.append(f"{recipe_name}: " + (row["not_applicable"] if "not_applicable" in row
                                                  else f"`{row['flags']}` ({row['why']})"))
        if said:
            lines.append(f"- {feature}: " + "; ".join(said))
    return "\n".join(lines)


def draw(kept: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = [f for f in [*FEATURES, "lr_found"] if f != "baseline" and any(f"{r}/{f}" in kept for r in RECIPES)]
    fig, axes = plt.subplots(1, 2 * len(RECIPES), figsize=(4.2 * 2 * len(RECIPES), 0.9 + 0.45 * len(features)),
                             sharey=True)
    for column, recipe_name in enumerate(RECIPES):
        base = kept.get(f"{recipe_name}/baseline")
        if not base:
            continue
        acc_ax, time_ax = axes[2 * column], axes[2 * column + 1]
        for i, feature in enumerate(features):
            row = kept.get(f"{recipe_name}/{feature}")
            if not row or "not_applicable" in row:
                acc_ax.text(0, i, "n/a", ha="center", va="center", color="#888888", fontsize=8)
                continue
            delta = 100 * (row["test_accuracy"] - base["test_accuracy"])
            acc_ax.barh(i, delta, color="#2a9d8f" if delta > 0 else "#e76f51")
            if len(row["runs"]) > 1:  # the seeds behind the median, each against the same seed's baseline
                by_seed = {c["seed"]: c["test_accuracy"] for c in base["runs"]}
                paired = [100 * (c["test_accuracy"] - by_seed[c["seed"]]) for c in row["runs"] if c["seed"] in by_seed]
                acc_ax.plot(paired, [i] * len(paired), "k.", markersize=4)
            time_ax.barh(i, row["seconds"] / base["seconds"], color="#8d99ae")
            if row.get("compile_seconds"):
                time_ax.barh(i, row["compile_seconds"] / base["seconds"], left=row["seconds"] / base["seconds"],
                             color="#d9d9d9", hatch="//")
        acc_ax.axvline(0, color="black", linewidth=0.8)
        time_ax.axvline(1, color="black", linewidth=0.8)
        seeds = len(base["runs"])
        acc_ax.set_title(f"{recipe_name}: test accuracy minus the recipe's\n{base['test_accuracy']:.1%} (points"
                         + (f"; median of {seeds} seeds, dots: each seed vs its own baseline)" if seeds > 1 else ")"),
                         fontsize=9)
        time_ax.set_title(f"{recipe_name}: wall time / the recipe's\n{duration(base['seconds'])} "
                          "(hatched: compiling)", fontsize=9)
    axes[0].set_yticks(range(len(features)), features)
    axes[0].invert_yaxis()
    fig.suptitle("Training toolkit, each feature against its recipe (" + ", ".join(
        f"{name}: {len(r.seeds)} seed{'s' if len(r.seeds) > 1 else ''}" for name, r in RECIPES.items()) + ")",
        fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--feature", nargs="+", choices=list(FEATURES), default=list(FEATURES),
                        help="baseline is always run")
    parser.add_argument("--lr-find", action="store_true", help="also lr_find.py and a run at its suggestion")
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/petlab-toolkit"),
                        help="the runs and caches (default /tmp/petlab-toolkit)")
    parser.add_argument("--report-dir", type=Path, default=benchmark_report_dir("reports/toolkit"),
                        help="default runs/benchmarks/toolkit; the committed figures: --report-dir reports/toolkit")
    args = parser.parse_args(argv)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    path = args.report_dir / "toolkit.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}

    def save(results: dict) -> None:
        path.write_text(json.dumps(results, indent=2) + "\n")

    features = ["baseline", *[f for f in args.feature if f != "baseline"]]
    measure(args.recipe, features, args.output_dir, kept, save)
    if args.lr_find:
        lr_find_rows(args.output_dir, kept, save)
    (args.report_dir / "toolkit.md").write_text(table(kept) + "\n")
    draw(kept, args.report_dir / "toolkit.png")
    print(table(kept))
    if "lr_find" in kept:
        f = kept["lr_find"]
        print(f"\nlr_find.py: suggestion {f['suggestion']:.3g} (the recipe's lr {f['configured_lr']:.3g}), "
              f"{f['steps']} steps, {f['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
