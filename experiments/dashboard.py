"""The live view of sweeps: optuna-dashboard over the storage that sweep.py writes.

    python experiments/dashboard.py [--storage URL] [--port 8080]     # or: make dashboard

Serves http://127.0.0.1:PORT (this machine only; --host to change) with every study in the storage:
trials as they finish, optimisation history, parameter importances, parallel coordinates, slices.
The storage is resolved exactly as sweep.py resolves it: sqlite:///FILE (default runs/optuna.db in
the repository), journal:FILE, or postgresql://... for a sweep that spans machines.
"""

import argparse
import logging
import sys

from petlab.errors import ConfigError
from petlab.paths import default_study_storage
from petlab.search.storage import open_storage, redacted, storage_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=default_study_storage(),
                        help="the sweeps' storage (default runs/optuna.db)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    path = storage_file(args.storage)
    if path is not None and not path.is_file():
        print(f"error: no sweep storage at {path}: run a sweep first (python experiments/sweep.py --sweep "
              "experiments/configs/sweeps/NAME.yaml), or pass --storage URL", file=sys.stderr)
        return 2
    try:
        storage = open_storage(args.storage)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from optuna_dashboard import run_server

    logging.info("optuna-dashboard on http://%s:%d over %s (Ctrl-C stops it)", args.host, args.port,
                 redacted(args.storage))
    run_server(storage, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
