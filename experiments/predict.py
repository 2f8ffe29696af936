"""Label photos with a trained model: one row per file, top-1 and top-k, and whether it looks like a pet at all.

python experiments/predict.py PATH... [--task T | --run RUN_DIR | --registry-version N] [--out FILE.csv|.json]
                              [--top-k K] [--explain DIR]

PATHs are files or folders (recursively; hidden entries such as .DS_Store are skipped). The model is the
task's production version by default (the registry's only task needs no --task), on its fast runtime with its
card's temperature and "not a pet" check; --registry-version picks another version, --run a run's best.pt.
Each row: input (the PATH it was found under), file (relative to it), label and probability, top_k (JSON),
recognised, pet_probability, error (why an unreadable file has no prediction) and model.

--out is written once, at the end; each batch's rows go to a journal beside it (.NAME.partial.jsonl) as they
are done, so after an interruption the same command predicts only the rest (rows of the same model file and
--top-k are kept). A file predict.py did not write is not overwritten without --force. Without --out the rows
go to standard output as CSV. --explain DIR writes each photo's overlay of where the model looked (the map of its
top-1 class, petlab/models/cam.py) as DIR/<file>.png.
"""

import argparse
import logging
import sys
from pathlib import Path

from petlab.batch_predict import BATCH_SIZE, find_photos, format_rows, open_model, predict_photos
from petlab.config import TASKS
from petlab.engine.context import setup_logging
from petlab.errors import PetlabError, report_error
from petlab.registry import Registry
from petlab.serving import MAX_TOP_K

log = logging.getLogger("petlab")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photos, or folders of them")
    parser.add_argument("--task", choices=TASKS, help="the task whose production model labels (default: the "
                                                      "registry's only task)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", type=Path, metavar="RUN_DIR", help="label with this run's best.pt")
    source.add_argument("--registry-version", type=int, metavar="N", help="label with this registered version")
    parser.add_argument("--registry", help="registry folder (default $PETLAB_REGISTRY_DIR or models/registry)")
    parser.add_argument("--out", type=Path, help="FILE.csv or FILE.json (default: CSV on standard output)")
    parser.add_argument("--force", action="store_true", help="overwrite --out even if predict.py did not write it")
    parser.add_argument("--top-k", type=int, default=5, help=f"classes per row, 1 to {MAX_TOP_K} (default 5)")
    parser.add_argument("--explain", type=Path, metavar="DIR", help="write an overlay of where the model looked per "
                                                                   "photo, as DIR/<file>.png")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads for a --run model (default: all cores)")
    args = parser.parse_args(argv)
    if not 1 <= args.top_k <= MAX_TOP_K:
        parser.error(f"--top-k must be from 1 to {MAX_TOP_K}")
    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    setup_logging()
    try:
        photos = find_photos(args.paths)
        with open_model(args.task, args.run, args.registry_version, Registry(args.registry), args.threads) as model:
            rows = predict_photos(model, photos, args.out, args.top_k, args.batch_size, args.force, args.explain)
    except (PetlabError, OSError) as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        where = f"the rows done so far are kept beside {args.out}; run the same command to finish" if args.out else \
            "nothing was written (pass --out to keep partial results)"
        print(f"interrupted: {where}", file=sys.stderr)
        return 130
    failed = sum(1 for r in rows if r["error"])
    if args.out is None:
        sys.stdout.write(format_rows(rows, ".csv"))
    log.info("%d files: %d labelled, %d unreadable%s", len(rows), len(rows) - failed, failed,
             f" -> {args.out}" if args.out else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
