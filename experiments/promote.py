"""Promote a task's best run to production: select by validation, export, verify, register.

python experiments/promote.py --task cats_vs_dogs [--metric val_accuracy|val_loss] [--from-study NAME | --run RUN_DIR]
python experiments/promote.py --list
python experiments/promote.py --task cats_vs_dogs --rollback 2

A candidate replaces production only when it is significantly better on the same validation photos
(exact McNemar test, p < 0.05); otherwise the promotion is refused with the numbers (exit code 3) and
`--force` overrides, which the card records. A rollback needs no test. Each version is calibrated
(a temperature fitted on val, applied by the server; ECE and a reliability diagram in its card).

The registry is models/registry/ ($PETLAB_REGISTRY_DIR or --registry moves it). Online (a working
COMET_API_KEY) the version is also registered in Comet's model registry; offline the
registration is queued in the source run's Comet archive.
"""

import argparse
import logging
import sys
from pathlib import Path

from petlab.config import TASKS
from petlab.engine.context import setup_logging
from petlab.errors import PetlabError, PromotionRefused, report_error
from petlab.monitor import METRICS
from petlab.paths import runs_root
from petlab.registry import Registry
from petlab.registry.promote import promote, rollback

log = logging.getLogger("petlab")


def registry_table(registry: Registry) -> str:
    rows = [("task", "name", "version", "status", "arch", "selected by", "val acc", "test acc", "created",
             "source run")]
    for task in registry.tasks():
        for entry in registry.versions(task):
            card = registry.card(task, entry["version"])
            metrics = card["metrics"]
            rows.append((task, card["name"], str(entry["version"]), entry["status"], card["arch"],
                         f"{card['selected_by']['metric']}={card['selected_by']['value']:.4f}",
                         f"{metrics.get('val', {}).get('accuracy', float('nan')):.4f}",
                         f"{metrics.get('test', {}).get('accuracy', float('nan')):.4f}",
                         card["created_at"], Path(card["source_run"]).name))
    if len(rows) == 1:
        return f"the registry at {registry.root} is empty; promote a run with --task TASK"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, help="the task whose runs compete: cats_vs_dogs or breeds")
    parser.add_argument("--metric", choices=sorted(METRICS),
                        help="choose by this validation metric (default: the runs' own train.monitor)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-study", metavar="NAME", help="choose among the runs of this sweep study")
    source.add_argument("--run", type=Path, metavar="RUN_DIR", help="promote exactly this run")
    parser.add_argument("--runs-root", type=Path, default=runs_root(), help="where to look for runs (default runs/)")
    parser.add_argument("--storage", help="the study's Optuna storage (default: the sweeps' default)")
    parser.add_argument("--images", type=Path, help="real photos for export verification (default: the run's "
                                                    "validation split)")
    parser.add_argument("--registry", type=Path, help="registry folder (default $PETLAB_REGISTRY_DIR or "
                                                      "models/registry)")
    parser.add_argument("--force", action="store_true", help="promote even if not significantly better than "
                                                             "production (recorded in the card)")
    parser.add_argument("--int8", action="store_true", help="also write the int8 twin (model.int8.onnx), calibrated "
                        "on the run's training photos; served only where it keeps the answers (card: int8)")
    parser.add_argument("--max-latency-ms", type=float, metavar="MS", help="choose the most accurate run whose "
                        "served batch-1 p50 on this CPU is at most MS (measured where not yet measured here)")
    parser.add_argument("--list", action="store_true", help="show the registry and exit")
    parser.add_argument("--rollback", type=int, metavar="VERSION", help="make an earlier version production again")
    args = parser.parse_args(argv)
    setup_logging()
    registry = Registry(args.registry)
    if args.list:
        print(registry_table(registry))
        return 0
    if not args.task:
        parser.error("--task is required (or --list)")
    try:
        if args.rollback is not None:
            card = rollback(args.task, args.rollback, registry)
        else:
            card = promote(args.task, args.metric, args.runs_root, args.from_study, args.storage, args.run,
                           registry, args.images, force=args.force, int8=args.int8,
                           max_latency_ms=args.max_latency_ms)
    except PromotionRefused as exc:  # an answer, not a broken input: exit 3
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (PetlabError, OSError) as exc:
        return report_error(exc)
    print(f"{card['name']} v{card['version']} is now {card['status']} "
          f"({card['arch']}, {card['selected_by']['metric']} = {card['selected_by']['value']:.4f}); "
          f"card: {registry.version_dir(args.task, card['version']) / 'card.md'}")
    print(registry_table(registry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
