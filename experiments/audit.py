"""Audit a dataset before training on it: near-copies and train/test leaks, likely label errors, strays, class counts.

    python experiments/audit.py --data-dir DIR [--task T] [--labels-csv F] [--name NAME]

Writes runs/audit/<name>/ (git-ignored; the committed examples in reports/audit/ were written with --out):
index.html (thumbnails; open it), findings.csv (kind, split, file, label,
suggested_label, score, partner_file), label_ranking.csv (every photo by how likely its label is wrong,
flagged or not: review it top down) and summary.json, and logs the summary to Comet. Train without what it
found: `python experiments/run.py ... --exclude runs/audit/<name>/findings.csv --exclude-kinds label_error`.
Files in the CSVs are relative to the data folder, so a report works on another machine.
How each finding is decided: petlab/audit.py; the thresholds' measurements: README, "Know your data".
"""

import argparse
import logging
import sys
from pathlib import Path

from petlab.config import TASKS
from petlab.errors import PetlabError, report_error
from petlab.paths import runs_root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="a dataset's folder, in any layout petlab reads")
    parser.add_argument("--dataset", help="a named dataset (default: the layout found under --data-dir)")
    parser.add_argument("--labels-csv", help="a CSV of file,label[,split] rows instead of a folder layout")
    parser.add_argument("--task", default="cats_vs_dogs", choices=TASKS)
    parser.add_argument("--name", help="the report's folder name (default: the data folder's name)")
    parser.add_argument("--out", type=Path, help="default: runs/audit/<name> (git-ignored)")
    parser.add_argument("--tracking", default="comet", choices=["comet", "none"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.data_dir or args.labels_csv or args.dataset):
        parser.error("name the data: --data-dir DIR, --labels-csv FILE or --dataset NAME")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from petlab.audit import run_audit

    name = args.name or Path(args.data_dir or args.labels_csv or args.dataset).resolve().name.removesuffix(".csv")
    out = args.out or runs_root() / "audit" / name
    try:
        info = run_audit(args.data_dir, args.task, out, args.dataset, args.labels_csv, seed=args.seed,
                         tracking=args.tracking)
    except (PetlabError, OSError) as exc:
        return report_error(exc)
    s = info["summary"]
    print(f"{s['photos']} photos; findings: " + ", ".join(f"{k} {n}" for k, n in s["findings"].items() if n))
    print(f"test photos with a near-copy in train: {s['test_photos_with_a_near_copy_in_train']}")
    print(f"wrote {out / 'index.html'}, findings.csv and summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
