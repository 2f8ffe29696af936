"""Compare runs: python experiments/compare.py [--runs runs] [--task T] [--arch A] [--tag X] [--since DATE]

Writes runs/reports/<name>/ (git-ignored; --out DIR elsewhere): leaderboard.md and .csv (best validation
accuracy first), overlaid learning curves, confusion matrices side by side, a per-class accuracy heatmap,
and index.html showing them all.
Reads local run directories; with COMET_API_KEY set it also reads the Comet project (--no-comet: don't).
"""

import argparse
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

from petlab.paths import runs_root
from petlab.reports.compare import write_report
from petlab.reports.runs import find_comet_runs, find_local_runs, select

log = logging.getLogger("petlab")


def date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD[THH:MM]): {text!r}") from exc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", default=[runs_root()], help="folders holding run directories")
    parser.add_argument("--name", help="report folder under --out (default: the task, or 'all')")
    parser.add_argument("--out", type=Path, default=runs_root() / "reports",
                        help="reports go to DIR/<name> (default runs/reports; the committed examples: --out reports)")
    parser.add_argument("--task")
    parser.add_argument("--arch")
    parser.add_argument("--tag", help="only runs with this tag, e.g. study:lr_sweep")
    parser.add_argument("--since", type=date, help="runs started on or after this date")
    parser.add_argument("--until", type=date, help="runs started on or before this date")
    parser.add_argument("--no-comet", action="store_true", help="local run records only, even with COMET_API_KEY")
    parser.add_argument("--project", default=os.environ.get("COMET_PROJECT_NAME", "petlab"))
    parser.add_argument("--workspace", default=os.environ.get("COMET_WORKSPACE"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    missing = [str(p) for p in args.runs if not p.exists()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    records = find_local_runs(args.runs)
    if os.environ.get("COMET_API_KEY") and not args.no_comet:
        try:
            known = {(r.results.get("tracking") or {}).get("key") for r in records}
            records += [r for r in find_comet_runs(args.workspace, args.project)
                        if r.results["tracking"]["key"] not in known]
        except Exception as exc:  # noqa: BLE001 - the local report is still worth writing
            log.warning("could not read the Comet project %s (%s); using local runs only", args.project, exc)
    records = select(records, args.task, args.arch, args.tag, args.since, args.until)
    if not records:
        print("error: no completed runs match (looked in " + ", ".join(map(str, args.runs)) + ")", file=sys.stderr)
        return 2
    name = args.name or args.task or "all"
    title = f"petlab comparison: {name}" + (f" (tag {args.tag})" if args.tag else "")
    files = write_report(records, args.out / name, title)
    print(f"{len(records)} runs -> {files['html']}")
    print(files["markdown"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
