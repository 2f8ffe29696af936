"""Evaluate a run's best checkpoint and print the metrics as JSON.

python experiments/evaluate.py RUN_DIR --data-dir DIR [--dataset NAME] [--split test] [--tta flip]
python experiments/evaluate.py RUN_DIR --labels-csv FILE.csv

DIR may be any training layout, or a folder holding only test/<class>/ or only class folders.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from petlab.engine.evaluate import evaluate_run
from petlab.errors import PetlabError, report_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", help="dataset folder (any supported layout)")
    parser.add_argument("--dataset", help="dataset name; default: detected from --data-dir")
    parser.add_argument("--labels-csv", help="a CSV of file,label rows, files relative to it (as run.py takes)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tta", default="none", choices=["none", "flip"],
                        help="test-time augmentation: flip averages the softmax of each photo and its mirror")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        result = evaluate_run(args.run_dir, args.data_dir, args.dataset, args.split, args.batch_size, args.tta,
                              args.labels_csv)
    except (PetlabError, OSError) as exc:
        return report_error(exc)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
