"""Learning-rate range test: python experiments/lr_find.py --config experiments/configs/X.yaml [--steps 200]

Trains the experiment's model on its real training data for a few hundred steps with the learning rate
rising exponentially from --start to --end, and writes lr_find.png (loss against lr, the suggestion
marked) and lr_find.json (the curve and the suggestion) into a new run directory; Comet gets both. Give the
suggestion to a sweep as the centre of its lr range: `sweep.py --lr-from RUN_DIR/lr_find.json`.
Any run flag (--data-dir, --batch-size, ...) overrides the config, as in run.py.
"""

import argparse
import sys

from petlab.cli import add_run_flags, overrides_from
from petlab.config import load_config
from petlab.engine.context import open_run
from petlab.engine.lr_finder import find_lr
from petlab.errors import PetlabError, report_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(parser)
    parser.add_argument("--steps", type=int, default=200, help="steps of the sweep (fewer if the loss diverges)")
    parser.add_argument("--start", type=float, default=1e-7, help="first learning rate")
    parser.add_argument("--end", type=float, default=10.0, help="last learning rate")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.start < args.end or args.steps < 3:
            raise PetlabError("--start must be positive and below --end, and --steps at least 3")
        with open_run(load_config(args.config, overrides_from(args))) as run:
            result = find_lr(run, args.start, args.end, args.steps)
    except (PetlabError, OSError) as exc:
        return report_error(exc)
    print(f"suggested lr: {result['suggestion']:.3g} (loss minimum at {result['min_loss_lr']:.3g}; the config's "
          f"lr {result['configured_lr']:.3g})\nfigure: {run.run_dir / 'lr_find.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
