"""Train one experiment: python experiments/run.py --arch custom_cnn [--config experiments/configs/X.yaml]"""

import argparse
import sys
from pathlib import Path

from petlab.cli import add_run_flags, overrides_from
from petlab.config import load_config
from petlab.engine.experiment import run_experiment
from petlab.errors import ConfigError, PetlabError, report_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_run_flags(parser)
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    args = parser.parse_args(argv)
    try:
        if args.resume:
            if overrides_from(args) or args.config:
                raise ConfigError("--resume continues a run with the config saved in its config.yaml; "
                                  "drop the other flags")
            outcome = run_experiment(resume=args.resume)
        else:
            outcome = run_experiment(load_config(args.config, overrides_from(args)))
    except (PetlabError, OSError) as exc:
        return report_error(exc)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
