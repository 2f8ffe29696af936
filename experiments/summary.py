"""What a set of runs came to: python experiments/summary.py --runs runs/first-hour [--report DIR]

The closing summary of `make run`: each run's validation and test accuracy and wall time, where its
Comet archive is (and the command that uploads it), the comparison report, the registry's production
model, and the commands to try next.
"""

import argparse
import sys
from pathlib import Path

from petlab.paths import registry_root, relative_to_root, runs_root
from petlab.registry import Registry
from petlab.reports.runs import find_local_runs, ranking_monitor


def shown(path) -> str:
    path = Path(path).resolve()
    return str(relative_to_root(path) or path)


def scored(results: dict, split: str) -> str:
    """'91.25%', or '91.25% (95% CI 86.5-94.5%, a sample of 200 of 1000 photos)' where evaluation was sampled."""
    metrics = results.get(split)
    if not metrics:
        return f"no {split} split"
    sample = (results.get("eval_sample") or {}).get(split)
    if not sample:
        return f"{metrics['accuracy']:.2%}"
    low, high = metrics["accuracy_ci95"]
    return (f"{metrics['accuracy']:.2%} (95% CI {low:.1%}-{high:.1%}, a sample of {sample['n']} of "
            f"{sample['of']} photos)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=runs_root(), help="folder holding the run directories")
    parser.add_argument("--report", type=Path, help="the comparison report's folder (compare.py --out/--name)")
    parser.add_argument("--task", default="cats_vs_dogs")
    args = parser.parse_args(argv)
    records = [r for r in find_local_runs([args.runs]) if r.task == args.task]
    if not records:
        print(f"error: no completed {args.task} runs under {args.runs}", file=sys.stderr)
        return 2
    lines = [f"\n== petlab: {len(records)} {args.task} runs in {shown(args.runs)} =="]
    archives = []
    ranking = ranking_monitor(records)  # train.monitor, as the leaderboard and promotion rank
    for r in sorted(records, key=lambda r: ranking.sort_key(r.metrics("val").get(ranking.key, ranking.worst()))):
        res = r.results
        budget = res.get("time_budget")
        note = f", budget {budget['budget_s']:.0f} s, {res['epochs_completed']} epoch(s)" if budget else ""
        lines.append(f"  {r.arch:20s} val {scored(res, 'val')}  test {scored(res, 'test')}  "
                     f"{res['wall_time_s'] / 60:.1f} min{note}  ({r.run})")
        if budget and budget["reached"]:
            machine = res.get("machine") or {}
            lines.append(f"  {'':20s} the budget ended training after {budget.get('trained_images', '?')} training "
                         f"photos ({budget['used_s']:.0f} s on {machine.get('cpu', 'this machine')}"
                         f"{'' if machine.get('native_bf16', True) else ', fp32: no native bf16'})")
        archive = (res.get("tracking") or {}).get("archive")
        if archive:
            archives.append(archive)
    registry = Registry()
    production = registry.production(args.task)
    lines.append("")
    if production:
        card = registry.card(args.task, production["version"])
        lines.append(f"  production model: {card['name']} v{card['version']} ({card['arch']}, "
                     f"{card['selected_by']['metric']} {card['selected_by']['value']:.2%}) in {shown(registry_root())}")
    else:
        lines.append(f"  no production {args.task} model in {shown(registry_root())} yet")
    if args.report:
        lines.append(f"  comparison report: {shown(args.report / 'index.html')}")
    if archives:
        lines.append(f"  Comet offline archives ({len(archives)}): {shown(Path(archives[0]).parent.parent.parent)}"
                     "/*/comet/*.zip")
    lines += ["", "next:",
              "  make demo                                   # the production model in a browser, and its JSON API",
              *([f"  comet upload {shown(archives[0])}   # with COMET_API_KEY set: the run in Comet"]
                if archives else []),
              "  python experiments/sweep.py --sweep experiments/configs/sweeps/lite0_cats_vs_dogs.yaml"
              "   # an Optuna sweep",
              "  make dashboard                              # watch the sweep live (optuna-dashboard)",
              "  python experiments/run.py --arch custom_cnn # the seed's full 20-epoch recipe (hours on a CPU)"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
