"""The one tiny recipe every test shrinks from (conftest.py's `tiny` fixture).

A Recipe is a config, as dotted overrides of an optional YAML file, plus the photo folder it trains on. A
test states only how its run differs (`tiny.shrink({...})`, `tiny.on(folder)`) and then takes the view it
needs: `config()` for a run in this process, `argv()` for experiments/*.py as a user types it (the flags
the scripts really have, `--set` for keys without one), `yaml()` for a sweep's base file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from petlab.cli import run_flags
from petlab.config import Config, dotted_to_nested, load_config

REPO = Path(__file__).resolve().parents[1]

# resnet18 at 64 px, batch 8, AdamW: learns the generated red vs blue photos (tests/imaging.py) in an epoch
# and runs a real-photo epoch in seconds. Two threads: the machines have two cores. No leak check (its Lite0
# pass would outweigh the run; tests/test_audit.py turns it on).
TINY = {"model.arch": "resnet18", "data.image_size": 64, "train.batch_size": 8, "train.lr": 0.003,
        "train.optimizer": "adamw", "train.threads": 2, "data.leak_check": False}
# A shrink for real photos: fast_resnet at 64 px learns the shared cats vs dogs to ~70% in a few epochs of
# seconds each (threads left to the run, which divides the cores between torchrun's processes).
FAST_RESNET = {"model.arch": "fast_resnet", "train.batch_size": 32, "train.scheduler": "onecycle",
               "train.threads": None}
# The seed's CNN at its own input size (224 px), with the seed's Adam at 1e-4.
SEED_CNN = {"model.arch": "custom_cnn", "data.image_size": None, "train.optimizer": "adam", "train.lr": 1e-4}
# A shrink for sweeps: only the head trains, on features cached once, so a trial takes seconds.
HEAD_ONLY = {"model.freeze_backbone": True, "data.augment": False}


@dataclasses.dataclass(frozen=True)
class Recipe:
    settings: dict
    data: Path | None = None
    base: Path | None = None  # a shipped experiments/configs/*.yaml the settings override

    def shrink(self, settings: dict) -> Recipe:
        """This recipe with some settings changed (dotted keys, as in `--set`)."""
        return dataclasses.replace(self, settings={**self.settings, **settings})

    def on(self, data: Path) -> Recipe:
        """This recipe trained on another photo folder."""
        return dataclasses.replace(self, data=Path(data))

    def overrides(self, **more) -> dict:
        data = {"data.data_dir": str(self.data)} if self.data is not None else {}
        return {**self.settings, **data, **more}

    def config(self, **more) -> Config:
        """The run's config, for run_experiment and the engine's pieces: `more` names keys with dots too,
        e.g. config(**{"output_dir": str(path)})."""
        return load_config(self.base, self.overrides(**more))

    def argv(self, *more) -> list[str]:
        """experiments/run.py's arguments for this recipe, then `more`."""
        flag_of = {key: flag for flag, (key, _) in run_flags().items()}
        argv = ["--config", str(self.base)] if self.base is not None else []
        for key, value in self.overrides().items():
            flag = flag_of.get(key)
            if flag is None or value is None or isinstance(value, list | dict):
                argv += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML, which --set reads
            elif isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            else:
                argv += [flag, str(value)]
        return [*argv, *map(str, more)]

    def yaml(self) -> dict:
        """The settings as a nested experiment YAML (a sweep's base file), without the data folder."""
        assert self.base is None, "a sweep base is the tiny recipe itself"
        return dotted_to_nested(self.settings)


def shipped(name: str, settings: dict) -> Recipe:
    """A shipped recipe (experiments/configs/NAME.yaml), shrunk by `settings`."""
    return Recipe(settings, base=REPO / "experiments" / "configs" / f"{name}.yaml")
